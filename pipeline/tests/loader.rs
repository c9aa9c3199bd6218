//! The loader end to end on the shared test shards: every sample once, hostile inputs
//! counted by reason, damaged shards, fail-fast, determinism across worker counts, and
//! shutdown in the middle of a stream (issue #3).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tessera_pipeline::loader::{Loader, LoaderError, LoaderOptions};
use tessera_pipeline::{Batch, Recipe};

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(rel)
}

fn reference_shards() -> Vec<PathBuf> {
    vec![
        testdata("reference-shards/ref-000000.tar"),
        testdata("reference-shards/ref-000001.tar"),
    ]
}

/// A small recipe: one random-resized view with flip and colour jitter, a masked view.
fn recipe(batch_size: usize, shuffle: usize, bad_sample: &str) -> Recipe {
    let text = format!(
        r#"
[data]
batch_size = {batch_size}
shuffle_buffer = {shuffle}
seed = 7
bad_sample = "{bad_sample}"

[[views]]
name = "global"
size = 32
scale = [0.3, 1.0]
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

[[views]]
name = "masked"
size = 32
scale = [0.5, 1.0]
[views.mask]
kind = "random"
ratio = 0.75
patch_size = 8
"#
    );
    Recipe::parse(&text, "test").expect("test recipe parses")
}

fn options(shards: Vec<PathBuf>, recipe: Recipe, workers: usize) -> LoaderOptions {
    let mut o = LoaderOptions::new(shards, recipe);
    o.graph.workers = workers;
    o
}

/// What a test keeps of a batch: the loader's buffers go back to its pool, so a consumer
/// must not hold more than a couple of batches at once.
struct Seen {
    keys: Vec<String>,
    labels: Vec<i64>,
    /// Per view: (len, height, width, pixels of the live samples).
    views: Vec<(usize, usize, usize, Vec<u8>)>,
    masks: Vec<Option<tessera_pipeline::MaskBatch>>,
    state: tessera_pipeline::PipelineState,
}

impl Seen {
    fn of(b: &Batch) -> Seen {
        let n = b.labels.len();
        Seen {
            keys: b.keys.iter().map(str::to_owned).collect(),
            labels: b.labels.clone(),
            views: b
                .views
                .iter()
                .map(|v| {
                    (
                        v.len,
                        v.height,
                        v.width,
                        v.data[..n * v.height * v.width * 3].to_vec(),
                    )
                })
                .collect(),
            masks: b.masks.clone(),
            state: b.state,
        }
    }
}

fn collect(options: LoaderOptions) -> (Vec<Seen>, tessera_pipeline::stats::StatsSnapshot) {
    let mut loader = Loader::start(options).expect("loader starts");
    let mut batches = Vec::new();
    while let Some(batch) = loader.next_batch() {
        batches.push(Seen::of(&batch.expect("no error")));
    }
    let stats = loader.stats();
    (batches, stats)
}

fn manifest_keys() -> BTreeMap<String, i64> {
    let text = std::fs::read_to_string(testdata("reference-shards/manifest.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let samples = json["samples"]
        .as_array()
        .or_else(|| json.as_array())
        .expect("manifest has samples");
    samples
        .iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap().to_string(),
                s["class"]
                    .as_i64()
                    .or_else(|| s["cls"].as_i64())
                    .unwrap_or(-1),
            )
        })
        .collect()
}

#[test]
fn every_sample_once_per_epoch_with_labels_and_shapes() {
    let (batches, stats) = collect(options(reference_shards(), recipe(8, 16, "skip"), 2));
    let expected = manifest_keys();
    let mut seen = BTreeMap::new();
    for batch in &batches {
        assert_eq!(batch.views.len(), 2);
        let n = batch.labels.len();
        assert!(n <= 8 && n > 0);
        assert_eq!(batch.keys.len(), n);
        for (len, height, width, pixels) in &batch.views {
            assert_eq!((*len, *height, *width), (n, 32, 32));
            assert!(pixels.iter().any(|&b| b != 0), "view written");
        }
        assert!(batch.masks[0].is_none());
        let mask = batch.masks[1].as_ref().expect("masked view has masks");
        assert_eq!((mask.len, mask.num_patches, mask.num_keep), (n, 16, 4));
        for s in 0..n {
            let m = &mask.mask[s * 16..(s + 1) * 16];
            assert_eq!(m.iter().filter(|&&x| x == 1).count(), 12);
        }
        for (key, label) in batch.keys.iter().zip(&batch.labels) {
            assert!(
                seen.insert(key.clone(), *label).is_none(),
                "{key} delivered twice"
            );
        }
    }
    assert_eq!(seen, expected, "every sample exactly once, with its class");
    assert_eq!(stats.rejected(), 0);
    assert_eq!(stats.samples, 96);
    assert_eq!(batches.last().unwrap().state.samples_consumed, 96);
}

