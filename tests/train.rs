//! `tessera train`, `export` and `demo` end to end (issue #4), on a few hundred CIFAR-10
//! images and a tiny MAE so each test takes seconds on two cores.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

/// A tiny MAE at 32x32 (ViT 2 x 48, decoder 1 x 32), `steps` long.
pub(crate) fn tiny_recipe(dir: &Path, steps: u64, extra_optim: &str) -> PathBuf {
    let text = format!(
        r#"[data]
batch_size = 16
image_fields = ["jpg"]
label_field = "cls"
shuffle_buffer = 64
seed = 7

[[views]]
name = "image"
size = 32
scale = [0.35, 1.0]
interpolation = "bicubic"
[[views.transforms]]
op = "horizontal_flip"
p = 0.5
[views.mask]
kind = "random"
ratio = 0.75
patch_size = 4

[model]
arch = "vit_tiny_patch16_224"
img_size = 32
patch_size = 4
embed_dim = 48
depth = 2
num_heads = 3

[objective]
method = "mae"
decoder_embed_dim = 32
decoder_depth = 1
decoder_num_heads = 2

[train]
steps = {steps}
warmup_steps = 2
checkpoint_every = 5
keep_checkpoints = 2

[optim]
base_lr = 1.5e-3
{extra_optim}
"#
    );
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// 300 CIFAR-10 training images (30 a class) sharded 100 a shard; returns the shard glob.
/// 300 CIFAR-10 training images in shards of 100.
fn cifar_shards(dir: &Path) -> String {
    crate::util::cifar_shards(dir, "train", "train/*/00[0-2]?.jpg", "folders", 100)
}

pub(crate) fn train_args<'a>(recipe: &'a Path, shards: &'a str, out: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--config",
        recipe.to_str().unwrap(),
        "--shards",
        shards,
        "--out",
        out.to_str().unwrap(),
        "--workers",
        "2",
        "--quiet",
        "--json",
    ]
}

/// `tessera train` with [`train_args`] and `extra`; its JSON summary.
pub(crate) fn train_json(
    recipe: &Path,
    shards: &str,
    out: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = train_args(recipe, shards, out);
    args.extend(extra);
    stdout_json(&run_ok(&args))
}

