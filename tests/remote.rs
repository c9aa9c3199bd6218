//! Shards over HTTP and in an S3-compatible store, end to end (issue 12). Every server
//! is real and runs on 127.0.0.1 ([`crate::remote_net`]); faults come from a TCP proxy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tessera_shards::Sample;
use tessera_shards::reader::ShardReader;
use tessera_shards::remote::{self, RemoteOptions};

use crate::remote_net::{Behaviour, Fault, FaultProxy, HttpServer, S3Server};
use crate::util::{output_with_watchdog, run_ok, stdout_json, tempdir, tessera};

/// 300 CIFAR-10 images (three classes' first 100 files) in three shards of 100, with
/// indexes; returns the shard directory.
fn cifar_dir(dir: &Path) -> PathBuf {
    crate::util::cifar_shards(dir, "train", "train/*/00[0-2]?.jpg", "folders", 100);
    dir.join("shards-train-folders")
}

/// Every sample of `shards`, in order: key → sha256 of each field.
fn digest_samples(shards: &[PathBuf]) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    let mut sample = Sample::default();
    for shard in shards {
        let mut reader = ShardReader::open(shard).unwrap();
        while reader.read_into(&mut sample).unwrap() {
            let fields = sample
                .fields()
                .iter()
                .map(|f| (f.name.clone(), hex::encode(Sha256::digest(&f.data))))
                .collect();
            out.push((sample.key.clone(), fields));
        }
    }
    out
}

fn local_shards(dir: &Path) -> Vec<PathBuf> {
    tessera_shards::source::resolve(&format!("{}/*.tar", dir.display())).unwrap()
}

/// Connection `n` of the first 40: reset mid-body, 503, stall past the timeout, clean.
fn faults(n: u64) -> Fault {
    match (n < 40).then_some(n % 4) {
        Some(1) => Fault::ResetAfter(60_000),
        Some(2) => Fault::Unavailable,
        Some(3) => Fault::Stall(30_000, Duration::from_millis(2500)),
        _ => Fault::None,
    }
}

/// Reading HTTP shards through resets, 503 bursts and stalls delivers every sample once,
/// in order, byte for byte, and the faults show in the counters.
#[test]
fn http_shards_read_through_faults_exactly_once() {
    let tmp = tempdir();
    let dir = cifar_dir(tmp.path());
    let local = local_shards(&dir);
    let server = HttpServer::start(&dir);
    let proxy = FaultProxy::start(server.port, faults);
    remote::configure(RemoteOptions {
        backoff: Duration::from_millis(10),
        stall_timeout: Duration::from_secs(1),
        ..RemoteOptions::default()
    });
    let before = remote::stats();
    let spec = format!("{}/shard-{{000000..000002}}.tar", proxy.url());
    let shards = tessera_shards::source::resolve(&spec).unwrap();
    assert_eq!(shards.len(), 3);
    let through_proxy = digest_samples(&shards);
    let expected = digest_samples(&local);
    assert_eq!(through_proxy.len(), 300);
    assert_eq!(through_proxy, expected);
    let seen = remote::stats().since(&before);
    assert!(proxy.faults() >= 3, "faults injected: {}", proxy.faults());
    assert!(
        seen.retries >= proxy.unavailable.load(std::sync::atomic::Ordering::Relaxed),
        "{seen:?}"
    );
    assert!(seen.resumes >= 1, "{seen:?}");
    // Seeking with the index works remotely too: sample 250 is the 51st of shard 2.
    let mut reader = ShardReader::open_at(&shards[2], 50).unwrap();
    let mut sample = Sample::default();
    assert!(reader.read_into(&mut sample).unwrap());
    assert_eq!(sample.key, expected[250].0);

    // With a shard cache, the first pass fills it and the second reads only local copies;
    // a cap of one shard (below any two) keeps one.
    let cache = tmp.path().join("cache");
    // Shards differ in size (their JPEGs do): caps are set from the largest and the total.
    let sizes: Vec<u64> = local
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    let largest = sizes.iter().copied().max().unwrap();
    let total: u64 = sizes.iter().sum();
    remote::configure(RemoteOptions {
        backoff: Duration::from_millis(10),
        stall_timeout: Duration::from_secs(1),
        cache: Some(remote::cache::CacheOptions {
            dir: cache.clone(),
            max_bytes: total + 1,
        }),
        ..RemoteOptions::default()
    });
    assert_eq!(digest_samples(&shards), expected);
    // A reader stops at the end-of-archive marker; the stream behind it finishes the
    // object (the padding after) in the background and only then publishes the entry.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&cache)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "shard"))
                .count()
        })
        .unwrap_or(0)
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the cache never held all three shards"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = remote::stats();
    let requests_before = server.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(digest_samples(&shards), expected);
    let second = remote::stats().since(&before);
    assert_eq!(second.cache_hits, 3, "{second:?}");
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::Relaxed),
        requests_before,
        "a cached pass must not touch the server"
    );
    remote::configure(RemoteOptions {
        cache: Some(remote::cache::CacheOptions {
            dir: cache.clone(),
            max_bytes: largest,
        }),
        ..RemoteOptions::default()
    });
    remote::cache::evict(&cache, largest);
    let left = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(left, 1, "LRU eviction keeps what fits under the cap");
    remote::configure(RemoteOptions::default());
}

