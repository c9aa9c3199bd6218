//! The streaming graph: shards in, batches out, every queue bounded.
//!
//! ```text
//! tokio (1 thread)           reader threads         sequencer        worker threads
//! read_shards ─chunks(4)─►  Parser (tar → Sample) ─samples(16)─► merge + shuffle ─work(2W)─►
//!   decode ─► report to Assembly (slot) ─► views + masks written into the pooled batch
//!   ─► batches(prefetch) ─► Loader::next_batch (reorders by batch number in ordered mode)
//! ```
//! Memory is bounded three ways: a fixed set of recycled
//! [`Sample`](tessera_shards::Sample)s between the readers and the workers (last in, first
//! out, slack released: [`sample_pool`]), bounded chunk read-ahead, and a fixed
//! [`BufferPool`] of batch buffers per view. A slow consumer fills the output queue, then
//! the pools, then every queue upstream, and everything waits (counted as "blocked on
//! output").
//!
//! Start with [`Loader::start`] (from a [`Recipe`](crate::recipe::Recipe)) or [`Loader::with_work`] (any
//! [`SampleWork`]); take batches with [`Loader::next_batch`] from any plain thread; drop
//! the loader to stop it (threads are joined, nothing hangs).
//!
//! Parts: [`options`] (settings, errors, up-front checks), [`epoch`] (the per-epoch reader
//! start-up and the sequencer loop), [`read`] (async reads, tar parsing, merge, shuffle),
//! [`work`] (the worker threads), [`assemble`] (batch slots and ordering), [`recipe_work`]
//! (what a recipe does to one sample), [`sample_pool`] (the recycled samples). This file
//! wires them and delivers batches.

mod assemble;
mod epoch;
mod options;
mod read;
mod recipe_work;
mod sample_pool;
mod slot;
mod work;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use options::{GraphOptions, LoaderError, LoaderOptions, default_workers};
pub use recipe_work::RecipeWork;
pub use slot::{MaskSlot, SlotGrant};
pub use work::{Reject, SampleWork};

use crate::batch::Batch;
pub use crate::pool::BufferHook;
use crate::pool::BufferPool;
pub use crate::recipe::BadSamplePolicy;
use crate::stats::{Stats, StatsSnapshot};
use assemble::{Assembly, AssemblyConfig};
use epoch::{EpochChannels, EpochDriver, SAMPLES_PER_READER};
use options::check_options;
use read::Sequencer;
use sample_pool::SamplePool;

/// What travels on the output queue.
pub(crate) enum Output {
    /// A finished batch and its number (delivery order).
    Batch(u64, Batch),
    /// Fail-fast policy: the run stops with this error.
    Error(LoaderError),
    /// Batch `number` was opened but delivers nothing: its samples were dropped
    /// (`drop_last` at an epoch's end). Ordered delivery must skip its number.
    Dropped(u64),
    /// The last worker exited: every batch has been sent.
    End,
}

/// A running pipeline. `Send`: hand it to the thread that feeds the trainer.
#[derive(Debug)]
pub struct Loader {
    output: async_channel::Receiver<Output>,
    /// Ordered mode: batches that arrived before their predecessors (`None`: dropped).
    reorder: BTreeMap<u64, Option<Batch>>,
    next_number: u64,
    ordered: bool,
    finished: bool,
    stats: Arc<Stats>,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Batch(n, _) => write!(f, "Batch({n})"),
            Output::Error(e) => write!(f, "Error({e})"),
            Output::Dropped(n) => write!(f, "Dropped({n})"),
            Output::End => write!(f, "End"),
        }
    }
}

/// What `Drop` needs to stop every thread.
#[derive(Debug)]
struct Shutdown {
    stop: Arc<AtomicBool>,
    assembly: Arc<Assembly>,
    work: async_channel::Receiver<work::WorkItem>,
    free: SamplePool,
    epoch_channels: Arc<Mutex<EpochChannels>>,
    threads: Vec<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Loader>();
    assert_send::<Batch>();
    assert_send::<LoaderError>();
};

impl Loader {
    /// Start the pipeline for `options.recipe`.
    pub fn start(options: LoaderOptions) -> Result<Loader, LoaderError> {
        Loader::with_work(options.graph, RecipeWork::new(&options.recipe))
    }

