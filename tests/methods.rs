//! The joint-embedding methods through `tessera train`, `eval` and `export` (issue #9):
//! every method trains on CIFAR-10 shards, BYOL and MoCo v2 resume exactly (teacher and
//! queue included), a ResNet checkpoint exports with timm's names, bad recipes are refused
//! before any work.

use std::path::{Path, PathBuf};

use crate::train::train_json as train;
use crate::util::*;

/// 96 CIFAR-10 training images (a few a class) in shards of 48.
fn cifar(dir: &Path) -> String {
    crate::util::cifar_shards(dir, "train", "train/*/000?.jpg", "folders", 48)
}

/// A two-view CIFAR recipe for `method` with `objective` keys, a ResNet-18 (CIFAR stem)
/// or the given `[model]`, `steps` long.
fn recipe(
    dir: &Path,
    name: &str,
    objective: &str,
    model: &str,
    optim: &str,
    steps: u64,
) -> PathBuf {
    let text = format!(
        r#"[data]
batch_size = 8
image_fields = ["jpg"]
label_field = "cls"
shuffle_buffer = 32
seed = 3

[[views]]
name = "view"
count = 2
size = 32
scale = [0.2, 1.0]
interpolation = "bilinear"
[[views.transforms]]
op = "horizontal_flip"
p = 0.5
[[views.transforms]]
op = "color_jitter"
p = 0.8
brightness = 0.4
contrast = 0.4
saturation = 0.4
hue = 0.1

[model]
{model}

[objective]
{objective}

[train]
steps = {steps}
warmup_steps = 1
checkpoint_every = 2
keep_checkpoints = 2

[optim]
{optim}
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

const RESNET18: &str = "arch = \"resnet18\"\ncifar_stem = true";
/// A ViT small enough for many steps in a test (2 blocks of 32 at 32 px, patch 8).
const TINY_VIT: &str = "arch = \"vit_tiny_patch16_224\"\nimg_size = 32\npatch_size = 8\nembed_dim = 32\ndepth = 2\nnum_heads = 2";

/// `step loss` of every line of the run's metrics, for exact comparisons.
fn losses(run: &Path) -> Vec<String> {
    crate::train::metrics(run)
        .iter()
        .map(|v| format!("{} {}", v["step"], v["loss"]))
        .collect()
}

/// Each two-view method, small heads, a few steps on a ResNet-18: finite losses, a
/// checkpoint, and its kNN accuracy through `tessera eval`.
#[test]
fn every_two_view_method_trains_and_evaluates_on_resnet18() {
    let tmp = tempdir();
    let shards = cifar(tmp.path());
    let lars = "optimizer = \"lars\"\nbase_lr = 0.3\nweight_decay = 1e-5\neta = 0.02";
    let sgd = "optimizer = \"sgd\"\nbase_lr = 0.05\nweight_decay = 5e-4";
    let adamw = "base_lr = 1e-3\nweight_decay = 0.05";
    let cases = [
        (
            "simclr",
            "method = \"simclr\"\ntemperature = 0.5\nproj_hidden_dim = 64\nproj_output_dim = 32",
            lars,
        ),
        (
            "moco_v2",
            "method = \"moco_v2\"\nqueue_size = 64\nproj_hidden_dim = 64\nproj_output_dim = 32",
            sgd,
        ),
        (
            "moco_v3",
            "method = \"moco_v3\"\nproj_hidden_dim = 64\nproj_output_dim = 32",
            adamw,
        ),
        (
            "byol",
            "method = \"byol\"\nproj_hidden_dim = 64\nproj_output_dim = 32\npred_hidden_dim = 64",
            lars,
        ),
        (
            "simsiam",
            "method = \"simsiam\"\nproj_dim = 64\npred_hidden_dim = 16",
            sgd,
        ),
        (
            "barlow_twins",
            "method = \"barlow_twins\"\nproj_dim = 64",
            lars,
        ),
        ("vicreg", "method = \"vicreg\"\nproj_dim = 64", lars),
        (
            "nnclr",
            "method = \"nnclr\"\nqueue_size = 64\nproj_hidden_dim = 64\nproj_output_dim = 32\npred_hidden_dim = 64",
            lars,
        ),
    ];
    for (name, objective, optim) in cases {
        let recipe = recipe(tmp.path(), name, objective, RESNET18, optim, 3);
        let run = tmp.path().join(name);
        let summary = train(&recipe, &shards, &run, &[]);
        assert_eq!(summary["steps_done"], 3, "{name}");
        let lines = losses(&run);
        assert_eq!(lines.len(), 3, "{name}");
        for line in &lines {
            let loss: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
            assert!(loss.is_finite(), "{name}: {line}");
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["method"]["name"], name);
    }
    // One kNN evaluation of a ResNet checkpoint (the ViT path is covered by `eval`).
    crate::eval::quick_knn(&tmp.path().join("byol"), &shards, &[]);
}

/// Stopping after 3 steps and resuming gives the uninterrupted run's losses bit for bit:
/// the teacher (BYOL), the queue (MoCo v2) and the pipeline position are all restored.
#[test]
fn byol_and_moco_v2_resume_exactly() {
    let tmp = tempdir();
    let shards = cifar(tmp.path());
    let cases = [
        (
            "byol",
            "method = \"byol\"\nproj_hidden_dim = 32\nproj_output_dim = 16\npred_hidden_dim = 32",
        ),
        (
            "moco_v2",
            "method = \"moco_v2\"\nqueue_size = 24\nproj_hidden_dim = 32\nproj_output_dim = 16",
        ),
    ];
    for (name, objective) in cases {
        let optim = "optimizer = \"sgd\"\nbase_lr = 0.05\nweight_decay = 1e-4";
        let recipe = recipe(tmp.path(), name, objective, TINY_VIT, optim, 6);
        let straight = tmp.path().join(format!("{name}-straight"));
        train(&recipe, &shards, &straight, &[]);
        let resumed = tmp.path().join(format!("{name}-resumed"));
        let first = train(&recipe, &shards, &resumed, &["--stop-after", "3"]);
        assert_eq!(first["stopped"], "step_limit", "{name}");
        let second = train(&recipe, &shards, &resumed, &["--resume"]);
        assert_eq!(second["first_step"], 3, "{name}");
        assert_eq!(losses(&straight), losses(&resumed), "{name}");
    }
}

/// A ResNet-18 checkpoint exports with exactly timm's keys and shapes (those of the golden
/// timm `resnet18` state dict), so `timm.create_model("resnet18", num_classes=0)` loads it
/// strictly; the teacher of a BYOL run exports too.
#[test]
fn resnet_export_has_timm_keys_and_shapes() {
    let tmp = tempdir();
    let shards = cifar(tmp.path());
    // The golden weights are timm's plain resnet18 (7x7 stem): train that, not the CIFAR stem.
    let recipe = recipe(
        tmp.path(),
        "byol",
        "method = \"byol\"\nproj_hidden_dim = 32\nproj_output_dim = 16\npred_hidden_dim = 32",
        "arch = \"resnet18\"",
        "optimizer = \"lars\"\nbase_lr = 0.1",
        1,
    );
    let run = tmp.path().join("run");
    train(&recipe, &shards, &run, &[]);
    let golden = std::fs::read(testdata("ssl-goldens/backbone_resnet18.safetensors")).unwrap();
    let golden = safetensors::SafeTensors::deserialize(&golden).unwrap();
    let mut want: Vec<(String, Vec<usize>)> = golden
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            Some((
                name.strip_prefix("weight.")?.to_string(),
                view.shape().to_vec(),
            ))
        })
        .collect();
    want.sort();
    for which in ["student", "teacher"] {
        let out = tmp.path().join(format!("{which}.safetensors"));
        export(&run, &out, &["--which", which]);
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut got: Vec<(String, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.shape().to_vec()))
            .collect();
        got.sort();
        assert_eq!(got, want, "{which}");
    }

    // `[model] pretrained`: a fresh run starts from those timm weights (here the exported
    // student): exported again before any step, every tensor is the same.
    let exported = tmp.path().join("student.safetensors");
    let text = std::fs::read_to_string(&recipe).unwrap().replace(
        "arch = \"resnet18\"",
        &format!(
            "arch = \"resnet18\"\npretrained = {:?}",
            exported.to_str().unwrap()
        ),
    );
    let warm = tmp.path().join("warm.toml");
    std::fs::write(&warm, text).unwrap();
    let run2 = tmp.path().join("run2");
    train(&warm, &shards, &run2, &["--stop-after", "0"]);
    let again = tmp.path().join("again.safetensors");
    export(&run2, &again, &[]);
    let (a, b) = (
        std::fs::read(&exported).unwrap(),
        std::fs::read(&again).unwrap(),
    );
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    for (name, view) in a.tensors() {
        assert_eq!(view.data(), b.tensor(&name).unwrap().data(), "{name}");
    }
}

