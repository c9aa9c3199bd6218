//! Data-parallel training (issue #13) through `tessera train`: two CPU processes on
//! 127.0.0.1 against one process with the same global batch (MAE; the batch-coupled
//! methods with their global-batch gathers and SyncBatchNorm), resume of a two-rank run,
//! and a rank killed mid-run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::train::{metrics, tiny_recipe};
use crate::util::*;

fn synthetic_args<'a>(recipe: &'a Path, out: &'a Path, batch: &'a str) -> Vec<&'a str> {
    with_timeout(recipe, out, batch, "60")
}

/// [`synthetic_args`] with the collective timeout `timeout` (seconds).
fn with_timeout<'a>(
    recipe: &'a Path,
    out: &'a Path,
    batch: &'a str,
    timeout: &'a str,
) -> Vec<&'a str> {
    vec![
        "train",
        "--config",
        recipe.to_str().unwrap(),
        "--synthetic",
        "--batch-size",
        batch,
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--json",
        "--collective-timeout",
        timeout,
    ]
}

fn losses(run: &Path) -> Vec<f64> {
    metrics(run)
        .iter()
        .map(|m| m["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn two_ranks_train_like_one_rank_with_twice_the_batch() {
    let tmp = tempdir();
    let recipe = tiny_recipe(tmp.path(), 6, "");
    let one = tmp.path().join("one");
    run_ok(&synthetic_args(&recipe, &one, "16"));
    let two = tmp.path().join("two");
    let mut args = synthetic_args(&recipe, &two, "8");
    args.extend(["--devices", "2"]);
    let out = run_ok(&args);
    let s = stdout_json(&out);
    assert_eq!(s["steps_done"], 6);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("micro-batch 8 x accum 1 x ranks 2"),
        "global batch not reported:\n{stderr}"
    );

    assert_same_losses(&one, &two, 6);
    assert_same_exports(tmp.path(), &one, &two);
}

/// The loss of every step agrees (relative 1e-4) between a one-rank and a two-rank run.
fn assert_same_losses(one: &Path, two: &Path, steps: usize) {
    let (a, b) = (losses(one), losses(two));
    assert_eq!(a.len(), steps);
    assert_eq!(b.len(), steps, "rank 0 logs one record per step");
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        let tol = 1e-4 * x.abs().max(1.0);
        assert!(
            (x - y).abs() <= tol,
            "{}, step {step}: one rank x 2B gave {x}, two ranks x B gave {y}",
            two.display()
        );
    }
}

/// The exported encoders of two runs agree within float rounding: each tensor's largest
/// difference is within 1e-2 of its largest value. Normwise, not element by element: a
/// BatchNorm bias of the last block is a sum of gradients that nearly cancel, so its rounding
/// error scales with the terms, not with the result (2-core EPYC without AVX-512, SimCLR:
/// `layer4.1.bn2.bias` differs by 7.1e-6 where the tensor's largest value is 4.5e-3, 1.6e-3
/// of it; every other tensor within 1.1e-3). A wrong split of the batch or a missed gradient
/// moves whole tensors by tens of percent.
fn assert_same_exports(tmp: &Path, one: &Path, two: &Path) {
    let export = |run: &Path, name: &str| {
        let path = tmp.join(name);
        run_ok(&[
            "export",
            "--checkpoint",
            run.to_str().unwrap(),
            "--out",
            path.to_str().unwrap(),
        ]);
        std::fs::read(path).unwrap()
    };
    let (ea, eb) = (
        export(one, "one.safetensors"),
        export(two, "two.safetensors"),
    );
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&ea).unwrap(),
        safetensors::SafeTensors::deserialize(&eb).unwrap(),
    );
    let mut names = ta.names();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        let (x, y) = (ta.tensor(name).unwrap(), tb.tensor(name).unwrap());
        assert_eq!(x.shape(), y.shape(), "{name}");
        let f = |d: &[u8]| -> Vec<f32> {
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let (a, b) = (f(x.data()), f(y.data()));
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!(
                (p - q).abs() <= 1e-2 * scale,
                "{name}[{i}]: {p} vs {q} (largest value of the tensor {scale})"
            );
        }
    }
}

