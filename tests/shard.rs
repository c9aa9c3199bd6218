//! `tessera shard` end to end (issue #2): shards read back by the reference WebDataset
//! reader, hostile inputs, kill -9 and rerun, `--part`, labels, determinism.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tessera_shards::Sample;
use tessera_shards::reader::ShardReader;

use crate::util::{python, run_ok, stdout_json, tempdir, tessera, testdata};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `n` valid, byte-distinct JPEGs in three class folders (`c0`..`c2`), made from the real
/// photos with a unique tail after the end-of-image marker (decoders ignore it). Returns
/// source path → sha256 of the file.
fn make_inputs(dir: &Path, n: usize) -> BTreeMap<String, String> {
    let photos = [
        std::fs::read(testdata("photos/grace_hopper.jpg")).unwrap(),
        std::fs::read(testdata("photos/rocket.jpg")).unwrap(),
    ];
    let mut made = BTreeMap::new();
    for i in 0..n {
        let source = format!("c{}/img{i:04}.jpg", i % 3);
        let mut bytes = photos[i % 2].clone();
        bytes.extend_from_slice(format!("tessera-test-{i}").as_bytes());
        let path = dir.join(&source);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        made.insert(source, sha256_hex(&bytes));
    }
    made
}

/// Every `*.tar` in `dir` (what a `*.tar` glob sees), sorted.
fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut shards: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.starts_with('.') && name.ends_with(".tar")
        })
        .collect();
    shards.sort();
    shards
}

/// Read every sample of `shards` with the project's reader: key → field name → bytes.
fn read_samples(shards: &[PathBuf]) -> Vec<(String, BTreeMap<String, Vec<u8>>)> {
    let mut out = Vec::new();
    let mut sample = Sample::default();
    for shard in shards {
        let mut reader = ShardReader::open(shard).unwrap();
        while reader.read_into(&mut sample).unwrap() {
            let fields = sample
                .fields()
                .iter()
                .map(|f| (f.name.clone(), f.data.clone()))
                .collect();
            out.push((sample.key.clone(), fields));
        }
    }
    out
}

/// The `source` of every sample's `.json`.
fn sources(samples: &[(String, BTreeMap<String, Vec<u8>>)]) -> Vec<String> {
    samples
        .iter()
        .map(|(_, fields)| {
            let meta: serde_json::Value = serde_json::from_slice(&fields["json"]).unwrap();
            meta["source"].as_str().unwrap().to_string()
        })
        .collect()
}

