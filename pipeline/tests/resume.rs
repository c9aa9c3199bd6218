//! Exact resume (issue #3): run N batches, keep the state of the last one, start a new
//! loader from it, and the batches that follow equal those of the uninterrupted run,
//! also across an epoch boundary and with a shuffle buffer that held samples.

use std::path::{Path, PathBuf};

use tessera_pipeline::loader::{Loader, LoaderOptions};
use tessera_pipeline::{Batch, PipelineState, Recipe};

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(rel)
}

fn options(workers: usize, resume: Option<PipelineState>) -> LoaderOptions {
    let recipe = Recipe::parse(
        r#"
[data]
batch_size = 7
shuffle_buffer = 20
seed = 3

[[views]]
name = "image"
size = 24
scale = [0.2, 1.0]
[[views.transforms]]
op = "horizontal_flip"
p = 0.5
[views.mask]
kind = "random"
ratio = 0.5
patch_size = 8
"#,
        "resume-test",
    )
    .unwrap();
    let shards = vec![
        testdata("reference-shards/ref-000000.tar"),
        testdata("reference-shards/ref-000001.tar"),
        testdata("hostile/shards/tar-irregular-samples.tar"),
    ];
    let mut o = LoaderOptions::new(shards, recipe);
    o.graph.workers = workers;
    o.graph.seed = 3;
    o.graph.epochs = Some(2);
    o.graph.resume = resume;
    o
}

type Print = (Vec<String>, Vec<u8>, Vec<u32>, PipelineState);

fn print(b: &Batch) -> Print {
    let n = b.labels.len();
    let v = &b.views[0];
    let masks = b.masks[0].as_ref().unwrap();
    (
        b.keys.iter().map(str::to_owned).collect(),
        v.data[..n * 24 * 24 * 3].to_vec(),
        masks.ids_restore.clone(),
        b.state,
    )
}

fn run(workers: usize, resume: Option<PipelineState>) -> Vec<Print> {
    let mut loader = Loader::start(options(workers, resume)).unwrap();
    let mut out = Vec::new();
    while let Some(b) = loader.next_batch() {
        out.push(print(&b.unwrap()));
    }
    out
}

#[test]
fn resumed_stream_equals_the_uninterrupted_one() {
    let full = run(2, None);
    // 96 + 6 usable samples a epoch (2 of the irregular shard lack an image): 15 batches.
    assert!(full.len() >= 28, "{}", full.len());
    for cut in [1usize, 5, 13, 14, 15, 20] {
        let state = full[cut - 1].3;
        // Save and load through JSON, as a checkpoint would.
        let state: PipelineState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        let rest = run(if cut % 2 == 0 { 1 } else { 3 }, Some(state));
        assert_eq!(rest.len(), full.len() - cut, "cut after batch {cut}");
        for (i, (a, b)) in rest.iter().zip(&full[cut..]).enumerate() {
            assert!(
                a == b,
                "cut after batch {cut}: batch {i} differs ({:?} vs {:?})",
                a.0,
                b.0
            );
        }
    }
}

#[test]
fn state_of_another_run_is_refused() {
    let state = PipelineState {
        seed: 99,
        epoch: 0,
        rank: 0,
        world_size: 1,
        samples_consumed: 3,
    };
    let err = Loader::start(options(1, Some(state))).unwrap_err();
    assert!(err.to_string().contains("seed 99"), "{err}");
}