/// A two-view recipe on a ResNet-18 (CIFAR stem) at 16 px with small heads: BatchNorm in
/// the backbone and the projector.
fn two_view_recipe(dir: &Path, name: &str, objective: &str, steps: u64) -> PathBuf {
    let text = format!(
        r#"[data]
batch_size = 8
seed = 5

[[views]]
name = "view"
count = 2
size = 16
scale = [0.3, 1.0]
[[views.transforms]]
op = "horizontal_flip"
p = 0.5

[model]
arch = "resnet18"
cifar_stem = true

[objective]
{objective}

[train]
steps = {steps}
warmup_steps = 1
checkpoint_every = 0

[optim]
optimizer = "sgd"
lr = 0.05
momentum = 0.9
weight_decay = 1e-4
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Issue #13: the batch-coupled methods see the global batch. SimCLR takes its negatives
/// from every rank (gathered with their gradients) and BYOL's student and momentum teacher
/// normalise with global BatchNorm statistics (SyncBatchNorm, backbone and heads): two
/// ranks x 4 give the losses and weights of one rank x 8.
#[test]
fn simclr_and_byol_on_two_ranks_train_like_one_rank_with_twice_the_batch() {
    let methods = [
        (
            "simclr",
            "method = \"simclr\"\ntemperature = 0.5\nproj_hidden_dim = 32\nproj_output_dim = 16",
        ),
        (
            "byol",
            "method = \"byol\"\nproj_hidden_dim = 32\nproj_output_dim = 16\npred_hidden_dim = 32",
        ),
    ];
    for (name, objective) in methods {
        let tmp = tempdir();
        let (one, two) = one_rank_and_two_ranks(tmp.path(), name, objective);
        assert_same_exports(tmp.path(), &one, &two);
    }
}

/// `name` with `objective` for 3 steps as one rank x 8 and as two ranks x 4; asserts the
/// same losses and returns the two run directories.
fn one_rank_and_two_ranks(dir: &Path, name: &str, objective: &str) -> (PathBuf, PathBuf) {
    let recipe = two_view_recipe(dir, name, objective, 3);
    let one = dir.join(format!("{name}-one"));
    run_ok(&synthetic_args(&recipe, &one, "8"));
    let two = dir.join(format!("{name}-two"));
    let mut args = synthetic_args(&recipe, &two, "4");
    args.extend(["--devices", "2"]);
    assert_eq!(stdout_json(&run_ok(&args))["steps_done"], 3, "{name}");
    assert_same_losses(&one, &two, 3);
    (one, two)
}

/// Issue #13: the other two-view methods that couple a batch's samples (Barlow Twins' and
/// VICReg's statistics, MoCo v3's keys, MoCo v2's queue, NNCLR's negatives and support set),
/// with SyncBatchNorm: two ranks x 4 give the losses of one rank x 8.
#[test]
fn batch_coupled_two_view_methods_on_two_ranks_match_one_rank() {
    let methods = [
        ("barlow_twins", "method = \"barlow_twins\"\nproj_dim = 32"),
        ("vicreg", "method = \"vicreg\"\nproj_dim = 32"),
        (
            "moco_v3",
            "method = \"moco_v3\"\nproj_hidden_dim = 32\nproj_output_dim = 16",
        ),
        (
            "moco_v2",
            "method = \"moco_v2\"\nproj_hidden_dim = 32\nproj_output_dim = 16\nqueue_size = 64",
        ),
        (
            "nnclr",
            "method = \"nnclr\"\nproj_hidden_dim = 32\nproj_output_dim = 16\npred_hidden_dim = 32\nqueue_size = 64",
        ),
    ];
    for (name, objective) in methods {
        let tmp = tempdir();
        one_rank_and_two_ranks(tmp.path(), name, objective);
    }
}

#[test]
fn a_two_rank_run_resumes_exactly() {
    let tmp = tempdir();
    let recipe = tiny_recipe(tmp.path(), 6, "");
    let straight = tmp.path().join("straight");
    let mut args = synthetic_args(&recipe, &straight, "8");
    args.extend(["--devices", "2"]);
    run_ok(&args);

    let resumed = tmp.path().join("resumed");
    let mut first = synthetic_args(&recipe, &resumed, "8");
    first.extend(["--devices", "2", "--stop-after", "3"]);
    assert_eq!(stdout_json(&run_ok(&first))["stopped"], "step_limit");
    let state = std::fs::read_to_string(resumed.join("checkpoints/step-00000003/state.json"))
        .expect("a checkpoint after step 3");
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let ranks = state["ranks"].as_array().expect("every rank's position");
    assert_eq!(ranks.len(), 2);
    assert_eq!(ranks[1]["rank"], 1);
    assert_eq!(ranks[1]["samples_consumed"], 24);

    let mut second = synthetic_args(&recipe, &resumed, "8");
    second.extend(["--devices", "2", "--resume"]);
    assert_eq!(stdout_json(&run_ok(&second))["first_step"], 3);
    let (a, b) = (losses(&straight), losses(&resumed));
    assert_eq!(a.len(), 6);
    assert_eq!(
        a, b,
        "a resumed two-rank run must repeat the uninterrupted losses"
    );
}

/// Starts one rank by hand, as torchrun would.
fn rank(recipe: &Path, out: &Path, rank: u32, port: u16) -> std::process::Child {
    tessera()
        .args(with_timeout(recipe, out, "8", "10"))
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a rank")
}

/// A run of `count` free ports below the kernel's ephemeral range (where no other test's
/// outgoing connection can take one before the ranks bind it), as `--devices` chooses.
fn free_port_run(count: u16) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = u64::from(ephemeral_low - count - 10_000);
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    loop {
        // splitmix64: a different candidate each time round.
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let base = 10_000 + ((z ^ (z >> 31)) % span) as u16;
        if (base..base + count).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()) {
            return base;
        }
    }
}

