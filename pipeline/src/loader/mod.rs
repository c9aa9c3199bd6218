//! The streaming graph: shards in, batches out, every queue bounded.
//!
//! ```text
//! tokio (1 thread)           reader threads         sequencer        worker threads
//! read_shards ─chunks(4)─►  Parser (tar → Sample) ─samples(16)─► merge + shuffle ─work(2W)─►
//!   decode ─► report to Assembly (slot) ─► views + masks written into the pooled batch
//!   ─► batches(prefetch) ─► Loader::next_batch (reorders by batch number in ordered mode)
//! ```
//! Memory is bounded three ways: a fixed set of recycled [`Sample`]s between the readers
//! and the workers, bounded chunk read-ahead, and a fixed [`BufferPool`] of batch buffers
//! per view. A slow consumer fills the output queue, then the pools, then every queue
//! upstream, and everything waits (counted as "blocked on output").
//!
//! Start with [`Loader::start`] (from a [`Recipe`]) or [`Loader::with_work`] (any
//! [`SampleWork`]); take batches with [`Loader::next_batch`] from any plain thread; drop
//! the loader to stop it (threads are joined, nothing hangs).

mod assemble;
mod read;
mod recipe_work;
mod work;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tessera_shards::{Sample, ShardError};

pub use assemble::MaskSlot;
pub use recipe_work::RecipeWork;
pub use work::{Reject, SampleWork};

use crate::batch::Batch;
use crate::order::{self, OrderError, RoundRobin};
pub use crate::pool::BufferHook;
use crate::pool::BufferPool;
pub use crate::recipe::BadSamplePolicy;
use crate::recipe::Recipe;
use crate::state::PipelineState;
use crate::stats::{Stats, StatsSnapshot};
use assemble::{Assembly, AssemblyConfig};
use read::{Chunk, EpochInput, Parser, ReaderStart, Sequencer};

/// Everything that can stop the loader.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The shard list, rank or world size cannot be split.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// No shard to read.
    #[error("no shards to read")]
    NoShards,
    /// A shard is missing or unreadable before the run starts.
    #[error("shard {}: {source}", path.display())]
    ShardUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Reading shard lengths to resume failed.
    #[error("cannot resume: {0}")]
    Resume(#[source] ShardError),
    /// The saved state belongs to another run layout.
    #[error(
        "saved pipeline state is for seed {state_seed}, rank {state_rank}/{state_world}, but this run \
         has seed {seed}, rank {rank}/{world}"
    )]
    StateMismatch {
        state_seed: u64,
        state_rank: u32,
        state_world: u32,
        seed: u64,
        rank: u32,
        world: u32,
    },
    /// `bad_sample = "fail"` and a sample could not be used.
    #[error("{shard}: sample `{key}`: {reason}: {detail}")]
    BadSample {
        shard: String,
        key: String,
        reason: &'static str,
        detail: String,
    },
    /// A setting is out of range.
    #[error("loader option `{option}`: {problem}")]
    BadOption {
        option: &'static str,
        problem: String,
    },
    /// A thread could not be started.
    #[error("cannot start a loader thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// How to run the loader (the recipe supplies views, masks, batch size and policy).
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// Shard files (every rank passes the same list, in the same order).
    pub shards: Vec<PathBuf>,
    /// Views, masks and the `[data]` settings.
    pub recipe: Recipe,
    /// CPU worker threads (decode, views, masks). Default: the recipe's, else the cores.
    pub workers: usize,
    /// Seed of the order and of every sample's randomness. Default: the recipe's.
    pub seed: u64,
    /// This process's rank, `0..world_size`.
    pub rank: u32,
    /// Number of ranks sharing the shards.
    pub world_size: u32,
    /// Epochs to run in all (counting from epoch 0, also when resuming); `None` = forever.
    pub epochs: Option<u64>,
    /// Continue exactly after this state (ordered mode), seeking with the shard indexes.
    pub resume: Option<PipelineState>,
    /// Batches independent of worker count and timing (needed for exact resume). Costs a
    /// little throughput when decode times vary: a worker waits for its predecessors'
    /// decodes before it gets a slot.
    pub ordered: bool,
    /// Finished batches queued ahead of the consumer. Default 2.
    pub prefetch_batches: usize,
    /// Shard reader tasks (each reads its own shards; samples are merged round-robin).
    /// Default 2; fewer if this rank has fewer shards.
    pub readers: usize,
    /// Drop the last, partial batch of each epoch (ordered mode). Default false.
    pub drop_last: bool,
    /// Called once on every batch buffer when the loader allocates it: the CUDA trainer
    /// page-locks them here (see [`BufferHook`]). Default none.
    pub buffer_hook: Option<BufferHook>,
}

