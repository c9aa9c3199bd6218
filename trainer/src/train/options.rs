//! What a caller passes to [`super::run`]: how the run is driven, who watches it, and
//! where its files go.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::distributed::World;
use crate::feeder::Normalize;
use crate::metrics::StepMetrics;

/// How a run is driven (what the recipe does not say).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run directory: `config.json`, `metrics.jsonl`, `checkpoints/`, `pictures/`, `tb/`,
    /// `loss.png`, `timing.json`.
    pub run_dir: PathBuf,
    /// Continue from the newest complete checkpoint in `run_dir` (fresh start when none).
    pub resume: bool,
    /// Stop (with a checkpoint) once this many optimiser steps are done in all, without
    /// changing the schedule's length. `None`: run to the schedule's end.
    pub stop_after: Option<u64>,
    /// Stop (with a checkpoint) after this much wall time in this process.
    pub time_limit: Option<Duration>,
    /// Optimiser steps between reconstruction pictures; 0 = only at the last step.
    pub picture_every: u64,
    /// Samples drawn in each reconstruction picture.
    pub picture_samples: usize,
    /// Uploaded batches queued ahead of the step.
    pub feeder_depth: usize,
    /// Channel normalisation applied on the device.
    pub normalize: Normalize,
    /// Set from outside (the CLI's SIGUSR1 handler) to ask for a checkpoint: polled between
    /// steps like `stop`; the loop clears it, writes a checkpoint after the step in
    /// flight and carries on.
    pub checkpoint_now: Arc<AtomicBool>,
    /// This process's place in a data-parallel job ([`World::single`] alone).
    pub world: World,
    /// How long to wait for every rank to join the collective.
    pub join_timeout: Duration,
    /// How long one step's exchange may wait for the other ranks before this rank stops
    /// with an error (a rank died or hangs).
    pub collective_timeout: Duration,
}

impl RunOptions {
    /// Defaults for a run in `run_dir`.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        RunOptions {
            run_dir: run_dir.into(),
            resume: false,
            stop_after: None,
            time_limit: None,
            picture_every: 500,
            picture_samples: 6,
            feeder_depth: crate::feeder::DEFAULT_DEPTH,
            normalize: Normalize::default(),
            checkpoint_now: Arc::default(),
            world: World::single(),
            join_timeout: Duration::from_secs(300),
            collective_timeout: Duration::from_secs(120),
        }
    }
}

/// Receives progress as the run goes (the CLI draws a progress bar from it).
pub trait Observer {
    /// Called once before the first step: the step the run starts at and the step it ends at.
    fn started(&mut self, _first_step: u64, _last_step: u64) {}
    /// Called after every optimiser step.
    fn step(&mut self, _metrics: &StepMetrics) {}
    /// A notable event (checkpoint written, picture written, stop requested).
    fn event(&mut self, _message: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;
impl Observer for Quiet {}

/// File names inside a run directory.
pub mod layout {
    /// The resolved config, written before step 0.
    pub const CONFIG: &str = "config.json";
    /// One JSON object per optimiser step.
    pub const METRICS: &str = "metrics.jsonl";
    /// Reconstruction pictures.
    pub const PICTURES: &str = "pictures";
    /// The loss curve.
    pub const LOSS_CURVE: &str = "loss.png";
    /// TensorBoard event files.
    pub const TENSORBOARD: &str = crate::tensorboard::DIR;
    /// Where this process's time went (steps, data wait, pipeline stages), at its end.
    pub const TIMING: &str = "timing.json";
}
