//! The loader's settings and errors: what a caller passes to [`super::Loader::start`] or
//! [`super::Loader::with_work`], the checks made before any thread starts, and every way
//! the run can stop.

use std::path::PathBuf;
use std::sync::Arc;

use tessera_shards::ShardError;

use crate::order::{self, OrderError};
use crate::pool::BufferHook;
use crate::recipe::{BadSamplePolicy, Recipe};
use crate::state::PipelineState;

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
    #[error("shard {}", path.display())]
    ShardUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Reading shard lengths to resume failed.
    #[error("cannot resume")]
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
    #[error("cannot start a loader thread")]
    Spawn(#[source] std::io::Error),
}

/// How to run the loader on a recipe: the recipe's views and masks, and the graph's
/// settings, whose batch size, shuffle buffer, bad-sample policy, workers and seed start
/// from the recipe's `[data]` ([`LoaderOptions::new`]); change any of them in `graph`.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// Views, masks and the `[data]` settings.
    pub recipe: Recipe,
    /// Shards, workers, order, epochs, resume and queue depths.
    pub graph: GraphOptions,
}

impl LoaderOptions {
    /// Options for one process (rank 0 of 1), ordered, one epoch, defaults from the recipe.
    pub fn new(shards: Vec<PathBuf>, recipe: Recipe) -> Self {
        let data = &recipe.data;
        let graph = GraphOptions {
            shards,
            workers: data.workers.unwrap_or_else(default_workers),
            seed: data.seed,
            rank: 0,
            world_size: 1,
            epochs: Some(1),
            resume: None,
            ordered: true,
            prefetch_batches: 2,
            readers: 2,
            drop_last: false,
            batch_size: data.batch_size,
            shuffle_buffer: data.shuffle_buffer,
            policy: data.bad_sample,
            buffer_hook: None,
        };
        LoaderOptions { recipe, graph }
    }
}

/// Cores available to this process.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The settings of the graph, whatever the per-sample work.
#[derive(Debug, Clone)]
pub struct GraphOptions {
    /// Shard files (every rank passes the same list, in the same order).
    pub shards: Vec<PathBuf>,
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
    /// Samples per batch. Default: the recipe's.
    pub batch_size: usize,
    /// Shuffle buffer capacity, samples (0 or 1: no shuffling). Default: the recipe's.
    pub shuffle_buffer: usize,
    /// Skip or fail on a bad sample. Default: the recipe's.
    pub policy: BadSamplePolicy,
    /// Prepares every batch buffer when the loader allocates it and releases it when the
    /// loader frees it; the CUDA trainer page-locks them (see [`BufferHook`]). Default none.
    pub buffer_hook: Option<Arc<dyn BufferHook>>,
}

pub(super) fn check_options(options: &GraphOptions) -> Result<(), LoaderError> {
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
    // Remote shards (`s3://...`) were checked to exist when their pattern was resolved.
    for path in &options.shards {
        if tessera_shards::remote::url_of(path).is_some() {
            continue;
        }
        if let Err(source) = std::fs::metadata(path) {
            return Err(LoaderError::ShardUnreadable {
                path: path.clone(),
                source,
            });
        }
    }
    if let Some(state) = options.resume
        && (state.seed, state.rank, state.world_size)
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
    Ok(())
}
