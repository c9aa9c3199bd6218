//! `tessera inspect` and `tessera index` end to end (issue #2).

use std::collections::BTreeMap;

use crate::util::{output_with_watchdog, run_ok, stdout_json, tempdir, tessera, testdata};

#[test]
fn inspect_counts_the_reference_shards() {
    let pattern = format!(
        "{}/ref-{{000000..000001}}.tar",
        testdata("reference-shards").display()
    );
    let report = stdout_json(&run_ok(&["inspect", "--json", "--verify", &pattern]));
    assert_eq!(report["samples"], 96);
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for shard in shards {
        assert_eq!(shard["samples"], 48);
        assert!(shard["path"].as_str().unwrap().ends_with(".tar"));
    }
    assert_eq!(
        report["fields"],
        serde_json::json!({"cls": 96, "jpg": 96, "json": 96})
    );
    assert_eq!(report["failures"], serde_json::json!([]));
}

/// Damaged shards are reported with their offset; the others are still inspected, and
/// the exit status says something was wrong.
#[test]
fn inspect_reports_damaged_shards_without_stopping() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(testdata("hostile/manifest.json")).unwrap()).unwrap();
    let pattern = format!("{}/tar-*", testdata("hostile/shards").display());
    let out = output_with_watchdog(tessera().args(["inspect", "--json", &pattern]));
    assert!(
        !out.status.success(),
        "a truncated shard must fail the check"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_name: BTreeMap<String, &serde_json::Value> = report["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let path = s["path"].as_str().unwrap();
            (path.rsplit('/').next().unwrap().to_string(), s)
        })
        .collect();
    for entry in manifest["shards"].as_array().unwrap() {
        let name = entry["file"].as_str().unwrap();
        if name == "hostile-files.tar" {
            continue;
        }
        let seen = entry["reference_reader_saw"]["samples"].as_array().unwrap();
        let shard = by_name[name];
        assert_eq!(shard["samples"], seen.len(), "{name}: {shard}");
        if name == "tar-truncated.tar" {
            let error = shard["error"].as_str().unwrap();
            assert!(
                error.contains("truncated") && error.contains("byte"),
                "{error}"
            );
        } else {
            assert!(shard.get("error").is_none(), "{name}: {shard}");
        }
    }
    assert_eq!(report["damaged"].as_array().unwrap().len(), 1);
}

/// `--verify` decodes every image field and names the ones that fail.
#[test]
fn inspect_verify_lists_images_that_do_not_decode() {
    let shard = testdata("hostile/shards/hostile-files.tar");
    let out = output_with_watchdog(tessera().args([
        "inspect",
        "--json",
        "--verify",
        &shard.display().to_string(),
    ]));
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: BTreeMap<String, String> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["key"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(failed["zero_bytes"], "empty");
    assert_eq!(failed["not_an_image"], "not_an_image");
    assert_eq!(failed["truncated_50pct"], "corrupt");
    assert_eq!(failed["bomb_jpeg_65500x65500"], "too_many_pixels");
    assert!(
        !failed.contains_key("baseline_ref") && !failed.contains_key("png_named_jpg"),
        "{failed:?}"
    );
}

#[test]
fn index_writes_an_index_per_shard() {
    let tmp = tempdir();
    for name in ["ref-000000.tar", "ref-000001.tar"] {
        std::fs::copy(
            testdata("reference-shards").join(name),
            tmp.path().join(name),
        )
        .unwrap();
    }
    std::fs::copy(
        testdata("hostile/shards/tar-truncated.tar"),
        tmp.path().join("zz-truncated.tar"),
    )
    .unwrap();
    let out = output_with_watchdog(tessera().args([
        "index",
        "--json",
        &format!("{}/*.tar", tmp.path().display()),
    ]));
    assert!(
        !out.status.success(),
        "the truncated shard cannot be indexed"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["indexed"].as_array().unwrap().len(), 2);
    assert_eq!(report["failed"].as_array().unwrap().len(), 1);
    for name in ["ref-000000.tar", "ref-000001.tar"] {
        let index = tessera_shards::index::ShardIndex::load_for(&tmp.path().join(name))
            .unwrap()
            .unwrap();
        assert_eq!(index.samples.len(), 48);
    }
    assert!(!tmp.path().join("zz-truncated.tar.idx").exists());
}
