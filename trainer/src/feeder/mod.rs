//! Device feeding: turns the pipeline's u8 batches into device tensors on a dedicated
//! uploader thread, so the next batch is on the device while the current step computes.
//!
//! ```text
//! loader.next_batch() ─► uploader thread: u8 NHWC ─► device (U8) ─► f32, NCHW, normalised
//!                        masks ─► Int / Float tensors ─► bounded queue (depth 2-3) ─► train_step
//! ```
//!
//! Pixels cross the host→device boundary as u8 (a quarter of the bytes of f32); the cast,
//! the NHWC → NCHW permute and the ImageNet normalisation run on the device. The queue is
//! a `std::sync::mpsc::sync_channel`: when the step is slower than the pipeline, the uploader
//! blocks on `send`, the loader's pool runs dry and the whole pipeline waits (memory stays
//! flat). The training loop measures the time it blocks in [`Feeder::next_batch`] as *data wait*.
//!
//! When the recipe leaves colour jitter, greyscale, blur and solarize to the device
//! (`[augment] on_device = true`), the batch carries the CPU's draws and [`augment`] applies
//! them between the cast and the normalisation.
//!
//! How a batch becomes device tensors, without a copy and from page-locked memory on CUDA, is
//! [`Uploader`]'s part (`upload.rs`).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::prelude::*;
use tessera_pipeline::Batch;
use tessera_pipeline::loader::{Loader, LoaderError};

pub mod augment;
mod upload;

pub use upload::{
    DeviceBatch, DeviceMask, HostUpload, IMAGENET_MEAN, IMAGENET_STD, Normalize, Uploader,
};

/// Default number of uploaded batches waiting for the step: one being consumed, one
/// ready, one in flight is enough to hide upload latency without holding more memory.
pub const DEFAULT_DEPTH: usize = 2;

/// Where batches come from. The pipeline's [`Loader`] is one; tests and `--synthetic` runs
/// use [`FromFn`].
pub trait BatchSource: Send + 'static {
    /// What a failed batch reports.
    type Error: std::error::Error + Send + Sync + 'static;
    /// The next batch, `None` at the end of the stream.
    fn next_batch(&mut self) -> Option<Result<Batch, Self::Error>>;

    /// The pipeline's live stage counters, for sources that keep them (the loader).
    fn stats(&self) -> Option<Arc<tessera_pipeline::stats::Stats>> {
        None
    }
}

impl BatchSource for Loader {
    type Error = LoaderError;

    fn next_batch(&mut self) -> Option<Result<Batch, LoaderError>> {
        Loader::next_batch(self)
    }

    fn stats(&self) -> Option<Arc<tessera_pipeline::stats::Stats>> {
        Some(self.stats_handle())
    }
}

/// A closure as a [`BatchSource`].
pub struct FromFn<F, E>(pub F, pub PhantomData<fn() -> E>);

impl<F, E> FromFn<F, E> {
    /// Wrap `f`.
    pub fn new(f: F) -> Self {
        FromFn(f, PhantomData)
    }
}

impl<F, E> std::fmt::Debug for FromFn<F, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FromFn")
    }
}

impl<F, E> BatchSource for FromFn<F, E>
where
    F: FnMut() -> Option<Result<Batch, E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    type Error = E;

    fn next_batch(&mut self) -> Option<Result<Batch, E>> {
        (self.0)()
    }
}

/// Why a batch could not be fed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The pipeline failed (a budget of bad samples exceeded, unreadable shards, ...).
    #[error("input pipeline failed")]
    Pipeline(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A view's buffer is smaller than its declared shape.
    #[error("view {view} holds {bytes} bytes, fewer than {len} x {height} x {width} x 3")]
    ViewTooShort {
        /// Index of the view in the recipe.
        view: usize,
        /// Bytes in the buffer.
        bytes: usize,
        /// Samples.
        len: usize,
        /// Height in pixels.
        height: usize,
        /// Width in pixels.
        width: usize,
    },
    /// A mask's vectors disagree with its declared shape.
    #[error(
        "mask of view {view} is inconsistent: {len} samples x {num_patches} patches (keep {num_keep}) \
         but mask has {mask_len}, ids_keep {keep_len}, ids_restore {restore_len} entries"
    )]
    MaskShape {
        /// Index of the view in the recipe.
        view: usize,
        /// Samples.
        len: usize,
        /// Patches per sample.
        num_patches: usize,
        /// Visible patches per sample.
        num_keep: usize,
        /// Entries in `mask`.
        mask_len: usize,
        /// Entries in `ids_keep`.
        keep_len: usize,
        /// Entries in `ids_restore`.
        restore_len: usize,
    },
    /// A view's device-augmentation draws do not match its samples.
    #[error("view {view} carries device-augmentation draws for {draws} samples, not {len}")]
    AugmentShape {
        /// Index of the view in the recipe.
        view: usize,
        /// Draws in the batch.
        draws: usize,
        /// Samples.
        len: usize,
    },
    /// The uploader thread panicked.
    #[error("the uploader thread stopped unexpectedly")]
    UploaderPanicked,
    /// The device failed while taking a batch.
    #[error("uploading a batch to the device: {0}")]
    Device(String),
}