#[test]
fn two_ranks_split_the_epoch() {
    let mut keys = BTreeSet::new();
    let mut total = 0;
    for rank in 0..2 {
        let mut o = options(reference_shards(), recipe(8, 4, "skip"), 1);
        o.graph.rank = rank;
        o.graph.world_size = 2;
        o.graph.readers = 1;
        let (batches, _) = collect(o);
        for b in &batches {
            total += b.keys.len();
            keys.extend(b.keys.iter().cloned());
        }
    }
    assert_eq!(total, 96);
    assert_eq!(keys.len(), 96);
    let mut o = options(reference_shards(), recipe(8, 4, "skip"), 1);
    o.graph.world_size = 3;
    let err = Loader::start(o).unwrap_err();
    assert!(matches!(err, LoaderError::Order(_)), "{err}");
}

#[test]
fn hostile_files_are_decoded_or_counted_by_reason() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(testdata("hostile/manifest.json")).unwrap())
            .unwrap();
    let mut must_decode = BTreeSet::new();
    let mut must_reject = BTreeSet::new();
    for f in manifest["files"].as_array().unwrap() {
        let file = f["file"].as_str().unwrap();
        let key = file.rsplit_once('.').unwrap().0.to_string();
        let expect = f["expect"].as_str().unwrap();
        let refused = expect.starts_with("refuse");
        if refused || (expect.starts_with("error") && !expect.contains("or partial")) {
            must_reject.insert(key);
        } else if expect.starts_with("decode")
            && !expect.contains(" or ")
            && !expect.contains("error")
            && !file.contains("bomb")
        {
            must_decode.insert(key);
        }
    }
    let total = manifest["files"].as_array().unwrap().len() as u64;
    for workers in [1, 3] {
        let (batches, stats) = collect(options(
            vec![testdata("hostile/shards/hostile-files.tar")],
            recipe(4, 8, "skip"),
            workers,
        ));
        let delivered: BTreeSet<String> = batches
            .iter()
            .flat_map(|b| b.keys.iter().cloned())
            .collect();
        assert_eq!(
            delivered.len() as u64 + stats.rejected(),
            total,
            "{:?}",
            stats.rejects
        );
        for key in &must_decode {
            assert!(
                delivered.contains(key),
                "{key} should decode; rejects {:?}",
                stats.rejects
            );
        }
        for key in &must_reject {
            assert!(!delivered.contains(key), "{key} should be rejected");
        }
        assert!(stats.rejected() >= must_reject.len() as u64);
        assert!(stats.rejects.keys().all(|r| !r.is_empty()));
    }
}

#[test]
fn damaged_and_irregular_shards_give_their_good_samples() {
    let shards = vec![
        testdata("hostile/shards/tar-truncated.tar"),
        testdata("hostile/shards/tar-irregular-samples.tar"),
        testdata("hostile/shards/tar-empty.tar"),
        testdata("hostile/shards/tar-gzip-000000.tar.gz"),
    ];
    let mut o = options(shards, recipe(4, 1, "skip"), 2);
    o.graph.readers = 2;
    let (batches, stats) = collect(o);
    let delivered: BTreeSet<String> = batches
        .iter()
        .flat_map(|b| b.keys.iter().cloned())
        .collect();
    assert!(delivered.contains("t000"), "{delivered:?}");
    assert!(!delivered.contains("t001"));
    for key in ["gz000", "gz001", "gz002", "gz003", "s000", "s006"] {
        assert!(delivered.contains(key), "{key} missing from {delivered:?}");
    }
    assert_eq!(stats.shard_errors, 1, "the truncated shard");
    assert!(
        stats.rejects.get("missing_image").copied().unwrap_or(0) >= 2,
        "{:?}",
        stats.rejects
    );
}

