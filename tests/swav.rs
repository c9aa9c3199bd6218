//! SwAV through `tessera train` and `eval` (issue #10): multi-crop training on CIFAR-10
//! shards with finite losses and codes spread over several prototypes, kNN of the
//! checkpoint, and an exact resume with the queue on and the prototypes frozen at first.

use std::path::{Path, PathBuf};

use crate::train::train_json as train;
use crate::util::*;

/// 96 CIFAR-10 training images (a few a class) in shards of 48.
fn cifar(dir: &Path) -> String {
    cifar_shards(dir, "train", "train/*/000?.jpg", "folders", 48)
}

/// A multi-crop CIFAR recipe (2 x 32 + 2 x 16) on a ResNet-18 (CIFAR stem) with SwAV's
/// `objective` keys, `steps` long.
fn recipe(dir: &Path, name: &str, objective: &str, steps: u64) -> PathBuf {
    let view = |name: &str, size: u32, scale: &str| {
        format!(
            "[[views]]\nname = \"{name}\"\ncount = 2\nsize = {size}\nscale = {scale}\n\
             [[views.transforms]]\nop = \"horizontal_flip\"\np = 0.5\n\
             [[views.transforms]]\nop = \"color_jitter\"\np = 0.8\nbrightness = 0.8\n\
             contrast = 0.8\nsaturation = 0.8\nhue = 0.2\n"
        )
    };
    let text = format!(
        "[data]\nbatch_size = 8\nimage_fields = [\"jpg\"]\nlabel_field = \"cls\"\n\
         shuffle_buffer = 32\nseed = 3\n\n{}\n{}\n\
         [model]\narch = \"resnet18\"\ncifar_stem = true\n\n\
         [objective]\nmethod = \"swav\"\nproj_hidden_dim = 64\nproj_output_dim = 32\n{objective}\n\n\
         [train]\nsteps = {steps}\nwarmup_steps = 1\ncheckpoint_every = 2\nkeep_checkpoints = 2\n\n\
         [optim]\noptimizer = \"lars\"\nbase_lr = 0.6\nweight_decay = 1e-6\neta = 0.02\n",
        view("global", 32, "[0.14, 1.0]"),
        view("local", 16, "[0.05, 0.14]"),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// SwAV trains a few multi-crop steps: finite losses, the high-resolution views' best
/// prototypes spread over several of the 30 (a collapsed model would use one), and the
/// checkpoint scores through `tessera eval`.
#[test]
fn swav_trains_multi_crop_with_spread_codes_and_evaluates() {
    let tmp = tempdir();
    let shards = cifar(tmp.path());
    let recipe = recipe(
        tmp.path(),
        "swav",
        "num_prototypes = 30\nfreeze_prototypes_niters = 1",
        4,
    );
    let run = tmp.path().join("run");
    let summary = train(&recipe, &shards, &run, &[]);
    assert_eq!(summary["steps_done"], 4);
    let lines = crate::train::metrics(&run);
    assert_eq!(lines.len(), 4);
    for line in &lines {
        let loss = line["loss"].as_f64().unwrap();
        assert!(loss.is_finite(), "{line}");
        // 16 rows (2 global views x 8) over 30 prototypes.
        let used = line["parts"]["prototypes_used"].as_f64().unwrap();
        assert!((3.0..=16.0).contains(&used), "{line}");
        assert_eq!(line["parts"]["queue_used"], 0.0, "{line}");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["method"]["name"], "swav");
    assert_eq!(config["method"]["crops_for_assign"], 2);

    crate::eval::quick_knn(&run, &shards, &[]);
}

/// Stopping after 3 steps and resuming gives the uninterrupted run's losses bit for bit
/// while the queue (16 rows, filled from step 0, in the codes from step 2) and the frozen
/// prototypes (steps 0..2) are in play: both live in the checkpoint.
#[test]
fn swav_resumes_exactly_with_the_queue_on() {
    let tmp = tempdir();
    let shards = cifar(tmp.path());
    let objective = "num_prototypes = 20\nqueue_length = 16\nqueue_start_epoch = 0\n\
                     freeze_prototypes_niters = 2";
    let recipe = recipe(tmp.path(), "swav", objective, 6);
    let lines = |run: &Path| -> Vec<String> {
        crate::train::metrics(run)
            .iter()
            .map(|v| format!("{} {} {}", v["step"], v["loss"], v["parts"]))
            .collect()
    };
    let straight = tmp.path().join("straight");
    train(&recipe, &shards, &straight, &[]);
    let queue_used: Vec<f64> = crate::train::metrics(&straight)
        .iter()
        .map(|v| v["parts"]["queue_used"].as_f64().unwrap())
        .collect();
    assert_eq!(queue_used, [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);

    let resumed = tmp.path().join("resumed");
    let first = train(&recipe, &shards, &resumed, &["--stop-after", "3"]);
    assert_eq!(first["stopped"], "step_limit");
    let second = train(&recipe, &shards, &resumed, &["--resume"]);
    assert_eq!(second["first_step"], 3);
    assert_eq!(lines(&straight), lines(&resumed));
}
