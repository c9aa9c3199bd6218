//! `tessera eval` end to end: a checkpoint trained for two steps on CIFAR-10 images, scored
//! by kNN and linear probe on labelled train and test shards; the errors for a missing
//! checkpoint and for shards without labels.

use std::path::Path;

use crate::util::*;

/// A quick `tessera eval` of `run` (kNN with k = 5, a one-epoch probe) on `shards` for both
/// memory and queries, `extra` flags added; asserts the kNN accuracy is a fraction and
/// returns the report.
pub(crate) fn quick_knn(run: &Path, shards: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--train-shards",
        shards,
        "--val-shards",
        shards,
        "--knn-k",
        "5",
        "--probe-epochs",
        "1",
        "--workers",
        "2",
        "--json",
        "--quiet",
    ];
    args.extend(extra);
    let report = stdout_json(&run_ok(&args));
    let acc = report["knn_top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{report}");
    report
}

/// CIFAR-10 images of `split` matching `member_glob` (e.g. `train/*/00[0-2]?.jpg`), sharded
/// 50 a shard with `--labels labels`; returns the shard glob.
fn cifar_split_shards(dir: &Path, split: &str, member_glob: &str, labels: &str) -> String {
    crate::util::cifar_shards(dir, split, member_glob, labels, 50)
}

/// Two steps of the builtin CIFAR recipe: weights that are a checkpoint, not a result.
fn trained_run(dir: &Path, shards: &str) -> std::path::PathBuf {
    let run = dir.join("run");
    run_ok(&[
        "train",
        "--config",
        "mae_vit_tiny_cifar",
        "--shards",
        shards,
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "16",
        "--workers",
        "2",
        "--picture-every",
        "0",
        "--quiet",
    ]);
    run
}

#[test]
fn eval_reports_knn_and_linear_probe_accuracy() {
    let tmp = tempdir();
    // 30 training and 10 test images a class.
    let train = cifar_split_shards(tmp.path(), "train", "train/*/00[0-2]?.jpg", "folders");
    let val = cifar_split_shards(tmp.path(), "test", "test/*/000?.jpg", "folders");
    let run = trained_run(tmp.path(), &train);

    let out = run_ok(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--train-shards",
        &train,
        "--val-shards",
        &val,
        "--max-train",
        "250",
        "--probe-epochs",
        "3",
        "--resize",
        "32",
        "--workers",
        "2",
        "--json",
        "--quiet",
    ]);
    let report = stdout_json(&out);
    assert_eq!(
        report["train_images"], 250,
        "--max-train cuts the train set"
    );
    assert_eq!(report["val_images"], 100, "every test image");
    assert_eq!(report["feature_dim"], 192, "ViT-Tiny width");
    assert_eq!(report["num_classes"], 10);
    assert_eq!(report["knn_k"], 20);
    assert_eq!(report["step"], 2);
    assert_eq!(report["skipped_images"], 0);
    for key in [
        "knn_top1",
        "knn_top5",
        "linear_probe_top1",
        "linear_probe_train_top1",
    ] {
        let acc = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {report}"));
        assert!((0.0..=1.0).contains(&acc), "{key} = {acc}");
    }
    assert!(report["knn_top5"].as_f64() >= report["knn_top1"].as_f64());
    assert!(report["seconds"].as_f64().unwrap() > 0.0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kNN") && stderr.contains("linear probe"),
        "{stderr}"
    );

    // Shards made without labels: refused up front, naming the shard and what is missing.
    let unlabelled = cifar_split_shards(tmp.path(), "test", "test/cat/000?.jpg", "none");
    let out = output_with_watchdog(tessera().args([
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--train-shards",
        &train,
        "--val-shards",
        &unlabelled,
    ]));
    assert!(!out.status.success(), "unlabelled shards must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shards-test-none") && stderr.contains("needs class labels"),
        "{stderr}"
    );

    // No checkpoint: the directory is named.
    let empty = tmp.path().join("no-run");
    std::fs::create_dir_all(&empty).unwrap();
    let out = output_with_watchdog(tessera().args([
        "eval",
        "--checkpoint",
        empty.to_str().unwrap(),
        "--train-shards",
        &train,
        "--val-shards",
        &val,
    ]));
    assert!(!out.status.success(), "a missing checkpoint must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no complete checkpoint") && stderr.contains("no-run"),
        "{stderr}"
    );
}
