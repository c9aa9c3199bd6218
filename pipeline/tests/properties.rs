//! Property tests of the sample stream (issue 14), through the real loader with a
//! trivial per-sample work (the stream's order does not depend on what work does):
//!
//! - every epoch yields every sample exactly once, summed over ranks, for any number of
//!   shards (empty ones included), ranks, workers, readers, shuffle buffer sizes,
//!   batch sizes and seeds;
//! - resuming from the state of any batch gives exactly the batches the uninterrupted
//!   run gave after it, with any worker count.
//!
//! Case counts keep the whole file to a few seconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tessera_pipeline::PipelineState;
use tessera_pipeline::loader::{
    BadSamplePolicy, GraphOptions, Loader, Reject, SampleWork, SlotGrant,
};
use tessera_pipeline::rng::SampleRng;
use tessera_shards::Sample;
use tessera_shards::compression::Compression;
use tessera_shards::writer::ShardFileWriter;

/// Keys are what is checked: one 1x1 view whose pixel is the sample's first byte.
struct KeyWork;

impl SampleWork for KeyWork {
    type Scratch = u8;

    fn scratch(&self) -> u8 {
        0
    }

    fn view_shapes(&self) -> Vec<(usize, usize)> {
        vec![(1, 1)]
    }

    fn mask_shapes(&self) -> Vec<Option<(usize, usize, bool)>> {
        vec![None]
    }

    fn decode(&self, sample: &Sample, _: &mut SampleRng, scratch: &mut u8) -> Result<(), Reject> {
        *scratch = sample
            .field("bin")
            .and_then(|b| b.first().copied())
            .unwrap_or(0);
        Ok(())
    }

    fn render(&self, scratch: &mut u8, _: &mut SampleRng, slot: &mut SlotGrant) {
        slot.view(0).fill(*scratch);
    }

    fn label(&self, _: &Sample) -> i64 {
        -1
    }
}

/// Writes shards of the given sizes (with indexes, which resume seeks with); returns
/// their paths and every key.
fn write_shards(
    dir: &Path,
    sizes: &[usize],
    compression: Compression,
) -> (Vec<PathBuf>, Vec<String>) {
    let mut keys = Vec::new();
    let paths = sizes
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            let path = dir.join(format!("p-{s:06}.tar{}", compression.extension()));
            let mut writer = ShardFileWriter::create(&path, compression)
                .unwrap()
                .with_index(true);
            for i in 0..n {
                let key = format!("s{s}/{i:04}");
                writer
                    .write_sample(&key, &[("bin", &[i as u8; 3])])
                    .unwrap();
                keys.push(key);
            }
            writer.finish().unwrap();
            path
        })
        .collect();
    (paths, keys)
}

#[derive(Debug, Clone)]
struct Setup {
    sizes: Vec<usize>,
    compression: Compression,
    world_size: u32,
    workers: usize,
    readers: usize,
    shuffle_buffer: usize,
    batch_size: usize,
    seed: u64,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::collection::vec(0usize..9, 1..7),
        prop::sample::select(vec![
            Compression::None,
            Compression::Zstd { level: 1 },
            Compression::Gzip { level: 1 },
        ]),
        1u32..4,
        1usize..4,
        1usize..4,
        0usize..24,
        1usize..7,
        any::<u64>(),
    )
        .prop_map(
            |(sizes, compression, world, workers, readers, shuffle, batch, seed)| Setup {
                // Every rank needs a shard (fewer is a typed error, tested elsewhere).
                world_size: world.min(sizes.len() as u32),
                sizes,
                compression,
                workers,
                readers,
                shuffle_buffer: shuffle,
                batch_size: batch,
                seed,
            },
        )
}

fn options(setup: &Setup, shards: &[PathBuf], rank: u32, epochs: u64) -> GraphOptions {
    GraphOptions {
        shards: shards.to_vec(),
        workers: setup.workers,
        seed: setup.seed,
        rank,
        world_size: setup.world_size,
        epochs: Some(epochs),
        resume: None,
        ordered: true,
        prefetch_batches: 2,
        readers: setup.readers,
        drop_last: false,
        batch_size: setup.batch_size,
        shuffle_buffer: setup.shuffle_buffer,
        policy: BadSamplePolicy::Skip,
        buffer_hook: None,
    }
}