impl LoaderOptions {
    /// Options for one process (rank 0 of 1), ordered, one epoch, defaults from the recipe.
    pub fn new(shards: Vec<PathBuf>, recipe: Recipe) -> Self {
        let workers = recipe.data.workers.unwrap_or_else(default_workers);
        let seed = recipe.data.seed;
        LoaderOptions {
            shards,
            recipe,
            workers,
            seed,
            rank: 0,
            world_size: 1,
            epochs: Some(1),
            resume: None,
            ordered: true,
            prefetch_batches: 2,
            readers: 2,
            drop_last: false,
            buffer_hook: None,
        }
    }
}

/// Cores available to this process.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The recipe-independent settings of the graph (see [`LoaderOptions`] for each).
#[derive(Debug, Clone)]
pub struct GraphOptions {
    /// Shard files, the same list on every rank.
    pub shards: Vec<PathBuf>,
    /// CPU worker threads.
    pub workers: usize,
    /// Seed of the order and of every sample's randomness.
    pub seed: u64,
    /// This process's rank.
    pub rank: u32,
    /// Number of ranks.
    pub world_size: u32,
    /// Epochs in all (from 0); `None` = forever.
    pub epochs: Option<u64>,
    /// Continue after this state.
    pub resume: Option<PipelineState>,
    /// Batches independent of worker count and timing.
    pub ordered: bool,
    /// Finished batches queued ahead of the consumer.
    pub prefetch_batches: usize,
    /// Shard reader tasks.
    pub readers: usize,
    /// Drop each epoch's last partial batch.
    pub drop_last: bool,
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle buffer capacity, samples (0 or 1: no shuffling).
    pub shuffle_buffer: usize,
    /// Skip or fail on a bad sample.
    pub policy: BadSamplePolicy,
    /// Called on every batch buffer once at allocation.
    pub buffer_hook: Option<BufferHook>,
}

/// Samples waiting between one reader and the sequencer.
const SAMPLES_PER_READER: usize = 16;

/// What travels on the output queue.
pub(crate) enum Output {
    /// A finished batch and its number (delivery order).
    Batch(u64, Batch),
    /// Fail-fast policy: the run stops with this error.
    Error(LoaderError),
    /// The last worker exited: every batch has been sent.
    End,
}

