//! Reliability regressions of issue #14, through the `tessera` program: special files
//! among the inputs, a full disk while sharding, SIGTERM and SIGUSR1 during training, and
//! a damaged newest checkpoint on `--resume`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::util::*;

/// Two valid JPEGs in `dir`.
fn two_photos(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for name in ["grace_hopper.jpg", "rocket.jpg"] {
        std::fs::copy(testdata(&format!("photos/{name}")), dir.join(name)).unwrap();
    }
}

/// `mkfifo path`; false where the machine has no `mkfifo`.
fn mkfifo(path: &Path) -> bool {
    Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// Issue #14: a named pipe, a symlink to it and a socket among the inputs are skipped as
/// `special_file` with a reason, never opened (opening the FIFO used to block forever).
#[test]
fn special_files_are_skipped_with_a_reason_not_waited_on() {
    let tmp = tempdir();
    let inputs = tmp.path().join("in");
    two_photos(&inputs);
    if !mkfifo(&inputs.join("pipe.jpg")) {
        eprintln!("note: no mkfifo here; special-file test skipped");
        return;
    }
    std::os::unix::fs::symlink(inputs.join("pipe.jpg"), inputs.join("to_pipe.jpg")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(inputs.join("socket.jpg")).unwrap();
    let out = tmp.path().join("out");
    let output = output_within(
        tessera().args([
            "shard",
            inputs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]),
        Duration::from_secs(120),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout_json(&output);
    assert_eq!(summary["samples"], 2, "{summary}");
    let rejected = summary["rejected"].as_array().unwrap();
    let mut got: Vec<(String, String, String)> = rejected
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (field("path"), field("reason"), field("detail"))
        })
        .collect();
    got.sort();
    assert_eq!(got.len(), 3, "{summary}");
    for ((path, reason, detail), (want_path, want_detail)) in got.iter().zip([
        ("pipe.jpg", "named pipe (FIFO)"),
        ("socket.jpg", "socket"),
        ("to_pipe.jpg", "symlink to a named pipe (FIFO)"),
    ]) {
        assert_eq!(path, want_path);
        assert_eq!(reason, "special_file");
        assert!(detail.starts_with(want_detail), "{path}: {detail}");
    }
    assert_eq!(
        summary["rejected_by_reason"]["special_file"], 3,
        "{summary}"
    );
}

/// Issue #14: a full disk while sharding printed "No space left on device (os error 28)"
/// twice. Provoked on a 64 KiB tmpfs in a private mount namespace (`unshare`); skipped
/// where the machine does not allow that.
#[test]
fn a_full_disk_while_sharding_prints_the_os_error_once() {
    let tmp = tempdir();
    let inputs = tmp.path().join("in");
    two_photos(&inputs); // 170 KB: more than the disk holds
    let mount = tmp.path().join("disk");
    std::fs::create_dir_all(&mount).unwrap();
    // Exit 99 when the namespace or the mount cannot be had.
    let script = r#"mount -t tmpfs -o size=64k tmpfs "$1" 2>/dev/null || exit 99
exec "$2" shard "$3" --out "$1/out" --max-samples 1"#;
    let output = output_within(
        Command::new("unshare")
            .args([
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&mount)
            .arg(env!("CARGO_BIN_EXE_tessera"))
            .arg(&inputs),
        Duration::from_secs(120),
    );
    if output.status.code() == Some(99)
        || String::from_utf8_lossy(&output.stderr).contains("unshare")
    {
        eprintln!(
            "note: no private tmpfs here ({}); full-disk test skipped",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a full disk must fail: {stderr}");
    let os = std::io::Error::from_raw_os_error(28).to_string();
    assert_eq!(stderr.matches(&os).count(), 1, "{stderr}");
    assert!(stderr.contains("shard-0000"), "{stderr}");
}

/// `tessera train --synthetic` on the tiny MAE in `run`, with `extra` arguments, started.
fn start_training(dir: &Path, run: &Path, extra: &[&str]) -> Child {
    let recipe = crate::train::tiny_recipe(dir, 100_000, "");
    tessera()
        .args(["train", "--config", recipe.to_str().unwrap(), "--synthetic"])
        .args(["--out", run.to_str().unwrap(), "--quiet", "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `run` has logged `steps` steps, or fails after two minutes.
fn wait_for_steps(run: &Path, steps: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !run.join("metrics.jsonl").exists() || crate::train::metrics(run).len() < steps {
        assert!(
            Instant::now() < deadline,
            "no training progress within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal}");
}

/// The checkpoint directories of `run`, oldest first.
fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(run.join("checkpoints")) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("step-")
        })
        .collect();
    dirs.sort();
    dirs
}

/// The step of the checkpoint in `dir`, after checking every file against the sizes and
/// SHA-256 digests its `state.json` records.
fn verified_step(dir: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let files = state["files"]
        .as_object()
        .expect("state.json lists its files");
    assert_eq!(files.len(), 3, "{files:?}");
    for (name, digest) in files {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(digest["bytes"], bytes.len() as u64, "{name}");
        assert_eq!(
            digest["sha256"],
            hex::encode(Sha256::digest(&bytes)),
            "{name}"
        );
    }
    state["step"].as_u64().unwrap()
}

/// Issue #14: SIGTERM (preemption) finishes the step, writes a complete checkpoint and
/// exits with 75, the documented "stopped, resume me" status; `--resume` continues.
#[test]
fn sigterm_checkpoints_and_exits_with_the_stopped_status() {
    let tmp = tempdir();
    let run = tmp.path().join("run");
    let child = start_training(tmp.path(), &run, &["--checkpoint-every", "0"]);
    wait_for_steps(&run, 3);
    kill(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    let summary = stdout_json(&out);
    assert_eq!(summary["stopped"], "interrupted");
    let steps = summary["steps_done"].as_u64().unwrap();
    assert_eq!(crate::train::metrics(&run).len() as u64, steps);
    let saved = checkpoints(&run);
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(verified_step(&saved[0]), steps);

    let recipe = tmp.path().join("recipe.toml");
    let stop = (steps + 2).to_string();
    let summary = stdout_json(&run_ok(&[
        "train",
        "--config",
        recipe.to_str().unwrap(),
        "--synthetic",
        "--out",
        run.to_str().unwrap(),
        "--quiet",
        "--json",
        "--resume",
        "--stop-after",
        &stop,
    ]));
    assert_eq!(summary["first_step"].as_u64().unwrap(), steps);
    assert_eq!(summary["steps_done"].as_u64().unwrap(), steps + 2);
}

/// Issue #14: SIGUSR1 (Slurm's `--signal`) writes a checkpoint after the step in flight
/// and the run goes on to its end.
#[test]
fn sigusr1_writes_a_checkpoint_and_the_run_goes_on() {
    let tmp = tempdir();
    let run = tmp.path().join("run");
    let end = 300;
    let child = start_training(
        tmp.path(),
        &run,
        &["--checkpoint-every", "0", "--stop-after", &end.to_string()],
    );
    wait_for_steps(&run, 3);
    kill(&child, "USR1");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    assert!(stderr.contains("SIGUSR1"), "{stderr}");
    let summary = stdout_json(&out);
    assert_eq!(summary["steps_done"], end, "{summary}");
    assert_eq!(summary["stopped"], "step_limit");
    let steps: Vec<u64> = checkpoints(&run).iter().map(|d| verified_step(d)).collect();
    assert_eq!(
        steps.len(),
        2,
        "the requested checkpoint and the last: {steps:?}"
    );
    assert!(steps[0] >= 3 && steps[0] < end, "{steps:?}");
    assert_eq!(steps[1], end);
}

/// Issue #14: a truncated file in the newest checkpoint made `--resume` fail with burn's
/// message about a record format change. Now the damaged checkpoint is named, and the run
/// falls back to the one before it and finishes.
#[test]
fn resume_falls_back_past_a_damaged_newest_checkpoint() {
    let tmp = tempdir();
    let recipe = crate::train::tiny_recipe(tmp.path(), 100_000, "");
    let run = tmp.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--config",
            recipe.to_str().unwrap(),
            "--synthetic",
            "--out",
            run.to_str().unwrap(),
            "--quiet",
            "--json",
            "--steps",
            "20",
            "--checkpoint-every",
            "5",
        ];
        args.extend(extra);
        output_with_watchdog(tessera().args(&args))
    };
    let first = train(&["--stop-after", "10"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let saved = checkpoints(&run);
    let names: Vec<_> = saved.iter().map(|d| d.file_name().unwrap()).collect();
    assert_eq!(names, ["step-00000005", "step-00000010"]);
    let model = saved[1].join("model.mpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() - 100]).unwrap();

    let resumed = train(&["--resume"]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(
        stderr.contains("step-00000010") && stderr.contains("model.mpk"),
        "{stderr}"
    );
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!(stderr.contains("falling back"), "{stderr}");
    assert!(!stderr.contains("internal data format"), "{stderr}");
    let summary = stdout_json(&resumed);
    assert_eq!(summary["first_step"], 5, "{summary}");
    assert_eq!(summary["steps_done"], 20);
    assert_eq!(summary["stopped"], "finished");
}

/// Issue #14: a second SIGTERM while the first is being honoured exits at once with
/// 128 + 15, leaving only complete checkpoints. The step is made slow (a large batch) so
/// the second signal lands while the first one's step is still running.
#[test]
fn a_second_sigterm_exits_at_once() {
    use std::io::BufRead;
    let tmp = tempdir();
    let run = tmp.path().join("run");
    let mut child = start_training(
        tmp.path(),
        &run,
        &["--checkpoint-every", "0", "--batch-size", "512"],
    );
    let stderr = child.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    wait_for_steps(&run, 1);
    kill(&child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|l: &String| l.contains("SIGTERM: finishing"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => panic!("the first SIGTERM was not acknowledged: {log:?}"),
        }
    }
    kill(&child, "TERM");
    let status = child.wait().unwrap();
    reader.join().unwrap(); // the pipe closed: every line is in the channel
    log.extend(seen.try_iter());
    assert_eq!(status.code(), Some(128 + 15), "{log:?}");
    assert!(log.iter().any(|l| l.contains("second SIGTERM")), "{log:?}");
    for dir in checkpoints(&run) {
        verified_step(&dir);
    }
}
