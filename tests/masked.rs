//! The masked-image methods through `tessera train` and `eval` (issue #10): SimMIM,
//! data2vec and MSN each train a few steps of a tiny ViT on CIFAR-10 shards with a sane
//! loss, their checkpoints score through `tessera eval`, and a data2vec run resumes exactly
//! (teacher included).

use std::path::{Path, PathBuf};

use crate::util::*;

/// 96 CIFAR-10 training images (a few a class) in shards of 48.
fn cifar(dir: &Path) -> String {
    crate::util::cifar_shards(dir, "train", "train/*/000?.jpg", "folders", 48)
}

/// A tiny ViT: 2 blocks of 32 at 32 px, patch 8 (a 4x4 grid).
const TINY_VIT: &str = "arch = \"vit_tiny_patch16_224\"\nimg_size = 32\npatch_size = 8\nembed_dim = 32\ndepth = 2\nnum_heads = 2";

const FLIP: &str = "[[views.transforms]]\nop = \"horizontal_flip\"\np = 0.5\n";

/// The views of each method at 32 px: one masked view (SimMIM's coarse cells, data2vec's
/// blocks), or MSN's target, anchor and two 16-pixel focal views with dropped patches.
fn views(method: &str) -> String {
    let view = |name: &str, count: usize, size: usize, mask: &str| {
        format!(
            "[[views]]\nname = \"{name}\"\ncount = {count}\nsize = {size}\nscale = [0.3, 1.0]\n\
             interpolation = \"bilinear\"\n{FLIP}{mask}\n"
        )
    };
    match method {
        "simmim" => view(
            "image",
            1,
            32,
            "[views.mask]\nkind = \"simmim\"\nratio = 0.6\nmask_patch_size = 16\nmodel_patch_size = 8\n",
        ),
        "data2vec" => view(
            "image",
            1,
            32,
            "[views.mask]\nkind = \"block\"\nratio = 0.5\npatch_size = 8\nmin_num_patches = 2\n",
        ),
        _ => {
            let drop = "[views.mask]\nkind = \"random\"\nratio = 0.25\npatch_size = 8\n";
            view("target", 1, 32, "") + &view("anchor", 1, 32, drop) + &view("focal", 2, 16, drop)
        }
    }
}

/// A recipe of `method` on the tiny ViT, `steps` long.
fn recipe(dir: &Path, method: &str, objective: &str, steps: u64) -> PathBuf {
    let text = format!(
        r#"[data]
batch_size = 8
image_fields = ["jpg"]
label_field = "cls"
shuffle_buffer = 32
seed = 5

{views}
[model]
{TINY_VIT}

[objective]
method = "{method}"
{objective}

[train]
steps = {steps}
warmup_steps = 1
checkpoint_every = 2
keep_checkpoints = 2

[optim]
lr = 1e-3
weight_decay = 0.05
betas = [0.9, 0.999]
clip_grad = 3.0
"#,
        views = views(method)
    );
    let path = dir.join(format!("{method}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The objective keys of each method's test recipe.
fn objective(method: &str) -> &'static str {
    match method {
        "data2vec" => "average_top_k_layers = 2",
        "msn" => "num_prototypes = 16\nproj_hidden_dim = 32\nproj_output_dim = 16",
        _ => "",
    }
}

/// Every line's loss, as a number.
fn loss_values(run: &Path) -> Vec<f64> {
    crate::train::metrics(run)
        .iter()
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// `step loss` of every line, for exact comparisons.
fn losses(run: &Path) -> Vec<String> {
    crate::train::metrics(run)
        .iter()
        .map(|v| format!("{} {}", v["step"], v["loss"]))
        .collect()
}

/// Each method trains 8 steps on CIFAR-10 shards with finite, non-negative losses (whether
/// they are the papers' losses is checked against goldens in the library), records its method in
/// `config.json`, and its checkpoint's encoder scores through `tessera eval`.
#[test]
fn every_masked_method_trains_and_evaluates() {
    let tmp = tempdir();
    let shards = cifar(tmp.path());
    for method in ["simmim", "data2vec", "msn"] {
        let recipe = recipe(tmp.path(), method, objective(method), 8);
        let run = tmp.path().join(method);
        let summary = crate::train::train_json(&recipe, &shards, &run, &[]);
        assert_eq!(summary["steps_done"], 8, "{method}");
        let values = loss_values(&run);
        assert_eq!(values.len(), 8, "{method}");
        assert!(
            values.iter().all(|v| v.is_finite() && *v >= 0.0),
            "{method}: {values:?}"
        );
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["method"]["name"], method);

        crate::eval::quick_knn(&run, &shards, &[]);
    }
}

/// Stopping a data2vec run after 3 steps and resuming gives the uninterrupted run's losses
/// bit for bit: the EMA teacher (and its momentum schedule) is restored with the student.
#[test]
fn data2vec_resumes_exactly() {
    let tmp = tempdir();
    let shards = cifar(tmp.path());
    let recipe = recipe(tmp.path(), "data2vec", objective("data2vec"), 6);
    let train = |out: &Path, extra: &[&str]| crate::train::train_json(&recipe, &shards, out, extra);
    let straight = tmp.path().join("straight");
    train(&straight, &[]);
    let resumed = tmp.path().join("resumed");
    let first = train(&resumed, &["--stop-after", "3"]);
    assert_eq!(first["stopped"], "step_limit");
    let second = train(&resumed, &["--resume"]);
    assert_eq!(second["first_step"], 3);
    assert_eq!(losses(&straight), losses(&resumed));
}

/// Masked recipes that cannot work are refused before any work, naming the problem.
#[test]
fn bad_masked_recipes_are_refused_up_front() {
    let tmp = tempdir();
    let base = std::fs::read_to_string(recipe(tmp.path(), "simmim", "", 1)).unwrap();
    let cases = [
        // SimMIM without a mask on its view.
        (
            base.replace(
                "[views.mask]\nkind = \"simmim\"\nratio = 0.6\nmask_patch_size = 16\nmodel_patch_size = 8\n",
                "",
            ),
            "needs its view masked",
        ),
        // The mask drawn on another grid than the ViT's patches.
        (
            base.replace("model_patch_size = 8", "model_patch_size = 4"),
            "patch_size",
        ),
        // data2vec averaging more blocks than the encoder has.
        (
            std::fs::read_to_string(recipe(
                tmp.path(),
                "data2vec",
                "average_top_k_layers = 3",
                1,
            ))
            .unwrap(),
            "average_top_k_layers",
        ),
        // A derived key set by hand.
        (
            std::fs::read_to_string(recipe(tmp.path(), "msn", "target_view = 1", 1)).unwrap(),
            "target_view",
        ),
    ];
    for (i, (text, needle)) in cases.into_iter().enumerate() {
        let path = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out_dir = tmp.path().join(format!("bad{i}"));
        let out = output_with_watchdog(tessera().args([
            "train",
            "--config",
            path.to_str().unwrap(),
            "--synthetic",
            "--out",
            out_dir.to_str().unwrap(),
        ]));
        assert!(!out.status.success(), "case {i} ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "case {i}: `{needle}` not in {err}");
        assert!(!out_dir.exists(), "case {i} started work");
    }
}