/// Uploads batches on a dedicated thread; [`Feeder::next_batch`] hands them over in order.
#[derive(Debug)]
pub struct Feeder<B: Backend> {
    rx: Option<Receiver<Result<DeviceBatch<B>, FeedError>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Seconds the uploader spent waiting for the pipeline and uploading (for `profile`-style
    /// diagnosis: a slow pipeline shows up here, a slow device in `upload`).
    timing: Arc<Mutex<UploaderTiming>>,
}

/// Cumulative busy/blocked time of the uploader thread.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UploaderTiming {
    /// Batches uploaded.
    pub batches: u64,
    /// Time blocked in the source's `next_batch`.
    pub waiting_for_pipeline: Duration,
    /// Time spent creating device tensors.
    pub uploading: Duration,
    /// Time blocked handing a batch to a full queue (the step is the bottleneck).
    pub waiting_for_step: Duration,
}

impl<B: HostUpload> Feeder<B> {
    /// Start the uploader thread with a queue of `depth` (at least 1) uploaded batches.
    pub fn start(
        mut source: impl BatchSource,
        device: B::Device,
        normalize: Normalize,
        depth: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(depth.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let timing = Arc::new(Mutex::new(UploaderTiming::default()));
        let thread = {
            let stop = Arc::clone(&stop);
            let timing = Arc::clone(&timing);
            std::thread::Builder::new()
                .name("tessera-uploader".into())
                .spawn(move || {
                    uploader_loop::<B>(&mut source, &device, normalize, &tx, &stop, &timing)
                })
        };
        // Spawning fails only when the OS refuses a thread; report it as a stopped uploader.
        let thread = match thread {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::error!("cannot start the uploader thread: {err}");
                None
            }
        };
        Feeder {
            rx: Some(rx),
            stop,
            thread,
            timing,
        }
    }

