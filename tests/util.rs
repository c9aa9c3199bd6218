//! Shared setup for the end-to-end tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `tessera` program under test.
pub fn tessera() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
}

/// Run `tessera` with `args`, panicking with its stderr if it fails.
pub fn run_ok(args: &[&str]) -> Output {
    let out = tessera().args(args).output().expect("run tessera");
    assert!(
        out.status.success(),
        "tessera {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Parse a command's stdout as one JSON object.
pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("stdout is not one JSON object ({e}):\n{}", String::from_utf8_lossy(&out.stdout))
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
        panic!("TESSERA_REQUIRE_PYTHON=1 but no Python at {}: run scripts/test.sh", candidate.display());
    }
    eprintln!("note: no Python test environment at {}; run scripts/test.sh for the oracle tests", candidate.display());
    None
}