fn shard_cmd(inputs: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "shard".into(),
        inputs.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run_shard(inputs: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let args = shard_cmd(inputs, out, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    stdout_json(&run_ok(&args))
}

#[test]
fn shards_read_back_identically_in_python_webdataset_and_inspect() {
    let tmp = tempdir();
    let inputs = tmp.path().join("in");
    let made = make_inputs(&inputs, 40);
    // A PNG (kept as PNG), an exact duplicate, and two unusable files.
    std::fs::copy(testdata("photos/camera.png"), inputs.join("c0/camera.png")).unwrap();
    std::fs::copy(
        inputs.join("c1/img0001.jpg"),
        inputs.join("c2/zz_copy_of_1.jpg"),
    )
    .unwrap();
    std::fs::write(inputs.join("c1/empty.jpg"), b"").unwrap();
    std::fs::write(inputs.join("c1/page.jpg"), b"<html>404</html>").unwrap();
    let out = tmp.path().join("out");
    let summary = run_shard(
        &inputs,
        &out,
        &["--max-samples", "16", "--labels", "folders"],
    );

    assert_eq!(summary["samples"], 41, "{summary}");
    assert_eq!(summary["shards"], 3);
    assert_eq!(summary["duplicates"], 1);
    let rejected: BTreeMap<String, String> = summary["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(rejected["c1/empty.jpg"], "empty");
    assert_eq!(rejected["c1/page.jpg"], "not_an_image");
    assert_eq!(rejected.len(), 2);

    let shards = shard_files(&out);
    assert_eq!(shards.len(), 3);
    for shard in &shards {
        assert!(
            tessera_shards::index::index_path(shard).exists(),
            "{} has no index",
            shard.display()
        );
    }
    let ours = read_samples(&shards);
    let keys: Vec<&str> = ours.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys are unique and sorted: {keys:?}"
    );
    for (_, fields) in &ours {
        let meta: serde_json::Value = serde_json::from_slice(&fields["json"]).unwrap();
        let source = meta["source"].as_str().unwrap();
        let image_field = if source.ends_with(".png") {
            "png"
        } else {
            "jpg"
        };
        let image = &fields[image_field];
        assert_eq!(
            meta["sha256"].as_str().unwrap(),
            sha256_hex(image),
            "copy mode keeps original bytes"
        );
        if let Some(expected) = made.get(source) {
            assert_eq!(&sha256_hex(image), expected);
        }
        let class = source.split('/').next().unwrap();
        assert_eq!(
            fields["cls"],
            class[1..].to_string().into_bytes(),
            "{source}"
        );
    }

    let inspect = stdout_json(&run_ok(&[
        "inspect",
        "--json",
        "--verify",
        &format!("{}/*.tar", out.display()),
    ]));
    assert_eq!(inspect["samples"], 41);
    assert_eq!(inspect["shards"].as_array().unwrap().len(), 3);
    assert_eq!(inspect["failures"].as_array().unwrap().len(), 0);

    let Some(python) = python() else { return };
    let oracle = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_shards.py"))
        .args(&shards)
        .output()
        .unwrap();
    assert!(
        oracle.status.success(),
        "{}",
        String::from_utf8_lossy(&oracle.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&oracle.stdout).unwrap();
    let theirs = theirs["samples"].as_array().unwrap();
    assert_eq!(theirs.len(), ours.len());
    for ((key, fields), reference) in ours.iter().zip(theirs) {
        assert_eq!(reference["key"], key.as_str());
        let reference_fields: BTreeMap<String, String> =
            serde_json::from_value(reference["fields"].clone()).unwrap();
        let our_fields: BTreeMap<String, String> = fields
            .iter()
            .map(|(name, data)| (name.clone(), sha256_hex(data)))
            .collect();
        assert_eq!(reference_fields, our_fields, "sample {key}");
    }
}

/// Each hostile file is either a sample or a counted reject, as its manifest expects.
#[test]
fn hostile_files_become_samples_or_clean_rejects() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(testdata("hostile/manifest.json")).unwrap()).unwrap();
    let tmp = tempdir();
    for max_side in [None, Some("256")] {
        let out = tmp.path().join(format!("out-{max_side:?}"));
        let mut extra = vec!["--max-samples", "8"];
        if let Some(side) = max_side {
            extra.extend(["--max-side", side]);
        }
        let summary = run_shard(&testdata("hostile/files"), &out, &extra);
        let rejected: BTreeMap<String, String> = summary["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["path"].as_str().unwrap().to_string(),
                    r["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let samples = read_samples(&shard_files(&out));
        let by_source: BTreeMap<String, &BTreeMap<String, Vec<u8>>> = sources(&samples)
            .into_iter()
            .zip(samples.iter().map(|(_, f)| f))
            .collect();

        for entry in manifest["files"].as_array().unwrap() {
            let name = entry["file"].as_str().unwrap();
            let expect = entry["expect"].as_str().unwrap();
            let clean_error_allowed = expect.contains("error")
                || expect.starts_with("refuse")
                || name.starts_with("bomb");
            match (by_source.get(name), rejected.get(name)) {
                (Some(_), None) => assert!(
                    !expect.starts_with("error") && !expect.starts_with("refuse"),
                    "{name} accepted"
                ),
                (None, Some(reason)) => assert!(
                    clean_error_allowed,
                    "{name} rejected ({reason}) but expected: {expect}"
                ),
                other => panic!("{name}: neither exactly one sample nor one reject: {other:?}"),
            }
        }
        assert_eq!(rejected["zero_bytes.jpg"], "empty");
        assert_eq!(rejected["not_an_image.jpg"], "not_an_image");
        assert_eq!(rejected["truncated_50pct.jpg"], "corrupt");
        assert_eq!(rejected["bomb_jpeg_65500x65500.jpg"], "too_many_pixels");
        assert_eq!(rejected["bomb_real_12000x9000.jpg"], "too_many_pixels");
        let png = by_source["png_named_jpg.jpg"];
        if max_side.is_none() {
            assert!(
                png.contains_key("png") && !png.contains_key("jpg"),
                "sniffed as png: {:?}",
                png.keys()
            );
            assert_eq!(
                sha256_hex(&png["png"]),
                sha256_hex(&std::fs::read(testdata("hostile/files/png_named_jpg.jpg")).unwrap())
            );
        } else {
            // Resized images are re-encoded as JPEG, upright, and say so.
            for name in [
                "exif_orientation_2.jpg",
                "exif_orientation_3.jpg",
                "exif_orientation_6.jpg",
                "exif_orientation_8.jpg",
            ] {
                let meta: serde_json::Value =
                    serde_json::from_slice(&by_source[name]["json"]).unwrap();
                assert_eq!(
                    meta["transform"]["to"],
                    serde_json::json!([256, 171]),
                    "{name}: {meta}"
                );
            }
            let large: serde_json::Value =
                serde_json::from_slice(&by_source["large_6000x4000.jpg"]["json"]).unwrap();
            assert_eq!(large["transform"]["from"], serde_json::json!([6000, 4000]));
            // Within the cap: the original bytes, untouched.
            let tiny = &by_source["tiny_16x12.jpg"]["jpg"];
            assert_eq!(
                tiny,
                &std::fs::read(testdata("hostile/files/tiny_16x12.jpg")).unwrap()
            );
            check_upright(&by_source);
        }
    }
}

/// With Pillow available, the oriented samples must look like the upright reference.
fn check_upright(by_source: &BTreeMap<String, &BTreeMap<String, Vec<u8>>>) {
    let Some(python) = python() else { return };
    let tmp = tempdir();
    let reference = tmp.path().join("ref.jpg");
    std::fs::write(&reference, &by_source["exif_upright_ref.jpg"]["jpg"]).unwrap();
    for name in [
        "exif_orientation_2.jpg",
        "exif_orientation_3.jpg",
        "exif_orientation_6.jpg",
        "exif_orientation_8.jpg",
    ] {
        let candidate = tmp.path().join(name);
        std::fs::write(&candidate, &by_source[name]["jpg"]).unwrap();
        let out = Command::new(&python)
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/image_diff.py"))
            .args([&reference, &candidate])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diff: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(diff < 8.0, "{name} is not upright: mean abs diff {diff}");
    }
}

/// kill -9 at a few points, rerun: every usable input exactly once, no temp file looks
/// like a shard, and the result is byte-identical to an uninterrupted build.
#[test]
fn killed_build_finishes_on_rerun_with_every_input_once() {
    let tmp = tempdir();
    let inputs = tmp.path().join("in");
    let made = make_inputs(&inputs, 300);
    std::fs::write(
        inputs.join("c0/broken.jpg"),
        std::fs::read(testdata("hostile/files/truncated_50pct.jpg")).unwrap(),
    )
    .unwrap();
    let extra = ["--max-samples", "10", "--workers", "2"];

    let reference = tmp.path().join("reference");
    run_shard(&inputs, &reference, &extra);
    let reference_shards = shard_files(&reference);

    let out = tmp.path().join("out");
    let mut killed_mid_run = 0;
    for shards_before_kill in [1usize, 4, 13] {
        let args = shard_cmd(&inputs, &out, &extra);
        let mut child = tessera()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while shard_files(&out).len() < shards_before_kill && Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        // Whatever the kill left, `*.tar` only matches complete shards.
        for shard in shard_files(&out) {
            read_samples(std::slice::from_ref(&shard));
        }
    }
    assert!(
        killed_mid_run > 0,
        "the build always finished before the kill"
    );
    let summary = run_shard(&inputs, &out, &extra);
    assert_eq!(summary["samples"], 300, "{summary}");
    assert!(
        summary["resumed_shards"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert_eq!(summary["rejected"].as_array().unwrap().len(), 1);

    let shards = shard_files(&out);
    let got = sources(&read_samples(&shards));
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "an input appears twice");
    assert_eq!(unique, made.keys().collect(), "inputs missing or extra");
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert_eq!(shards.len(), reference_shards.len());
    for (a, b) in shards.iter().zip(&reference_shards) {
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{} differs after resume",
            a.display()
        );
    }
}

#[test]
fn parts_are_disjoint_cover_the_set_and_never_clash() {
    let tmp = tempdir();
    let inputs = tmp.path().join("in");
    let made = make_inputs(&inputs, 50);
    let out = tmp.path().join("out"); // all parts share one output directory
    let mut total = 0;
    for part in ["0/3", "1/3", "2/3"] {
        let summary = run_shard(&inputs, &out, &["--part", part, "--max-samples", "7"]);
        total += summary["samples"].as_u64().unwrap();
    }
    assert_eq!(total, 50);
    for part in 0..3 {
        assert!(out.join(format!("manifest-part{part}.json")).exists());
    }
    let shards = shard_files(&out);
    let samples = read_samples(&shards);
    let keys: BTreeSet<&String> = samples.iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 50, "keys clash across parts");
    let got: BTreeSet<String> = sources(&samples).into_iter().collect();
    assert_eq!(got, made.keys().cloned().collect());
}

#[test]
fn folder_labels_write_cls_and_classes_json() {
    let tmp = tempdir();
    let inputs = tmp.path().join("in");
    make_inputs(&inputs, 9);
    std::fs::copy(testdata("photos/rocket.jpg"), inputs.join("unfiled.jpg")).unwrap();
    let out = tmp.path().join("out");
    let summary = run_shard(&inputs, &out, &["--labels", "folders"]);
    assert_eq!(summary["samples"], 9);
    assert_eq!(summary["rejected"][0]["reason"], "unlabelled");
    let classes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("classes.json")).unwrap()).unwrap();
    assert_eq!(classes, serde_json::json!(["c0", "c1", "c2"]));
    for (_, fields) in read_samples(&shard_files(&out)) {
        let meta: serde_json::Value = serde_json::from_slice(&fields["json"]).unwrap();
        let class = meta["class"].as_str().unwrap();
        assert!(meta["source"].as_str().unwrap().starts_with(class));
        assert_eq!(fields["cls"], &class.as_bytes()[1..]);
    }
}