    /// The next uploaded batch and how long this call blocked waiting for it.
    /// `None` at the end of the stream.
    pub fn next_batch(&mut self) -> Option<(Result<DeviceBatch<B>, FeedError>, Duration)> {
        let started = Instant::now();
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(item) => Some((item, started.elapsed())),
            Err(_) => {
                // The sender is gone: either the stream ended or the thread panicked.
                let panicked = self
                    .thread
                    .take()
                    .map(|t| t.join().is_err())
                    .unwrap_or(true);
                self.rx = None;
                panicked.then(|| (Err(FeedError::UploaderPanicked), started.elapsed()))
            }
        }
    }

    /// The uploader's cumulative timing so far.
    pub fn timing(&self) -> UploaderTiming {
        *self.timing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B: Backend> Drop for Feeder<B> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a `send`; the thread then drops the source (the
        // loader), which stops the pipeline's workers.
        self.rx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn uploader_loop<B: HostUpload>(
    source: &mut impl BatchSource,
    device: &B::Device,
    normalize: Normalize,
    tx: &SyncSender<Result<DeviceBatch<B>, FeedError>>,
    stop: &AtomicBool,
    timing: &Mutex<UploaderTiming>,
) {
    let uploader = Uploader::<B>::new(device, normalize);
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let Some(batch) = source.next_batch() else {
            break;
        };
        let t1 = Instant::now();
        let item = batch
            .map_err(|e| FeedError::Pipeline(Box::new(e)))
            .and_then(|b| uploader.upload(b));
        let failed = item.is_err();
        let t2 = Instant::now();
        if tx.send(item).is_err() {
            break;
        }
        let t3 = Instant::now();
        {
            let mut t = timing.lock().unwrap_or_else(|e| e.into_inner());
            t.batches += 1;
            t.waiting_for_pipeline += t1 - t0;
            t.uploading += t2 - t1;
            t.waiting_for_step += t3 - t2;
        }
        if failed {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use tessera_pipeline::PipelineState;
    use tessera_pipeline::batch::{MaskBatch, ViewBatch};
    use tessera_pipeline::pool::BufferPool;

    type B = Flex;

    fn synthetic_batch(pool: &BufferPool, n: usize, side: usize, consumed: u64) -> Batch {
        let mut data = pool.take();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = (i % 256) as u8;
        }
        let (l, k) = (4, 1);
        let mut mask = Vec::new();
        let mut ids_keep = Vec::new();
        let mut ids_restore = Vec::new();
        for s in 0..n {
            let keep = (s % l) as u32;
            ids_keep.push(keep);
            for p in 0..l as u32 {
                mask.push(u8::from(p != keep));
                // keep first, then the masked patches in ascending order
                ids_restore.push(if p == keep {
                    0
                } else if p < keep {
                    p + 1
                } else {
                    p
                });
            }
        }
        Batch {
            views: vec![ViewBatch {
                data,
                len: n,
                height: side,
                width: side,
            }],
            masks: vec![Some(MaskBatch {
                len: n,
                num_patches: l,
                mask,
                ids_keep,
                ids_restore,
                num_keep: k,
            })],
            labels: vec![-1; n],
            keys: (0..n).map(|i| format!("k{i}")).collect(),
            state: PipelineState {
                seed: 1,
                epoch: 0,
                rank: 0,
                world_size: 1,
                samples_consumed: consumed,
            },
            augment: None,
        }
    }

    #[test]
    fn upload_normalises_and_permutes_on_device() {
        let pool = BufferPool::new(1, 2 * 2 * 2 * 3);
        let batch = synthetic_batch(&pool, 2, 2, 2);
        let expected_u8: Vec<u8> = batch.views[0].data.to_vec();
        let uploader = Uploader::<B>::new(&Default::default(), Normalize::default());
        let out = uploader.upload(batch).unwrap();
        assert_eq!(
            pool.free_count(),
            1,
            "the pooled buffer goes back after upload"
        );
        assert_eq!(out.views[0].dims(), [2, 3, 2, 2]);
        let got = out.views[0].to_data().to_vec::<f32>().unwrap();
        // got is NCHW; expected is NHWC.
        for n in 0..2 {
            for c in 0..3 {
                for y in 0..2 {
                    for x in 0..2 {
                        let raw = expected_u8[((n * 2 + y) * 2 + x) * 3 + c] as f32;
                        let want = (raw / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                        let have = got[((n * 3 + c) * 2 + y) * 2 + x];
                        assert!(
                            (want - have).abs() < 1e-5,
                            "n{n} c{c} y{y} x{x}: {want} vs {have}"
                        );
                    }
                }
            }
        }
        let mask = out.masks[0].as_ref().unwrap();
        assert_eq!(mask.mask.dims(), [2, 4]);
        assert_eq!(mask.ids_keep.to_data().to_vec::<i32>().unwrap(), vec![0, 1]);
        assert_eq!(
            mask.mask.to_data().to_vec::<f32>().unwrap(),
            vec![0., 1., 1., 1., 1., 0., 1., 1.]
        );
    }

    #[test]
    fn feeder_delivers_in_order_and_reports_the_end() {
        let pool = BufferPool::new(2, 4 * 4 * 3);
        let mut produced = 0u64;
        let source = {
            let pool = pool.clone();
            FromFn::new(move || -> Option<Result<Batch, std::io::Error>> {
                if produced == 5 {
                    return None;
                }
                produced += 1;
                Some(Ok(synthetic_batch(&pool, 1, 4, produced)))
            })
        };
        let mut feeder = Feeder::<B>::start(source, Default::default(), Normalize::default(), 2);
        let mut seen = Vec::new();
        while let Some((item, _wait)) = feeder.next_batch() {
            seen.push(item.unwrap().state.samples_consumed);
        }
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert!(feeder.next_batch().is_none());
        assert_eq!(feeder.timing().batches, 5);
    }

    #[test]
    fn feeder_stops_cleanly_when_dropped_mid_stream() {
        let pool = BufferPool::new(2, 4 * 4 * 3);
        let source = {
            let pool = pool.clone();
            FromFn::new(move || -> Option<Result<Batch, std::io::Error>> {
                Some(Ok(synthetic_batch(&pool, 1, 4, 0)))
            })
        };
        let mut feeder = Feeder::<B>::start(source, Default::default(), Normalize::default(), 2);
        assert!(feeder.next_batch().is_some());
        drop(feeder); // must not hang on the endless source
    }
}