/// `--list-methods` names every method with its paper and recipes.
#[test]
fn list_methods_names_papers_and_recipes() {
    let out = run_ok(&["train", "--list-methods"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "mae",
        "simclr",
        "moco_v2",
        "moco_v3",
        "byol",
        "simsiam",
        "barlow_twins",
        "vicreg",
        "nnclr",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name}: {text}");
    }
    assert!(text.contains("simclr_resnet18_cifar"), "{text}");
    assert!(text.contains("Bootstrap Your Own Latent"), "{text}");
}

/// Recipes that cannot work are refused before any work, naming the key.
#[test]
fn bad_recipes_are_refused_up_front() {
    let tmp = tempdir();
    let one_view = "[data]\nbatch_size = 8\n\n[[views]]\nname = \"v\"\nsize = 32\n\n[model]\narch = \"resnet18\"\n\n[objective]\nmethod = \"simclr\"\n\n[train]\nsteps = 1\n";
    let cases: Vec<(String, &str)> = vec![
        (one_view.to_string(), "takes 2 views"),
        (
            std::fs::read_to_string(recipe(
                tmp.path(),
                "a",
                "method = \"simclr\"",
                RESNET18,
                "optimizer = \"adamw\"\neta = 0.001",
                1,
            ))
            .unwrap(),
            "eta",
        ),
        (
            std::fs::read_to_string(recipe(
                tmp.path(),
                "b",
                "method = \"simclr\"\ntemprature = 0.5",
                RESNET18,
                "",
                1,
            ))
            .unwrap(),
            "temprature",
        ),
        (
            std::fs::read_to_string(recipe(
                tmp.path(),
                "c",
                "method = \"swav2\"",
                RESNET18,
                "",
                1,
            ))
            .unwrap(),
            "swav2",
        ),
        (
            std::fs::read_to_string(recipe(tmp.path(), "d", "method = \"mae\"", RESNET18, "", 1))
                .unwrap(),
            "ViT",
        ),
        (
            std::fs::read_to_string(recipe(
                tmp.path(),
                "e",
                "method = \"byol\"",
                "arch = \"resnet18\"\npatch_size = 4",
                "",
                1,
            ))
            .unwrap(),
            "patch_size",
        ),
    ];
    for (i, (text, needle)) in cases.into_iter().enumerate() {
        let path = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = output_with_watchdog(tessera().args([
            "train",
            "--config",
            path.to_str().unwrap(),
            "--synthetic",
            "--out",
            tmp.path().join(format!("bad{i}")).to_str().unwrap(),
        ]));
        assert!(!out.status.success(), "case {i} ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "case {i}: `{needle}` not in {err}");
        assert!(
            !tmp.path().join(format!("bad{i}")).exists(),
            "case {i} started work"
        );
    }
}

/// Every shipped training recipe, 224-pixel ones included, runs a step on synthetic batches
/// of its shape (micro-batch 2): what a user tries before spending a GPU job on it.
#[test]
fn every_shipped_recipe_runs_on_synthetic_batches() {
    let tmp = tempdir();
    let out = run_ok(&["train", "--list-methods"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let recipes: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("recipes: "))
        .flat_map(|r| r.split(", "))
        .collect();
    assert!(recipes.len() >= 12, "{recipes:?}");
    for recipe in recipes {
        let run = tmp.path().join(recipe);
        let summary = stdout_json(&run_ok(&[
            "train",
            "--config",
            recipe,
            "--synthetic",
            "--batch-size",
            "2",
            "--steps",
            "1",
            "--out",
            run.to_str().unwrap(),
            "--quiet",
            "--json",
        ]));
        assert_eq!(summary["steps_done"], 1, "{recipe}");
        assert!(
            summary["last_loss"].as_f64().unwrap().is_finite(),
            "{recipe}"
        );
    }
}