    /// Start the pipeline with any per-sample work.
    pub fn with_work<W: SampleWork>(options: GraphOptions, work: W) -> Result<Loader, LoaderError> {
        check_options(&options)?;
        let work = Arc::new(work);
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let workers = options.workers;
        let shapes = work.view_shapes();
        let pool_count = options.prefetch_batches + 3;
        let pools: Vec<BufferPool> = shapes
            .iter()
            .map(|&(h, w)| {
                BufferPool::with_hook(
                    pool_count,
                    options.batch_size * h * w * 3,
                    options.buffer_hook.clone(),
                )
            })
            .collect();
        let (out_tx, out_rx) = async_channel::bounded(pool_count + 4);
        let (start_epoch, consumed) = match options.resume {
            Some(state) => (state.epoch, state.samples_consumed),
            None => (0, 0),
        };
        let assembly = Arc::new(Assembly::new(
            AssemblyConfig {
                ordered: options.ordered,
                batch_size: options.batch_size,
                drop_last: options.drop_last,
                seed: options.seed,
                rank: options.rank,
                world_size: options.world_size,
                pools: pools.clone(),
                shapes,
                mask_shapes: work.mask_shapes(),
                device_augment: work.device_augment(),
                first_seq: 0,
            },
            out_tx.clone(),
        ));
        let readers = options.readers.max(1);
        let sample_count =
            options.shuffle_buffer.max(1) + readers * (SAMPLES_PER_READER + 2) + 3 * workers + 2;
        let samples = SamplePool::new(sample_count);
        let (work_tx, work_rx) = async_channel::bounded(2 * workers);
        let epoch_channels = Arc::new(Mutex::new(EpochChannels::default()));

        // Statistics: stages in pipeline order, queues sampled by a small thread.
        let io_stage = stats.stage("read (async I/O)", readers);
        let parse_stage = stats.stage("parse (tar)", readers);
        let shuffle_stage = stats.stage("shuffle", 1);
        let worker_stage = stats.stage("decode + views", workers);
        {
            let ch = Arc::clone(&epoch_channels);
            stats.queue(
                "chunks (read-ahead)",
                readers * read::CHUNKS_AHEAD,
                move || {
                    ch.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .chunks
                        .iter()
                        .map(|c| c.len())
                        .sum()
                },
            );
            let ch = Arc::clone(&epoch_channels);
            stats.queue("samples", readers * SAMPLES_PER_READER, move || {
                ch.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .samples
                    .iter()
                    .map(|c| c.len())
                    .sum()
            });
            let w = work_rx.clone();
            stats.queue("work", 2 * workers, move || w.len());
            let o = out_rx.clone();
            stats.queue("batches", pool_count, move || o.len());
            if let Some(p) = pools.first().cloned() {
                stats.queue("batch buffers in use", pool_count, move || {
                    p.capacity() - p.free_count()
                });
            }
        }

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(readers.max(2))
            .thread_name("tessera-io")
            .enable_all()
            .build()
            .map_err(LoaderError::Spawn)?;
        let mut threads = Vec::new();
        let live_workers = Arc::new(std::sync::atomic::AtomicUsize::new(workers));
        for i in 0..workers {
            let worker = work::Worker {
                work: Arc::clone(&work),
                seed: options.seed,
                policy: options.policy,
                input: work_rx.clone(),
                recycle: samples.clone(),
                assembly: Arc::clone(&assembly),
                stage: Arc::clone(&worker_stage),
                stats: Arc::clone(&stats),
                output: out_tx.clone(),
                live_workers: Arc::clone(&live_workers),
            };
            threads.push(spawn(format!("tessera-worker-{i}"), move || worker.run())?);
        }
        drop(out_tx);
        let driver = EpochDriver {
            options: options.clone(),
            readers,
            start_epoch,
            consumed,
            samples: samples.clone(),
            epoch_channels: Arc::clone(&epoch_channels),
            handle: runtime.handle().clone(),
            io_stage,
            parse_stage,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            sequencer: Sequencer {
                shuffle_capacity: options.shuffle_buffer,
                seed: options.seed,
                rank: options.rank,
                out: work_tx,
                free: samples.clone(),
                assembly: Arc::clone(&assembly),
                stage: shuffle_stage,
            },
        };
        threads.push(spawn("tessera-sequencer".into(), move || driver.run())?);
        {
            let (stats, stop) = (Arc::clone(&stats), Arc::clone(&stop));
            threads.push(spawn("tessera-stats".into(), move || {
                while !stop.load(Ordering::Relaxed) {
                    stats.sample_queues();
                    std::thread::sleep(Duration::from_millis(10));
                }
            })?);
        }
        Ok(Loader {
            output: out_rx,
            reorder: BTreeMap::new(),
            next_number: 0,
            ordered: options.ordered,
            finished: false,
            stats,
            shutdown: Shutdown {
                stop,
                assembly,
                work: work_rx,
                free: samples,
                epoch_channels,
                threads,
                runtime: Some(runtime),
            },
        })
    }

    /// The next batch, waiting for it; `None` at the end of the last epoch (or after an
    /// error was returned). Blocking: call it from a plain thread, not an async task.
    pub fn next_batch(&mut self) -> Option<Result<Batch, LoaderError>> {
        if self.finished {
            return None;
        }
        loop {
            match self.reorder.remove(&self.next_number) {
                Some(Some(batch)) => return Some(Ok(self.deliver(batch))),
                Some(None) => {
                    self.next_number += 1;
                    continue;
                }
                None => {}
            }
            match self.output.recv_blocking() {
                Ok(Output::Batch(number, batch)) => {
                    if !self.ordered || number == self.next_number {
                        return Some(Ok(self.deliver(batch)));
                    }
                    self.reorder.insert(number, Some(batch));
                }
                Ok(Output::Dropped(number)) => {
                    if self.ordered {
                        if number == self.next_number {
                            self.next_number += 1;
                        } else {
                            self.reorder.insert(number, None);
                        }
                    }
                }
                Ok(Output::Error(e)) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                Ok(Output::End) | Err(_) => {
                    // Closed: every worker is done. Anything left is out of order only if
                    // a batch was dropped at shutdown; deliver what remains in order.
                    if let Some((&n, _)) = self.reorder.iter().next() {
                        self.next_number = n;
                        continue;
                    }
                    self.finished = true;
                    return None;
                }
            }
        }
    }

    fn deliver(&mut self, batch: Batch) -> Batch {
        self.next_number += 1;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .samples
            .fetch_add(batch.labels.len() as u64, Ordering::Relaxed);
        batch
    }

    /// A copy of every stage's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The live counters, to snapshot from another thread while the loader is in use.
    pub fn stats_handle(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        let s = &mut self.shutdown;
        s.stop.store(true, Ordering::Relaxed);
        s.work.close();
        s.free.close();
        self.output.close();
        s.epoch_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .close();
        s.assembly.stop();
        // Batches still queued hold pool buffers: drop them so no worker waits for one.
        while self.output.try_recv().is_ok() {}
        self.reorder.clear();
        for thread in s.threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(runtime) = s.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, LoaderError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(LoaderError::Spawn)
}
