//! The workers allocate per batch, not per sample: with the per-sample work itself
//! allocation-free, the allocations made on worker threads grow by less than 0.5 per
//! added sample of batch size, where a single allocation per sample in the worker path
//! (decode hand-off, slot grant, view and mask writes, keys, labels) would add one.
//!
//! What remains per batch: the batch's mask arrays and label/key vectors, which leave with
//! the consumer. Samples, decoded images, keys in flight and view buffers are reused.
//! Only worker threads are counted, and the work is made slow enough that workers never
//! wait for input: async-channel boxes an event listener whenever a thread blocks on a
//! queue, which is not our code and depends on timing. A real decoder's own scratch
//! (zune-jpeg's, libjpeg's) is outside this test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tessera_pipeline::loader::{
    BadSamplePolicy, GraphOptions, Loader, Reject, SampleWork, SlotGrant,
};
use tessera_pipeline::rng::SampleRng;
use tessera_shards::Sample;
use tessera_shards::compression::Compression;
use tessera_shards::writer::ShardFileWriter;

struct CountingAlloc;

/// Allocations made on threads that ran [`CopyWork::decode`]: the loader's workers.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Const-initialised and without a destructor: safe to touch from the allocator.
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if IN_WORKER.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Copies the sample's `.bin` field into a 4x4 view and draws a mask: real per-sample
/// work that allocates nothing, and takes 50 µs, so the workers are the bottleneck.
struct CopyWork;

impl SampleWork for CopyWork {
    type Scratch = [u8; 48];

    fn scratch(&self) -> [u8; 48] {
        [0; 48]
    }

    fn view_shapes(&self) -> Vec<(usize, usize)> {
        vec![(4, 4)]
    }

    fn mask_shapes(&self) -> Vec<Option<(usize, usize, bool)>> {
        vec![Some((4, 1, true))]
    }

    fn decode(
        &self,
        sample: &Sample,
        _: &mut SampleRng,
        scratch: &mut [u8; 48],
    ) -> Result<(), Reject> {
        IN_WORKER.with(|w| w.set(true));
        let start = Instant::now();
        while start.elapsed() < Duration::from_micros(50) {
            std::hint::spin_loop();
        }
        let bytes = sample.field("bin").unwrap_or_default();
        for (i, out) in scratch.iter_mut().enumerate() {
            *out = bytes.get(i % bytes.len().max(1)).copied().unwrap_or(0);
        }
        Ok(())
    }

    fn render(&self, scratch: &mut [u8; 48], rng: &mut SampleRng, slot: &mut SlotGrant) {
        slot.view(0).copy_from_slice(scratch);
        if let Some(mask) = slot.mask(0) {
            let keep = rand::Rng::random_range(rng, 0..4u32);
            mask.mask.fill(1);
            mask.mask[keep as usize] = 0;
            mask.ids_keep[0] = keep;
            for (i, r) in mask.ids_restore.iter_mut().enumerate() {
                *r = i as u32;
            }
        }
    }

    fn label(&self, sample: &Sample) -> i64 {
        sample.field("bin").map_or(-1, |b| i64::from(b[0]))
    }
}

fn write_shards(dir: &std::path::Path) -> Vec<PathBuf> {
    (0..2)
        .map(|s| {
            let path = dir.join(format!("alloc-{s:06}.tar"));
            let mut writer = ShardFileWriter::create(&path, Compression::None).unwrap();
            for i in 0..2000u32 {
                let payload = [(i % 251) as u8; 48];
                writer
                    .write_sample(&format!("s{s}/{i:08}"), &[("bin", &payload)])
                    .unwrap();
            }
            writer.finish().unwrap();
            path
        })
        .collect()
}

/// Allocations per batch over `batches` batches, after `warmup` batches.
fn allocations_per_batch(shards: &[PathBuf], batch_size: usize) -> f64 {
    let options = GraphOptions {
        shards: shards.to_vec(),
        workers: 2,
        seed: 7,
        rank: 0,
        world_size: 1,
        epochs: None,
        resume: None,
        ordered: true,
        prefetch_batches: 2,
        readers: 2,
        // Epochs of 4000 samples: the measured batches stay inside the first epoch (each
        // epoch starts its readers anew), and end in partial batches otherwise.
        drop_last: true,
        batch_size,
        shuffle_buffer: 64,
        policy: BadSamplePolicy::Skip,
        buffer_hook: None,
    };
    let mut loader = Loader::with_work(options, CopyWork).unwrap();
    let (warmup, batches) = (80, 40);
    let mut before = 0;
    for n in 0..warmup + batches {
        if n == warmup {
            before = ALLOCATIONS.load(Ordering::Relaxed);
        }
        let batch = loader.next_batch().unwrap().unwrap();
        assert_eq!(batch.keys.len(), batch_size);
        assert!(batch.keys.iter().all(|k| k.starts_with('s')));
    }
    let made = ALLOCATIONS.load(Ordering::Relaxed) - before;
    drop(loader);
    made as f64 / batches as f64
}

#[test]
fn warm_loader_allocates_per_batch_not_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_shards(dir.path());
    let small = allocations_per_batch(&shards, 4);
    let large = allocations_per_batch(&shards, 32);
    // 28 more samples per batch.
    let per_sample = (large - small) / 28.0;
    assert!(
        per_sample < 0.5,
        "allocations per batch: {small:.1} at 4 samples, {large:.1} at 32 ({per_sample:.2} a sample)"
    );
    eprintln!("allocations per batch: {small:.1} (4 samples), {large:.1} (32 samples)");
}