/// `tessera profile` over HTTP through the fault proxy sees exactly the images it sees
/// from disk, and reports the network stage with the faults it survived.
#[test]
fn profile_over_http_matches_disk_and_reports_the_network() {
    let tmp = tempdir();
    let dir = cifar_dir(tmp.path());
    let server = HttpServer::start(&dir);
    let proxy = FaultProxy::start(server.port, faults);
    let profile = |shards: &str| {
        let out = run_ok(&[
            "profile",
            "--recipe",
            "mae",
            "--shards",
            shards,
            "--batch-size",
            "10",
            "--workers",
            "2",
            "--json",
            "--stall-timeout",
            "1",
        ]);
        stdout_json(&out)
    };
    let from_disk = profile(&format!("{}/*.tar", dir.display()));
    let remote = profile(&format!("{}/shard-{{000000..000002}}.tar", proxy.url()));
    assert_eq!(remote["images"], from_disk["images"]);
    assert_eq!(remote["images"], 300);
    let network = &remote["network"];
    assert!(network["bytes"].as_u64().unwrap() > 500_000, "{network}");
    let faults = network["retries"].as_u64().unwrap() + network["resumes"].as_u64().unwrap();
    assert!(faults >= 1, "{network}");
    assert!(from_disk.get("network").is_none());
}