/// One batch as seen by the consumer: keys, pixels and the state after it.
type Seen = (Vec<String>, Vec<u8>, PipelineState);

fn run(options: GraphOptions) -> Vec<Seen> {
    let mut loader = Loader::with_work(options, KeyWork).unwrap();
    let mut out = Vec::new();
    while let Some(batch) = loader.next_batch() {
        let batch = batch.unwrap();
        let n = batch.keys.len();
        out.push((
            batch.keys.iter().map(str::to_owned).collect(),
            batch.views[0].data[..n * 3].to_vec(),
            batch.state,
        ));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn every_epoch_yields_every_sample_exactly_once(setup in setup()) {
        let dir = tempfile::tempdir().unwrap();
        let (shards, keys) = write_shards(dir.path(), &setup.sizes, setup.compression);
        let epochs = 2;
        // epoch -> key -> times seen, over all ranks.
        let mut seen: BTreeMap<u64, BTreeMap<String, usize>> = BTreeMap::new();
        for rank in 0..setup.world_size {
            for (batch_keys, pixels, state) in run(options(&setup, &shards, rank, epochs)) {
                prop_assert!(!batch_keys.is_empty() && batch_keys.len() <= setup.batch_size);
                prop_assert_eq!(state.rank, rank);
                for (key, px) in batch_keys.iter().zip(pixels.chunks(3)) {
                    // The pixel came from this key's sample (index in shard = first byte).
                    let index: u8 = key[key.find('/').unwrap() + 1..].parse::<u32>().unwrap() as u8;
                    prop_assert_eq!(px, &[index; 3][..]);
                    *seen.entry(state.epoch).or_default().entry(key.clone()).or_default() += 1;
                }
            }
        }
        let expected: BTreeMap<String, usize> = keys.iter().map(|k| (k.clone(), 1)).collect();
        for epoch in 0..epochs {
            let got = seen.remove(&epoch).unwrap_or_default();
            prop_assert_eq!(&got, &expected, "epoch {}", epoch);
        }
        prop_assert!(seen.is_empty(), "batches of other epochs: {:?}", seen.keys());
    }

    #[test]
    fn resume_from_any_batch_equals_the_uninterrupted_stream(
        setup in setup(),
        cut in any::<prop::sample::Index>(),
        rank in any::<prop::sample::Index>(),
        workers_after in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (shards, _) = write_shards(dir.path(), &setup.sizes, setup.compression);
        let rank = rank.index(setup.world_size as usize) as u32;
        let full = run(options(&setup, &shards, rank, 2));
        if full.is_empty() {
            return Ok(());
        }
        let cut = cut.index(full.len()) + 1;
        // Through JSON, as a checkpoint stores it.
        let state: PipelineState =
            serde_json::from_str(&serde_json::to_string(&full[cut - 1].2).unwrap()).unwrap();
        let mut resumed = options(&setup, &shards, rank, 2);
        resumed.resume = Some(state);
        resumed.workers = workers_after;
        let rest = run(resumed);
        prop_assert_eq!(&rest[..], &full[cut..], "cut after batch {} of {}", cut, full.len());
    }
}

/// Issue 14 (shrunk by `every_epoch_yields_every_sample_exactly_once`): two ranks, two
/// readers, two shards. Each rank has one shard, so one reader; the merge was sized from
/// the whole list (two) and the sequencer thread panicked asking for the second reader.
#[test]
fn a_rank_with_fewer_shards_than_readers_reads_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (shards, keys) = write_shards(dir.path(), &[0, 1], Compression::None);
    let setup = Setup {
        sizes: vec![0, 1],
        compression: Compression::None,
        world_size: 2,
        workers: 1,
        readers: 2,
        shuffle_buffer: 0,
        batch_size: 1,
        seed: 0,
    };
    let mut seen: Vec<String> = (0..2)
        .flat_map(|rank| run(options(&setup, &shards, rank, 2)))
        .flat_map(|(k, _, _)| k)
        .collect();
    seen.sort();
    assert_eq!(seen, [keys.clone(), keys].concat());
}
