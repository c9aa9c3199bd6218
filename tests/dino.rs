//! DINO and iBOT through `tessera train`, `eval` and `attention` (issue #10): both train on
//! CIFAR-10 shards with multi-crop (and block masks), a DINO run resumes exactly (centre,
//! frozen last layer, teacher temperature warm-up, teacher, drop path), and `tessera
//! attention` draws a ViT checkpoint's heads and refuses a CNN's.

use std::path::{Path, PathBuf};

use crate::train::train_json as train;
use crate::util::*;

/// 96 CIFAR-10 training images in shards of 48: 12 steps an epoch at batch 8.
fn cifar(dir: &Path) -> String {
    crate::util::cifar_shards(dir, "train", "train/*/000?.jpg", "folders", 48)
}

/// A crop with the DINO colour augmentations.
fn view(name: &str, count: usize, size: u32, scale: &str, mask: &str) -> String {
    format!(
        r#"
[[views]]
name = "{name}"
count = {count}
size = {size}
scale = {scale}
interpolation = "bicubic"
[[views.transforms]]
op = "horizontal_flip"
p = 0.5
[[views.transforms]]
op = "color_jitter"
p = 0.8
brightness = 0.4
contrast = 0.4
saturation = 0.2
hue = 0.1
{mask}"#
    )
}

/// A multi-crop CIFAR recipe: 2 x 32 global + 3 x 16 local crops (block masks on the
/// globals when `masked`), `model`, `objective`, `steps` long.
fn recipe(
    dir: &Path,
    name: &str,
    model: &str,
    objective: &str,
    masked: bool,
    steps: u64,
) -> PathBuf {
    let mask = if masked {
        "[views.mask]\nkind = \"block\"\nratio = [0.0, 0.3]\nratio_var = [0.0, 0.2]\npatch_size = 8\n"
    } else {
        ""
    };
    let text = format!(
        r#"[data]
batch_size = 8
image_fields = ["jpg"]
label_field = "cls"
shuffle_buffer = 32
seed = 5
{}{}{}
[model]
{model}

[objective]
{objective}
out_dim = 64
hidden_dim = 32
bottleneck_dim = 16
warmup_teacher_temp_epochs = 0.5
freeze_last_layer = 0.25

[train]
steps = {steps}
warmup_steps = 1
checkpoint_every = 2
keep_checkpoints = 2

[optim]
base_lr = 5e-4
weight_decay = 0.04
weight_decay_end = 0.4
betas = [0.9, 0.999]
clip_grad = 3.0
clip_grad_mode = "per_parameter"
"#,
        view("global_1", 1, 32, "[0.4, 1.0]", mask),
        view("global_2", 1, 32, "[0.4, 1.0]", mask),
        view("local", 3, 16, "[0.05, 0.4]", ""),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Two blocks of 32 at patch 8 (4x4 tokens on 32 px, 2x2 on 16 px), with drop path.
const TINY_VIT: &str = "arch = \"vit_tiny_patch16_224\"\nimg_size = 32\npatch_size = 8\nembed_dim = 32\ndepth = 2\nnum_heads = 2\ndrop_path_rate = 0.2";
const RESNET18: &str = "arch = \"resnet18\"\ncifar_stem = true";

/// Every metric line as text (`step`, `loss` and the logged parts), for exact comparisons.
fn lines(run: &Path) -> Vec<String> {
    crate::train::metrics(run)
        .iter()
        .map(|v| format!("{} {} {}", v["step"], v["loss"], v["parts"]))
        .collect()
}

/// DINO on a ViT and a ResNet, iBOT on a ViT: finite losses with their parts, and the ViT
/// checkpoints score through `tessera eval`.
#[test]
fn dino_and_ibot_train_and_evaluate() {
    let tmp = tempdir();
    let shards = cifar(tmp.path());
    let cases = [
        ("dino_vit", TINY_VIT, "method = \"dino\"", false),
        ("dino_resnet", RESNET18, "method = \"dino\"", false),
        ("ibot_vit", TINY_VIT, "method = \"ibot\"", true),
    ];
    for (name, model, objective, masked) in cases {
        let recipe = recipe(tmp.path(), name, model, objective, masked, 3);
        let run = tmp.path().join(name);
        let summary = train(&recipe, &shards, &run, &[]);
        assert_eq!(summary["steps_done"], 3, "{name}");
        for m in crate::train::metrics(&run) {
            assert!(m["loss"].as_f64().unwrap().is_finite(), "{name}: {m}");
            let entropy = m["parts"]["teacher_entropy"].as_f64().unwrap();
            assert!(entropy > 0.0 && entropy <= 64f64.ln() + 1e-6, "{name}: {m}");
            if masked {
                assert!(m["parts"]["patch"].as_f64().unwrap() >= 0.0, "{name}: {m}");
            }
        }
    }
    for which in ["student", "teacher"] {
        crate::eval::quick_knn(&tmp.path().join("dino_vit"), &shards, &["--which", which]);
    }
}

/// Stopping after 3 of 6 steps and resuming gives the uninterrupted run's losses and parts
/// bit for bit: the last layer is frozen for the first 3 steps, the teacher temperature warms
/// up over 6, the centre and the teacher move every step and drop path draws per step.
#[test]
fn dino_resume_is_exact() {
    let tmp = tempdir();
    let shards = cifar(tmp.path());
    let recipe = recipe(tmp.path(), "dino", TINY_VIT, "method = \"dino\"", false, 6);
    let straight = tmp.path().join("straight");
    train(&recipe, &shards, &straight, &[]);
    let resumed = tmp.path().join("resumed");
    let first = train(&recipe, &shards, &resumed, &["--stop-after", "3"]);
    assert_eq!(first["stopped"], "step_limit");
    let second = train(&recipe, &shards, &resumed, &["--resume"]);
    assert_eq!(second["first_step"], 3);
    let (a, b) = (lines(&straight), lines(&resumed));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b);
}

/// `tessera attention` draws the image and one map per head of a ViT checkpoint, and
/// refuses a ResNet one with a message that says why.
#[test]
fn attention_draws_vit_heads_and_refuses_a_cnn() {
    let tmp = tempdir();
    let shards = cifar(tmp.path());
    let vit = recipe(tmp.path(), "vit", TINY_VIT, "method = \"dino\"", false, 1);
    train(&vit, &shards, &tmp.path().join("vit"), &[]);
    let first = |dir: PathBuf| {
        std::fs::read_dir(dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
    };
    let image = first(first(tmp.path().join("cifar-train-folders/train")));
    for (which, zoom, width, height) in
        [("teacher", "1", 32 * 3, 32), ("student", "4", 128 * 3, 128)]
    {
        let out = tmp.path().join(format!("{which}.png"));
        let report = stdout_json(&run_ok(&[
            "attention",
            "--checkpoint",
            tmp.path().join("vit").to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--which",
            which,
            "--zoom",
            zoom,
        ]));
        assert_eq!(report["heads"], 2, "{report}");
        assert_eq!(crate::train::png_size(&out), (width, height));
    }

    let cnn = recipe(tmp.path(), "cnn", RESNET18, "method = \"dino\"", false, 1);
    train(&cnn, &shards, &tmp.path().join("cnn"), &[]);
    let out = output_with_watchdog(tessera().args([
        "attention",
        "--checkpoint",
        tmp.path().join("cnn").to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--out",
        tmp.path().join("cnn.png").to_str().unwrap(),
    ]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("need a ViT"), "{stderr}");
    assert!(!tmp.path().join("cnn.png").exists());
}