pub(crate) fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Width and height from a PNG's IHDR, after checking the signature.
pub(crate) fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn train_writes_metrics_checkpoints_pictures_and_loss_curve() {
    let tmp = tempdir();
    let shards = cifar_shards(tmp.path());
    let recipe = tiny_recipe(tmp.path(), 12, "");
    let run = tmp.path().join("run");
    let mut args = train_args(&recipe, &shards, &run);
    args.extend(["--picture-every", "5"]);
    let summary = stdout_json(&run_ok(&args));
    assert_eq!(summary["steps_done"], 12);
    assert_eq!(summary["stopped"], "finished");

    // config.json: the resolved numbers, written before step 0.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["effective_batch"], 16);
    assert_eq!(config["schedule"]["total_steps"], 12);

    // metrics.jsonl: one line per step with the promised fields.
    let lines = metrics(&run);
    assert_eq!(lines.len(), 12);
    for (i, m) in lines.iter().enumerate() {
        assert_eq!(m["step"], i as u64);
        let loss = m["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "step {i}: loss {loss}");
        assert!(m["lr"].as_f64().unwrap() >= 0.0);
        assert!(m["images_per_second"].as_f64().unwrap() > 0.0);
        let wait = m["data_wait_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&wait), "data_wait_fraction {wait}");
    }
    assert_eq!(lines[0]["lr"].as_f64().unwrap(), 0.0, "warmup starts at 0");

    // Pictures at steps 5, 10 and the last; each 3 columns of 32 px plus gaps, upscaled 4x
    // (cells of 128 px) under a 28-px band of column headings.
    let mut pictures: Vec<PathBuf> = std::fs::read_dir(run.join("pictures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pictures.sort();
    let names: Vec<String> = pictures
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["step_0000005.png", "step_0000010.png", "step_0000012.png"]
    );
    let (w, h) = png_size(&pictures[0]);
    assert_eq!(w, 4 * (3 * (32 + 2) + 2));
    assert_eq!(h, 28 + 4 * (6 * (32 + 2) + 2), "six samples");
    assert_eq!(png_size(&run.join("loss.png")), (960, 540));

    // Checkpoints: the newest two kept (steps 10 and 12); nothing half-written left over.
    let checkpoint = summary["checkpoint"].as_str().unwrap();
    assert!(Path::new(checkpoint).exists(), "{checkpoint}");
    let leftovers: Vec<_> = walk(&run)
        .into_iter()
        .filter(|p| {
            p.strip_prefix(&run)
                .unwrap()
                .to_string_lossy()
                .contains(".tmp")
        })
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[test]
fn resume_continues_the_same_loss_curve_exactly() {
    let tmp = tempdir();
    let shards = cifar_shards(tmp.path());
    let recipe = tiny_recipe(tmp.path(), 10, "");

    let straight = tmp.path().join("straight");
    run_ok(&train_args(&recipe, &shards, &straight));

    let resumed = tmp.path().join("resumed");
    let mut first = train_args(&recipe, &shards, &resumed);
    first.extend(["--stop-after", "5"]);
    let summary = stdout_json(&run_ok(&first));
    assert_eq!(summary["stopped"], "step_limit");
    assert_eq!(metrics(&resumed).len(), 5);
    let mut second = train_args(&recipe, &shards, &resumed);
    second.push("--resume");
    let summary = stdout_json(&run_ok(&second));
    assert_eq!(summary["first_step"], 5);

    let a = metrics(&straight);
    let b = metrics(&resumed);
    assert_eq!(a.len(), 10);
    assert_eq!(b.len(), 10);
    for (x, y) in a.iter().zip(&b) {
        // Bit-identical: the JSON numbers are the shortest round-trip form of each f64.
        assert_eq!(
            (&x["step"], &x["loss"], &x["lr"]),
            (&y["step"], &y["loss"], &y["lr"])
        );
    }
}

#[test]
fn export_writes_timm_named_safetensors() {
    let tmp = tempdir();
    let shards = cifar_shards(tmp.path());
    let recipe = tiny_recipe(tmp.path(), 3, "");
    let run = tmp.path().join("run");
    run_ok(&train_args(&recipe, &shards, &run));
    let out = tmp.path().join("encoder.safetensors");
    export(&run, &out, &[]);

    // safetensors: 8-byte little-endian header length, then a JSON header of name -> {dtype, shape, data_offsets}.
    let bytes = std::fs::read(&out).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let names: Vec<&str> = header
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.1.mlp.fc2.bias",
        "norm.weight",
    ] {
        assert!(names.contains(&key), "missing {key} in {names:?}");
    }
    assert!(
        !names.iter().any(|k| k.starts_with("decoder")),
        "the decoder is not exported: {names:?}"
    );
    assert_eq!(
        header["patch_embed.proj.weight"]["shape"],
        serde_json::json!([48, 3, 4, 4])
    );
    assert_eq!(header["blocks.0.attn.qkv.weight"]["dtype"], "F32");
    let end = header
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v["data_offsets"][1].as_u64())
        .max()
        .unwrap() as usize;
    assert_eq!(
        bytes.len(),
        8 + n + end,
        "the data section holds every tensor"
    );
}

#[test]
fn ctrl_c_finishes_the_step_and_leaves_a_complete_checkpoint() {
    let tmp = tempdir();
    let shards = cifar_shards(tmp.path());
    let recipe = tiny_recipe(tmp.path(), 100_000, "");
    let run = tmp.path().join("run");
    let child = tessera()
        .args(train_args(&recipe, &shards, &run))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !run.join("metrics.jsonl").exists() || metrics(&run).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no training progress within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    // EX_TEMPFAIL: stopped with a checkpoint, to be resumed (issue #14).
    assert_eq!(
        out.status.code(),
        Some(75),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout_json(&out);
    assert_eq!(summary["stopped"], "interrupted");
    let steps = summary["steps_done"].as_u64().unwrap();
    assert_eq!(
        metrics(&run).len() as u64,
        steps,
        "every finished step is logged"
    );

    // The checkpoint is complete: it resumes at the interrupted step.
    let mut resume = train_args(&recipe, &shards, &run);
    let stop = (steps + 1).to_string();
    resume.extend(["--resume", "--stop-after", &stop]);
    let summary = stdout_json(&run_ok(&resume));
    assert_eq!(summary["first_step"].as_u64().unwrap(), steps);
    assert_eq!(summary["steps_done"].as_u64().unwrap(), steps + 1);
}

#[test]
fn a_non_finite_loss_stops_with_a_named_step_and_a_checkpoint() {
    let tmp = tempdir();
    let shards = cifar_shards(tmp.path());
    let recipe = tiny_recipe(tmp.path(), 20, "lr = 1e30");
    let run = tmp.path().join("run");
    let out = output_with_watchdog(tessera().args(train_args(&recipe, &shards, &run)));
    assert!(!out.status.success(), "a diverging run must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loss is") && stderr.contains("at step"),
        "{stderr}"
    );
    assert!(stderr.contains("saved in"), "{stderr}");
}

#[test]
fn demo_quick_runs_every_stage() {
    let tmp = tempdir();
    let out = tmp.path().join("demo");
    let report = stdout_json(&run_ok(&[
        "demo",
        "--quick",
        "--quiet",
        "--json",
        "--out",
        out.to_str().unwrap(),
        "--workers",
        "2",
    ]));
    assert_eq!(report["images_written"], 240);
    assert_eq!(report["samples_sharded"], 240);
    assert_eq!(report["shards"].as_array().unwrap().len(), 4);
    assert!(report["pipeline_images_per_second"].as_f64().unwrap() > 0.0);
    assert!(!report["pipeline_bottleneck"].as_str().unwrap().is_empty());
    assert_eq!(report["steps"], 8);
    assert!(report["last_loss"].as_f64().unwrap().is_finite());
    for picture in report["pictures"].as_array().unwrap() {
        png_size(Path::new(picture.as_str().unwrap()));
    }
    png_size(Path::new(report["loss_curve"].as_str().unwrap()));
    assert!(Path::new(report["report"].as_str().unwrap()).exists());
    assert!(out.join("recipe.toml").exists());
}
