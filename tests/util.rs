//! Shared setup for the end-to-end tests.

#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `tessera` program under test.
pub fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

/// The longest any one `tessera` invocation in the tests may take. A hang then fails its
/// test with the program's output instead of stalling the whole suite (and CI).
const WATCHDOG: Duration = Duration::from_secs(600);

/// Run `cmd` to completion with stdout and stderr captured, killing it after [`WATCHDOG`].
pub fn output_with_watchdog(cmd: &mut Command) -> Output {
    output_within(cmd, WATCHDOG)
}

/// [`output_with_watchdog`] with a shorter limit, for a test whose failure is a hang.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tessera");
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll tessera") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_thread.join().unwrap_or_default();
            panic!(
                "tessera did not finish within {limit:?}; killed. stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    }
}

/// Run `tessera` with `args`, panicking with its stderr if it fails.
pub fn run_ok(args: &[&str]) -> Output {
    let out = output_with_watchdog(tessera().args(args));
    assert!(
        out.status.success(),
        "tessera {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `tessera export --checkpoint RUN --out OUT` (plus `extra` flags), which must succeed.
pub fn export(run: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "export",
        "--checkpoint",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_ok(&args)
}

/// Parse a command's stdout as one JSON object.
pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `../shared` beside the checkout: read-only test data.
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

/// `../shared/testdata/<rel>`.
pub fn testdata(rel: &str) -> PathBuf {
    shared().join("testdata").join(rel)
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create temp dir")
}

/// The Python interpreter with `webdataset` installed (`scripts/test.sh` makes `.venv`).
/// `None` when absent, unless `TESSERA_REQUIRE_PYTHON=1`, where its absence is a failure.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TESSERA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    if candidate.exists() {
        return Some(candidate);
    }
    if std::env::var("TESSERA_REQUIRE_PYTHON").as_deref() == Ok("1") {
        panic!(
            "TESSERA_REQUIRE_PYTHON=1 but no Python at {}: run scripts/test.sh",
            candidate.display()
        );
    }
    eprintln!(
        "note: no Python test environment at {}; run scripts/test.sh for the oracle tests",
        candidate.display()
    );
    None
}

/// Extract the CIFAR-10 JPEGs matching `member_glob` (e.g. `train/cat/000[0-4].jpg`) from
/// the shared archive into `dest` (made if missing), keeping their `split/class/` folders.
pub fn cifar_jpegs(dest: &std::path::Path, member_glob: &str) {
    std::fs::create_dir_all(dest).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(shared().join("datasets/cifar10-jpg.tar.gz"))
        .arg("-C")
        .arg(dest)
        .args(["--wildcards", member_glob])
        .status()
        .expect("run tar");
    assert!(status.success(), "extracting CIFAR-10 images");
}

/// Extract the CIFAR-10 JPEGs matching `member_glob` (e.g. `train/*/00[0-2]?.jpg`) from
/// the shared archive and shard the `split` folder with `tessera shard --labels <labels>`,
/// `samples_per_shard` to a shard; returns the shards' glob. Each (split, labels) pair gets
/// its own folders under `dir`.
pub fn cifar_shards(
    dir: &std::path::Path,
    split: &str,
    member_glob: &str,
    labels: &str,
    samples_per_shard: usize,
) -> String {
    let images = dir.join(format!("cifar-{split}-{labels}"));
    cifar_jpegs(&images, member_glob);
    let shards = dir.join(format!("shards-{split}-{labels}"));
    run_ok(&[
        "shard",
        images.join(split).to_str().unwrap(),
        "--out",
        shards.to_str().unwrap(),
        "--labels",
        labels,
        "--max-samples",
        &samples_per_shard.to_string(),
    ]);
    format!("{}/*.tar", shards.display())
}