#[test]
fn a_killed_rank_stops_the_other_with_an_error_and_an_intact_checkpoint() {
    let tmp = tempdir();
    // Long enough that it is still running when rank 1 dies.
    let recipe = tiny_recipe(tmp.path(), 100_000, "");
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("checkpoint_every = 5", "checkpoint_every = 2");
    std::fs::write(&recipe, text).unwrap();
    let run = tmp.path().join("run");
    let port = free_port_run(3);
    let mut r0 = rank(&recipe, &run, 0, port);
    let mut r1 = rank(&recipe, &run, 1, port);

    // Wait until a few steps (and a checkpoint) are done, then kill rank 1 outright.
    let started = Instant::now();
    while metrics_len(&run) < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the two ranks did not train"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    r1.kill().unwrap();
    let _ = r1.wait();
    // A hang guard, not a speed check: rank 0 gives up after its 10 s timeout.
    let out = wait_within(&mut r0, Duration::from_secs(300));
    let stderr = out.1;
    assert!(!out.0.success(), "rank 0 must fail when rank 1 is gone");
    // Either the timeout or the broken connection ends it; both name the step's all-reduce.
    assert!(
        stderr.contains("rank 0: the all-reduce of step"),
        "the error must say what happened:\n{stderr}"
    );
    // burn-collective's network tasks may panic when the peer goes: one warning line each,
    // never a raw panic message and backtrace cutting into the error above.
    assert!(
        !stderr.contains("panicked at") && !stderr.contains("stack backtrace"),
        "a raw panic reached stderr:\n{stderr}"
    );
    // The newest checkpoint is complete: the job, restarted, resumes from it.
    let mut again = synthetic_args(&recipe, &run, "8");
    let steps = (metrics_len(&run) + 2).to_string();
    again.extend(["--devices", "2", "--resume", "--stop-after", &steps]);
    let out = run_ok(&again);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("resuming from") && !stderr.contains("damaged"),
        "{stderr}"
    );
}

#[test]
fn a_rank_whose_port_is_taken_says_so_before_joining() {
    let tmp = tempdir();
    let recipe = tiny_recipe(tmp.path(), 100, "");
    let run = tmp.path().join("run");
    let port = free_port_run(3);
    // Another program holds rank 1's tensor-service port (MASTER_PORT + 2).
    let _held = std::net::TcpListener::bind(("0.0.0.0", port + 2)).unwrap();
    let mut r0 = rank(&recipe, &run, 0, port);
    let mut r1 = rank(&recipe, &run, 1, port);
    // A hang guard, not a speed check: rank 1 fails before it registers.
    let (status, stderr) = wait_within(&mut r1, Duration::from_secs(120));
    let _ = r0.kill();
    let _ = r0.wait();
    assert!(!status.success(), "rank 1 cannot serve its tensors");
    let address = format!("ws://127.0.0.1:{}", port + 2);
    assert!(
        stderr.contains("rank 1: joining the collective failed")
            && stderr.contains(&format!("could not listen at {address}"))
            && stderr.contains("AddrInUse"),
        "the error must name the port and the cause:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked at") && !stderr.contains("stack backtrace"),
        "a raw panic reached stderr:\n{stderr}"
    );
}

fn metrics_len(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Waits for `child` at most `limit`; its status and stderr.
fn wait_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the rank did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

/// The child of `parent` whose environment has `RANK=rank`.
fn child_with_rank(parent: u32, rank: u32) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Field 4 (after the parenthesised name) is the parent pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let want = format!("RANK={rank}");
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn the_launcher_names_a_rank_that_dies_and_stops_the_others() {
    let tmp = tempdir();
    let recipe = tiny_recipe(tmp.path(), 100_000, "");
    let run = tmp.path().join("run");
    let mut args = synthetic_args(&recipe, &run, "8");
    args.extend(["--devices", "2"]);
    let mut launcher = tessera()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while metrics_len(&run) < 3 {
        assert!(started.elapsed() < Duration::from_secs(300), "no training");
        std::thread::sleep(Duration::from_millis(100));
    }
    let victim = child_with_rank(launcher.id(), 1).expect("rank 1 is a child of the launcher");
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let (status, stderr) = wait_within(&mut launcher, Duration::from_secs(300));
    assert!(!status.success());
    assert!(
        stderr.contains("rank 1 exited with signal 9") && stderr.contains("rank 1 of 2 failed"),
        "the launcher must name the dead rank:\n{stderr}"
    );
}
