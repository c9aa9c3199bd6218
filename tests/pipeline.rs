//! End-to-end tests of `tessera profile` and `tessera preview` (issue #3).

use crate::util::{output_with_watchdog, run_ok, stdout_json, tempdir, tessera, testdata};

fn reference_shards() -> String {
    format!(
        "{}/ref-{{000000..000001}}.tar",
        testdata("reference-shards").display()
    )
}

/// A small recipe file so the tests run quickly in debug builds.
fn small_recipe(dir: &std::path::Path) -> String {
    let path = dir.join("small.toml");
    std::fs::write(
        &path,
        r#"
[data]
batch_size = 8
shuffle_buffer = 16

[[views]]
name = "global"
size = 32
scale = [0.3, 1.0]
[[views.transforms]]
op = "horizontal_flip"
[views.mask]
kind = "random"
ratio = 0.75
patch_size = 8
"#,
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn profile_json_reports_throughput_stages_and_bottleneck() {
    let dir = tempdir();
    let recipe = small_recipe(dir.path());
    let shards = reference_shards();
    let out = run_ok(&[
        "profile",
        "--recipe",
        &recipe,
        "--shards",
        &shards,
        "--workers",
        "2",
        "--json",
    ]);
    let r = stdout_json(&out);
    assert_eq!(r["images"], 96, "{r}");
    assert!(r["images_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(r["rejected"]["total"], 0);
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
    let stages = r["stages"].as_array().unwrap();
    assert!(stages.len() >= 4);
    for s in stages {
        assert!(s["name"].is_string());
        let busy = s["busy_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&busy), "{s}");
    }
    assert!(!r["bottleneck"]["stage"].as_str().unwrap().is_empty());
    assert!(!r["bottleneck"]["message"].as_str().unwrap().is_empty());
}

#[test]
fn profile_counts_hostile_files_by_reason_and_finishes() {
    let dir = tempdir();
    let recipe = small_recipe(dir.path());
    let shards = testdata("hostile/shards/hostile-files.tar")
        .display()
        .to_string();
    let out = run_ok(&[
        "profile",
        "--recipe",
        &recipe,
        "--shards",
        &shards,
        "--workers",
        "3",
        "--json",
    ]);
    let r = stdout_json(&out);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(testdata("hostile/manifest.json")).unwrap())
            .unwrap();
    let files = manifest["files"].as_array().unwrap().len() as u64;
    let rejected = r["rejected"]["total"].as_u64().unwrap();
    assert_eq!(r["images"].as_u64().unwrap() + rejected, files, "{r}");
    let by_reason = r["rejected"]["by_reason"].as_object().unwrap();
    assert_eq!(
        by_reason.values().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        rejected
    );
    // zero_bytes, not_an_image, truncated_headers and the 65500x65500 bomb at least.
    assert!(rejected >= 4, "{r}");
}

#[test]
fn profile_decode_only_and_table_output() {
    let dir = tempdir();
    let recipe = small_recipe(dir.path());
    let shards = reference_shards();
    let out = run_ok(&[
        "profile",
        "--recipe",
        &recipe,
        "--shards",
        &shards,
        "--decode-only",
        "--batches",
        "3",
        "--json",
    ]);
    let r = stdout_json(&out);
    assert_eq!(r["mode"], "decode-only");
    assert_eq!(r["batches"], 3);
    let out = run_ok(&[
        "profile",
        "--recipe",
        &recipe,
        "--shards",
        &shards,
        "--seconds",
        "1",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("images/s") && table.contains("bottleneck:"),
        "{table}"
    );
}

#[test]
fn profile_names_a_missing_shard() {
    let out = output_with_watchdog(tessera().args([
        "profile",
        "--recipe",
        "mae",
        "--shards",
        "/nonexistent/x-000000.tar",
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x-000000.tar"));
}

#[test]
fn preview_writes_a_grid_of_views() {
    let dir = tempdir();
    let png = dir.path().join("mae.png");
    let shards = reference_shards();
    run_ok(&[
        "preview",
        "--recipe",
        "mae",
        "--shards",
        &shards,
        "--out",
        png.to_str().unwrap(),
        "--samples",
        "3",
    ]);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    // IHDR: width and height, big-endian at bytes 16..24: 1 view column, 3 rows of 160 px.
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!(height, 6 + 3 * (160 + 6));
    assert!(!dir.path().join("mae.png.tmp").exists());
}