/// A running pipeline. `Send`: hand it to the thread that feeds the trainer.
#[derive(Debug)]
pub struct Loader {
    output: async_channel::Receiver<Output>,
    reorder: BTreeMap<u64, Batch>,
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
    free: async_channel::Receiver<Sample>,
    epoch_channels: Arc<Mutex<EpochChannels>>,
    threads: Vec<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The current epoch's reader channels (for shutdown and queue statistics).
#[derive(Debug, Default)]
struct EpochChannels {
    chunks: Vec<async_channel::Receiver<Chunk>>,
    samples: Vec<async_channel::Receiver<Sample>>,
}

impl EpochChannels {
    fn close(&self) {
        for c in &self.chunks {
            c.close();
        }
        for c in &self.samples {
            c.close();
        }
    }
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
        let data = &options.recipe.data;
        let graph = GraphOptions {
            shards: options.shards.clone(),
            workers: options.workers,
            seed: options.seed,
            rank: options.rank,
            world_size: options.world_size,
            epochs: options.epochs,
            resume: options.resume,
            ordered: options.ordered,
            prefetch_batches: options.prefetch_batches,
            readers: options.readers,
            drop_last: options.drop_last,
            batch_size: data.batch_size,
            shuffle_buffer: data.shuffle_buffer,
            policy: data.bad_sample,
            buffer_hook: options.buffer_hook.clone(),
        };
        Loader::with_work(graph, RecipeWork::new(&options.recipe))
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
                    options.buffer_hook.as_ref(),
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
                first_seq: 0,
            },
            out_tx.clone(),
        ));
        let readers = options.readers.max(1);
        let sample_count =
            options.shuffle_buffer.max(1) + readers * (SAMPLES_PER_READER + 2) + 3 * workers + 2;
        let (free_tx, free_rx) = async_channel::bounded(sample_count);
        for _ in 0..sample_count {
            let _ = free_tx.try_send(Sample::default());
        }
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
                recycle: free_tx.clone(),
                assembly: Arc::clone(&assembly),
                stage: Arc::clone(&worker_stage),
                stats: Arc::clone(&stats),
                output: out_tx.clone(),
                live_workers: Arc::clone(&live_workers),
            };
            threads.push(spawn(format!("tessera-worker-{i}"), move || worker.run())?);
        }
        drop(out_tx);
        let sequencer_free = free_tx.clone();
        let driver = EpochDriver {
            options: options.clone(),
            readers,
            start_epoch,
            consumed,
            free_tx,
            free_rx: free_rx.clone(),
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
                free: sequencer_free,
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
                free: free_rx,
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
            if let Some(batch) = self.reorder.remove(&self.next_number) {
                return Some(Ok(self.deliver(batch)));
            }
            match self.output.recv_blocking() {
                Ok(Output::Batch(number, batch)) => {
                    if !self.ordered || number == self.next_number {
                        return Some(Ok(self.deliver(batch)));
                    }
                    self.reorder.insert(number, batch);
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

fn check_options(options: &GraphOptions) -> Result<(), LoaderError> {
    if options.shards.is_empty() {
        return Err(LoaderError::NoShards);
    }
    if options.workers == 0 {
        return Err(LoaderError::BadOption {
            option: "workers",
            problem: "must be at least 1".into(),
        });
    }
    if options.batch_size == 0 {
        return Err(LoaderError::BadOption {
            option: "batch_size",
            problem: "must be at least 1".into(),
        });
    }
    // Splits the shard list now so a bad rank or too few shards fails before any thread.
    order::split_shards(
        options.shards.len(),
        options.seed,
        0,
        options.rank,
        options.world_size,
        options.readers,
    )?;
    for path in &options.shards {
        if let Err(source) = std::fs::metadata(path) {
            return Err(LoaderError::ShardUnreadable {
                path: path.clone(),
                source,
            });
        }
    }
    if let Some(state) = options.resume {
        if (state.seed, state.rank, state.world_size)
            != (options.seed, options.rank, options.world_size)
        {
            return Err(LoaderError::StateMismatch {
                state_seed: state.seed,
                state_rank: state.rank,
                state_world: state.world_size,
                seed: options.seed,
                rank: options.rank,
                world: options.world_size,
            });
        }
    }
    Ok(())
}

/// Runs the epochs on the sequencer thread: per epoch, starts the readers (tokio tasks
/// and parser threads) and runs the merge and shuffle.
struct EpochDriver {
    options: GraphOptions,
    readers: usize,
    start_epoch: u64,
    consumed: u64,
    free_tx: async_channel::Sender<Sample>,
    free_rx: async_channel::Receiver<Sample>,
    epoch_channels: Arc<Mutex<EpochChannels>>,
    handle: tokio::runtime::Handle,
    io_stage: Arc<crate::stats::StageStats>,
    parse_stage: Arc<crate::stats::StageStats>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    sequencer: Sequencer,
}

impl EpochDriver {
    fn run(self) {
        let o = &self.options;
        let mut seq = 0;
        let mut epoch = self.start_epoch;
        let mut consumed = self.consumed;
        while o.epochs.is_none_or(|n| epoch < n) && !self.stop.load(Ordering::Relaxed) {
            let lists = match order::split_shards(
                o.shards.len(),
                o.seed,
                epoch,
                o.rank,
                o.world_size,
                self.readers,
            ) {
                Ok(lists) => lists,
                Err(e) => {
                    tracing::error!("{e}");
                    break;
                }
            };
            let lists: Vec<Vec<PathBuf>> = lists
                .iter()
                .map(|l| l.iter().map(|&i| o.shards[i].clone()).collect())
                .collect();
            let (starts, merge, first_position, resume) = if consumed > 0 {
                match read::resume_point(&lists, o.shuffle_buffer, o.seed, epoch, o.rank, consumed)
                {
                    Ok(p) => (
                        p.readers,
                        p.merge,
                        p.first_position,
                        Some((p.buffer, p.next_position)),
                    ),
                    Err(e) => {
                        self.sequencer.assembly.send_error(LoaderError::Resume(e));
                        break;
                    }
                }
            } else {
                let starts = lists
                    .into_iter()
                    .map(|shards| ReaderStart {
                        shards,
                        first_sample: 0,
                    })
                    .collect();
                (
                    starts,
                    RoundRobin::new(self.readers.min(o.shards.len())),
                    0,
                    None,
                )
            };
            let (input, parsers) = self.start_readers(starts, merge, first_position, resume);
            let next = self.sequencer.run_epoch(epoch, input, seq, consumed);
            for parser in parsers {
                let _ = parser.join();
            }
            match next {
                Some(next) => seq = next,
                None => return,
            }
            epoch += 1;
            consumed = 0;
        }
        self.sequencer.assembly.end_stream(seq);
    }

    fn start_readers(
        &self,
        starts: Vec<ReaderStart>,
        mut merge: RoundRobin,
        first_position: u64,
        resume: Option<(order::ShuffleBuffer<u64>, u64)>,
    ) -> (EpochInput, Vec<JoinHandle<()>>) {
        let mut channels = EpochChannels::default();
        let mut receivers = Vec::new();
        let mut parsers = Vec::new();
        for (r, start) in starts.into_iter().enumerate() {
            let (chunk_tx, chunk_rx) = async_channel::bounded(read::CHUNKS_AHEAD);
            let (spare_tx, spare_rx) = async_channel::bounded(read::CHUNKS_AHEAD + 2);
            let (sample_tx, sample_rx) = async_channel::bounded(SAMPLES_PER_READER);
            if start.shards.is_empty() {
                merge.finish(r);
            }
            let async_shards = if start.first_sample > 0 {
                start.shards[1..].to_vec()
            } else {
                start.shards.clone()
            };
            self.handle.spawn(read::read_shards(
                async_shards,
                chunk_tx,
                spare_rx,
                Arc::clone(&self.io_stage),
            ));
            channels.chunks.push(chunk_rx.clone());
            channels.samples.push(sample_rx.clone());
            receivers.push(sample_rx);
            let parser = Parser {
                start,
                chunks: chunk_rx,
                spare: spare_tx,
                free: self.free_rx.clone(),
                recycle: self.free_tx.clone(),
                out: sample_tx,
                stage: Arc::clone(&self.parse_stage),
                stats: Arc::clone(&self.stats),
            };
            match spawn(format!("tessera-reader-{r}"), move || parser.run()) {
                Ok(handle) => parsers.push(handle),
                Err(e) => tracing::error!("{e}"),
            }
        }
        *self
            .epoch_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = channels;
        (
            EpochInput {
                readers: receivers,
                merge,
                first_position,
                resume,
            },
            parsers,
        )
    }
}