/// A shard that keeps ending early is an error naming it and the byte reached; a 404
/// names the missing shard; a listing of an HTTP server is refused with the reason.
#[test]
fn http_errors_name_the_object() {
    let tmp = tempdir();
    let dir = cifar_dir(tmp.path());
    let server = HttpServer::start(&dir);
    server.route("/shard-000001.tar", Behaviour::Truncate(40_000));
    let url = format!("{}/shard-000001.tar", server.url());
    let out = output_with_watchdog(tessera().args(["inspect", &url, "--retries", "2"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = format!("{stdout}{stderr}");
    assert!(text.contains("shard-000001.tar"), "{text}");
    assert!(
        text.contains("ended early") && text.contains("byte 40000"),
        "{text}"
    );

    let missing = format!("{}/shard-000009.tar", server.url());
    let out = output_with_watchdog(tessera().args(["inspect", &missing]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing") && stderr.contains("shard-000009.tar"),
        "{stderr}"
    );

    let glob = format!("{}/*.tar", server.url());
    let out = output_with_watchdog(tessera().args(["inspect", &glob]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be listed"));
}

fn with_env(cmd: &mut std::process::Command, env: &[(&'static str, String)]) {
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// The samples `tessera inspect --json` counts under `spec` with `env`.
fn inspect_samples(spec: &str, env: &[(&'static str, String)]) -> serde_json::Value {
    let mut cmd = tessera();
    cmd.args(["inspect", spec, "--json"]);
    with_env(&mut cmd, env);
    let out = output_with_watchdog(&mut cmd);
    assert!(
        out.status.success(),
        "inspect {spec}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)
}

/// `tessera shard --out s3://...` writes shards, indexes, journal and manifest into the
/// store; reading them back gives exactly the samples; a rerun after losing the last
/// shard (a kill between upload and record) rewrites only that shard.
#[test]
fn shard_to_s3_reads_back_and_resumes() {
    let Some(s3) = S3Server::start(&["bucket"]) else {
        return;
    };
    let env = s3.env();
    let tmp = tempdir();
    let images = tmp.path().join("images");
    crate::util::cifar_jpegs(&images, "train/*/00[0-1]?.jpg");
    let shard = |staging: &Path| {
        let mut cmd = tessera();
        cmd.args(["shard", images.join("train").to_str().unwrap()])
            .args([
                "--out",
                "s3://bucket/cifar",
                "--max-samples",
                "60",
                "--json",
            ])
            .args([
                "--labels",
                "folders",
                "--staging",
                staging.to_str().unwrap(),
            ]);
        with_env(&mut cmd, &env);
        let out = output_with_watchdog(&mut cmd);
        assert!(
            out.status.success(),
            "shard: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout_json(&out)
    };
    let first = shard(&tmp.path().join("staging-a"));
    assert_eq!(first["samples"], 200);
    assert_eq!(first["shards"], 4);
    let bucket = s3.root.path().join("bucket/cifar");
    for name in ["shard-000003.tar", "shard-000003.tar.idx", "manifest.json"] {
        assert!(bucket.join(name).is_file(), "{name} not in the store");
    }
    assert!(
        bucket
            .join(".tessera-shard/shard-000003.tar.json")
            .is_file()
    );
    let read = inspect_samples("s3://bucket/cifar/shard-*.tar", &env);
    assert_eq!(read["samples"], 200);

    // Lose the last shard's record (killed after its upload): a rerun from a fresh
    // staging directory resumes from the store's journal and redoes only shard 3.
    let before: Vec<Vec<u8>> = (0..4)
        .map(|i| std::fs::read(bucket.join(format!("shard-00000{i}.tar"))).unwrap())
        .collect();
    std::fs::remove_file(bucket.join(".tessera-shard/shard-000003.tar.json")).unwrap();
    let second = shard(&tmp.path().join("staging-b"));
    assert_eq!(second["resumed_shards"], 3);
    assert_eq!(second["samples"], 200);
    for (i, bytes) in before.iter().enumerate() {
        let now = std::fs::read(bucket.join(format!("shard-00000{i}.tar"))).unwrap();
        assert_eq!(&now, bytes, "shard {i} changed");
    }
    let read = inspect_samples("s3://bucket/cifar/shard-{000000..000003}.tar", &env);
    assert_eq!(read["samples"], 200);
}

/// A missing bucket, wrong credentials and a pattern matching nothing are errors that
/// say so and name the object.
#[test]
fn s3_errors_name_the_bucket_and_the_cause() {
    let Some(s3) = S3Server::start(&["bucket"]) else {
        return;
    };
    let env = s3.env();
    let run = |spec: &str, env: &[(&'static str, String)]| {
        let mut cmd = tessera();
        cmd.args(["inspect", spec, "--retries", "1"]);
        with_env(&mut cmd, env);
        let out = output_with_watchdog(&mut cmd);
        assert!(!out.status.success(), "{spec} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = run("s3://nobucket/shard-000000.tar", &env);
    assert!(
        stderr.contains("nobucket") && stderr.contains("does not exist"),
        "{stderr}"
    );
    let stderr = run("s3://bucket/none-*.tar", &env);
    assert!(stderr.contains("matched no files"), "{stderr}");
    let mut wrong = env.clone();
    wrong.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY", "not-the-secret".into()));
    let stderr = run("s3://bucket/shard-000000.tar", &wrong);
    assert!(stderr.contains("credentials"), "{stderr}");
}

/// Training from the S3 store reproduces training from disk: the same losses.
#[cfg(feature = "train")]
#[test]
fn training_from_s3_reproduces_training_from_disk() {
    let Some(s3) = S3Server::start(&["bucket"]) else {
        return;
    };
    let env = s3.env();
    let tmp = tempdir();
    let dir = cifar_dir(tmp.path());
    let target = s3.root.path().join("bucket/cifar");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, target.join(path.file_name().unwrap())).unwrap();
        }
    }
    let recipe = crate::train::tiny_recipe(tmp.path(), 6, "");
    let local_run = tmp.path().join("local");
    let local_glob = format!("{}/*.tar", dir.display());
    run_ok(&crate::train::train_args(&recipe, &local_glob, &local_run));
    let s3_run = tmp.path().join("s3");
    let mut cmd = tessera();
    cmd.args(crate::train::train_args(
        &recipe,
        "s3://bucket/cifar/*.tar",
        &s3_run,
    ));
    with_env(&mut cmd, &env);
    let out = output_with_watchdog(&mut cmd);
    assert!(
        out.status.success(),
        "train from s3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = crate::train::metrics(&local_run);
    let b = crate::train::metrics(&s3_run);
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x["step"], &x["loss"]), (&y["step"], &y["loss"]));
    }
}

/// `tessera shard --urls` (a CSV with captions) through the fault proxy: every URL ends
/// in exactly one outcome, the designed failures each with their reason, the good images
/// once each with their captions, and the faults show as retries.
#[test]
fn url_list_gives_one_outcome_per_url_through_faults() {
    let tmp = tempdir();
    let served = tmp.path().join("served");
    crate::util::cifar_jpegs(&served, "train/*/000[0-3].jpg");
    let mut images: Vec<String> = walk_files(&served.join("train"))
        .into_iter()
        .map(|p| format!("/{}", p.strip_prefix(&served).unwrap().display()))
        .collect();
    images.sort();
    assert_eq!(images.len(), 40);
    std::fs::write(served.join("notes.txt"), "not an image at all").unwrap();
    let server = HttpServer::start(&served);
    // The last five images are reached only through a designed behaviour.
    let special: Vec<String> = images.split_off(35);
    server.route("/moved.jpg", Behaviour::Redirect(special[0].clone()));
    server.route(
        &special[1],
        Behaviour::Headers(vec![("X-Robots-Tag".into(), "noai, noimageai".into())]),
    );
    server.route(&special[2], Behaviour::Slow(Duration::from_secs(3)));
    server.route(&special[3], Behaviour::Truncate(200));
    server.route(&special[4], Behaviour::Status(500));
    // Three faults in all: no URL can meet one on each of its four attempts.
    let proxy = FaultProxy::start(server.port, |n| match n {
        3 => Fault::ResetAfter(500),
        7 => Fault::Unavailable,
        11 => Fault::Unavailable,
        _ => Fault::None,
    });
    let base = proxy.url();
    let mut csv = String::from("url,caption,id\n");
    for (i, path) in images.iter().enumerate() {
        csv.push_str(&format!("{base}{path},\"image {i}, a photo\",{i}\n"));
    }
    for path in [
        "/moved.jpg",
        &special[1],
        &special[2],
        &special[3],
        &special[4],
    ] {
        csv.push_str(&format!("{base}{path},special,x\n"));
    }
    csv.push_str(&format!("{base}/gone.jpg,missing,x\n"));
    csv.push_str(&format!("{base}/notes.txt,text,x\n"));
    csv.push_str(&format!("{base}{},again,x\n", images[0]));
    let list = tmp.path().join("urls.csv");
    std::fs::write(&list, csv).unwrap();
    let out_dir = tmp.path().join("out");
    let out = run_ok(&[
        "shard",
        "--urls",
        list.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--timeout",
        "1",
        "--download-retries",
        "3",
        "--workers",
        "16",
        "--json",
        "--max-samples",
        "16",
    ]);
    let report = stdout_json(&out);
    let outcomes = report["outcomes"].as_object().unwrap();
    let count = |k: &str| outcomes.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    assert_eq!(count("ok"), 36, "{report}");
    assert_eq!(count("duplicate"), 1, "{report}");
    assert_eq!(count("opted_out"), 1, "{report}");
    assert_eq!(count("timeout"), 1, "{report}");
    assert_eq!(count("http_status"), 2, "{report}");
    assert_eq!(count("network"), 1, "{report}");
    assert_eq!(count("not_an_image"), 1, "{report}");
    assert_eq!(
        outcomes.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        43
    );
    let retries = report["network"]["retries"].as_u64().unwrap();
    assert!(retries >= proxy.unavailable.load(std::sync::atomic::Ordering::Relaxed));
    assert!(proxy.faults() >= 2, "faults injected: {}", proxy.faults());
    // Each good image once, with its caption as `.txt` and its columns in `.json`.
    let shards = local_shards(&out_dir);
    let mut sample = Sample::default();
    let mut captions = Vec::new();
    for shard in &shards {
        let mut reader = ShardReader::open(shard).unwrap();
        while reader.read_into(&mut sample).unwrap() {
            let caption = String::from_utf8(sample.field("txt").unwrap().to_vec()).unwrap();
            let json: serde_json::Value =
                serde_json::from_slice(sample.field("json").unwrap()).unwrap();
            assert_eq!(json["caption"], caption.as_str());
            captions.push(caption);
        }
    }
    assert_eq!(captions.len(), 36);
    captions.sort();
    captions.dedup();
    assert_eq!(
        captions.len(),
        36,
        "a caption appears twice: a sample was written twice"
    );
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A Parquet URL list (written by pyarrow, as LAION's metadata is): every row with a URL
/// becomes one sample with its caption as `.txt`, and the other columns keep their types in
/// the `.json`; a row without a URL is skipped, not an error.
#[test]
fn parquet_url_list_keeps_captions_and_typed_columns() {
    let Some(python) = crate::util::python() else {
        return;
    };
    let tmp = tempdir();
    let served = tmp.path().join("served");
    crate::util::cifar_jpegs(&served, "train/cat/000[0-4].jpg");
    let server = HttpServer::start(&served);
    let base = format!("http://127.0.0.1:{}", server.port);
    let list = tmp.path().join("urls.parquet");
    let script = format!(
        "import pyarrow as pa, pyarrow.parquet as pq\n\
         urls = ['{base}/train/cat/000%d.jpg' % i for i in range(5)] + [None]\n\
         pq.write_table(pa.table({{'url': urls, \
         'caption': ['cat %d, sitting' % i for i in range(6)], \
         'width': list(range(32, 38)), 'similarity': [0.25] * 6}}), r'{}')\n",
        list.display()
    );
    let status = std::process::Command::new(python)
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "pyarrow wrote no list");
    let out_dir = tmp.path().join("out");
    let report = stdout_json(&run_ok(&[
        "shard",
        "--urls",
        list.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(report["outcomes"]["ok"], 5, "{report}");
    let mut seen = Vec::new();
    let mut sample = Sample::default();
    for shard in local_shards(&out_dir) {
        let mut reader = ShardReader::open(&shard).unwrap();
        while reader.read_into(&mut sample).unwrap() {
            let caption = String::from_utf8(sample.field("txt").unwrap().to_vec()).unwrap();
            let json: serde_json::Value =
                serde_json::from_slice(sample.field("json").unwrap()).unwrap();
            let i: i64 = caption[4..5].parse().unwrap();
            assert_eq!(caption, format!("cat {i}, sitting"));
            assert_eq!(json["columns"]["width"], 32 + i, "{json}");
            assert_eq!(json["columns"]["similarity"], 0.25, "{json}");
            seen.push(i);
        }
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2, 3, 4]);
}