/// The classes in each shard of `dir`, in shard order.
fn classes_per_shard(dir: &Path) -> Vec<BTreeSet<String>> {
    shard_files(dir)
        .iter()
        .map(|shard| {
            read_samples(std::slice::from_ref(shard))
                .iter()
                .map(|(_, fields)| String::from_utf8(fields["cls"].clone()).unwrap())
                .collect()
        })
        .collect()
}

/// Sorted folders put one class in each shard (and say so); `--shuffle SEED` mixes them,
/// gives the same shards for the same seed, keeps job-array parts disjoint, and a rerun with
/// another seed into the same directory is refused instead of mixing two orders.
#[test]
fn shuffle_mixes_classes_reproducibly_and_parts_stay_disjoint() {
    let tmp = tempdir();
    let inputs = tmp.path().join("in");
    let made = make_inputs(&inputs, 60); // 20 a class
    let sorted = tmp.path().join("sorted");
    let args = shard_cmd(
        &inputs,
        &sorted,
        &["--labels", "folders", "--max-samples", "10"],
    );
    let out = run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--shuffle SEED"), "no hint: {stderr}");
    assert!(classes_per_shard(&sorted).iter().all(|c| c.len() == 1));

    let extra = [
        "--labels",
        "folders",
        "--max-samples",
        "10",
        "--shuffle",
        "3",
    ];
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let summary = run_shard(&inputs, &a, &extra);
    assert_eq!(summary["samples"], 60);
    let mixed = classes_per_shard(&a);
    assert_eq!(mixed.len(), 6);
    assert!(
        mixed.iter().all(|c| c.len() >= 2),
        "classes per shard: {mixed:?}"
    );
    let got: BTreeSet<String> = sources(&read_samples(&shard_files(&a)))
        .into_iter()
        .collect();
    assert_eq!(got, made.keys().cloned().collect());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["shuffle_seed"], 3);
    run_shard(&inputs, &b, &extra);
    for (x, y) in shard_files(&a).iter().zip(&shard_files(&b)) {
        assert_eq!(
            std::fs::read(x).unwrap(),
            std::fs::read(y).unwrap(),
            "{x:?}"
        );
    }

    let parts = tmp.path().join("parts");
    let mut total = 0;
    for part in ["0/2", "1/2"] {
        let summary = run_shard(&inputs, &parts, &["--shuffle", "3", "--part", part]);
        total += summary["samples"].as_u64().unwrap();
    }
    assert_eq!(total, 60);
    let samples = read_samples(&shard_files(&parts));
    let got: BTreeSet<String> = sources(&samples).into_iter().collect();
    assert_eq!(
        got,
        made.keys().cloned().collect(),
        "parts overlap or miss inputs"
    );

    let other = tessera()
        .args(shard_cmd(
            &inputs,
            &a,
            &[
                "--labels",
                "folders",
                "--max-samples",
                "10",
                "--shuffle",
                "4",
            ],
        ))
        .output()
        .unwrap();
    assert!(
        !other.status.success(),
        "another seed resumed into the same directory"
    );
}