#[test]
fn fail_policy_stops_with_the_sample_named() {
    let mut loader = Loader::start(options(
        vec![testdata("hostile/shards/hostile-files.tar")],
        recipe(4, 1, "fail"),
        2,
    ))
    .unwrap();
    let mut error = None;
    while let Some(batch) = loader.next_batch() {
        if let Err(e) = batch {
            error = Some(e);
            break;
        }
    }
    let error = error.expect("a bad sample stops the run");
    assert!(matches!(error, LoaderError::BadSample { .. }), "{error}");
    assert!(error.to_string().contains("hostile-files.tar"), "{error}");
    assert!(loader.next_batch().is_none());
}

fn fingerprint(batches: &[Seen]) -> Vec<(Vec<String>, Vec<u8>, Vec<u8>)> {
    batches
        .iter()
        .map(|b| {
            let pixels: Vec<u8> = b.views.iter().flat_map(|v| v.3.clone()).collect();
            let masks = b
                .masks
                .iter()
                .flatten()
                .flat_map(|m| m.mask.clone())
                .collect();
            (b.keys.clone(), pixels, masks)
        })
        .collect()
}

#[test]
fn ordered_batches_do_not_depend_on_worker_count() {
    let run = |workers| {
        let mut o = options(reference_shards(), recipe(8, 16, "skip"), workers);
        o.graph.epochs = Some(2);
        let (batches, _) = collect(o);
        fingerprint(&batches)
    };
    let one = run(1);
    let three = run(3);
    assert_eq!(one.len(), 24);
    assert!(one == three, "1 and 3 workers give different batches");
    assert_ne!(one[0].0, one[12].0, "epochs are shuffled differently");
}

#[test]
fn dropping_the_loader_mid_stream_does_not_hang() {
    for workers in [1, 3] {
        let mut o = options(reference_shards(), recipe(4, 8, "skip"), workers);
        o.graph.epochs = None;
        let mut loader = Loader::start(o).unwrap();
        let first = loader.next_batch().unwrap().unwrap();
        let _second = loader.next_batch().unwrap().unwrap();
        drop(loader); // batches still held by us must not block shutdown
        drop(first);
    }
}

#[test]
fn missing_shard_is_an_error_naming_it() {
    let err = Loader::start(options(
        vec![PathBuf::from("/nonexistent/shard-0.tar")],
        recipe(4, 1, "skip"),
        1,
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/shard-0.tar"),
        "{err}"
    );
}

/// `drop_last` over several epochs: each epoch's partial batch is dropped (96 samples in
/// batches of 10: 9 full batches, 6 left over) and delivery goes on with the next epoch.
/// A dropped batch still has a number in the delivery order; the loader once waited for
/// it forever, holding every later batch until the pools ran dry.
#[test]
fn drop_last_skips_each_epochs_partial_batch_and_goes_on() {
    let mut o = options(reference_shards(), recipe(10, 16, "skip"), 2);
    o.graph.epochs = Some(3);
    o.graph.drop_last = true;
    let (batches, stats) = collect(o);
    assert_eq!(batches.len(), 27, "9 full batches in each of 3 epochs");
    assert!(batches.iter().all(|b| b.labels.len() == 10));
    let ends: Vec<_> = batches
        .iter()
        .map(|b| (b.state.epoch, b.state.samples_consumed))
        .collect();
    assert_eq!(ends[8], (0, 90));
    assert_eq!(ends[9].0, 1, "the next epoch follows the dropped batch");
    assert_eq!(stats.samples, 270);
}

/// Batches smaller than the samples in flight: with 2 workers each holding up to 3 decoded
/// samples plus one in hand, 8 samples can be waiting on their slots, spread over 8
/// one-sample batches, with a slow consumer, so workers often find every pool buffer
/// taken. The whole stream still arrives through four epochs (see also
/// `assemble::tests::waiting_for_a_buffer_does_not_block_slot_collection`).
#[test]
fn tiny_batches_with_many_samples_in_flight_do_not_deadlock() {
    for batch_size in [1, 2, 3] {
        let mut o = options(reference_shards(), recipe(batch_size, 4, "skip"), 2);
        o.graph.epochs = Some(4);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut loader = Loader::start(o).expect("loader starts");
            let mut samples = 0;
            while let Some(batch) = loader.next_batch() {
                samples += batch.expect("no error").labels.len();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            let _ = done_tx.send(samples);
        });
        let samples = done_rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("batch size {batch_size}: the loader hung"));
        assert_eq!(samples, 4 * 96, "batch size {batch_size}");
    }
}