#[test]
fn same_command_twice_gives_byte_identical_shards() {
    let tmp = tempdir();
    let inputs = tmp.path().join("in");
    make_inputs(&inputs, 30);
    std::fs::copy(
        testdata("hostile/files/exif_orientation_6.jpg"),
        inputs.join("c0/exif6.jpg"),
    )
    .unwrap();
    let extra = [
        "--max-bytes",
        "100KB",
        "--max-side",
        "200",
        "--compression",
        "zstd",
        "--workers",
        "2",
    ];
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    run_shard(&inputs, &a, &extra);
    let summary = run_shard(
        &inputs,
        &b,
        &["--workers", "1"]
            .iter()
            .chain(&extra[..6])
            .copied()
            .collect::<Vec<_>>(),
    );
    assert!(
        summary["shards"].as_u64().unwrap() > 1,
        "max-bytes rotates: {summary}"
    );
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tar.zst"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&a), names(&b));
    for name in names(&a) {
        assert_eq!(
            std::fs::read(a.join(&name)).unwrap(),
            std::fs::read(b.join(&name)).unwrap(),
            "{name}"
        );
        let size = std::fs::metadata(a.join(&name)).unwrap().len();
        assert!(size <= 100_000, "{name} is {size} bytes");
    }
}

/// `tessera shard DIR --out DIR/shards`: the output is never taken as input, so a rerun
/// resumes instead of seeing new inputs.
#[test]
fn output_inside_the_input_is_not_an_input() {
    let tmp = tempdir();
    let inputs = tmp.path().join("in");
    make_inputs(&inputs, 12);
    let out = inputs.join("shards");
    let first = run_shard(&inputs, &out, &["--max-samples", "5"]);
    let second = run_shard(&inputs, &out, &["--max-samples", "5"]);
    assert_eq!(first["samples"], 12);
    assert_eq!(second["samples"], 12, "{second}");
    assert_eq!(second["resumed_shards"], 3);
    assert_eq!(second["rejected"], serde_json::json!([]));
}
