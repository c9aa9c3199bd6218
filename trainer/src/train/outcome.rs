//! How a run ends: its summary, or the error that stopped it.

use std::path::PathBuf;

use crate::error::Error;
use crate::feeder::{FeedError, UploaderTiming};
use crate::metrics::MetricsError;
use crate::pictures::PictureError;

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The schedule's last step is done.
    Finished,
    /// `stop_after` steps are done.
    StepLimit,
    /// `time_limit` passed.
    TimeLimit,
    /// Interrupted (`stop` set: SIGINT or SIGTERM in the CLI): the step in flight was
    /// finished and checkpointed.
    Interrupted,
    /// The source ran out of batches.
    EndOfData,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    /// Step the run started at (0, or the resumed checkpoint's).
    pub first_step: u64,
    /// Optimiser steps done in all when the run stopped.
    pub steps_done: u64,
    /// Why it stopped.
    pub stopped: StopReason,
    /// Loss of the last step of this process, if any.
    pub last_loss: Option<f64>,
    /// Mean images per second over this process's steps.
    pub images_per_second: f64,
    /// Share of this process's step time spent waiting for data.
    pub data_wait_fraction: f64,
    /// With several ranks: mean wall time per step this process spent in all-reduces
    /// (the gradient exchange and the global-batch operations, waiting for the slowest
    /// rank included), in seconds. `None` alone.
    pub communication_seconds_per_step: Option<f64>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// Reconstruction pictures written by this process.
    pub pictures: Vec<PathBuf>,
    /// The loss curve.
    pub loss_curve: PathBuf,
    /// The metrics log.
    pub metrics: PathBuf,
    /// Cumulative uploader timing (pipeline wait vs upload vs queue full).
    #[serde(skip)]
    pub uploader: UploaderTiming,
}

/// Everything that stops a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Model, optimiser, checkpoint or config failure.
    #[error(transparent)]
    Trainer(#[from] Error),
    /// The input pipeline or the upload failed.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The metrics log could not be written.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The TensorBoard event files could not be written.
    #[error(transparent)]
    Tensorboard(#[from] crate::tensorboard::TensorboardError),
    /// A picture could not be written.
    #[error(transparent)]
    Picture(#[from] PictureError),
    /// Another rank stopped answering, or the collective failed.
    #[error(transparent)]
    Distributed(#[from] crate::distributed::CollectiveError),
    /// The batch source could not be started.
    #[error("starting the input pipeline")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The loss became NaN or infinite; the state before the step was checkpointed.
    #[error("loss is {loss} at step {step} (lr {lr:e}); state before the step saved in {}", checkpoint.display())]
    NonFiniteLoss {
        /// The step whose forward produced it.
        step: u64,
        /// The value.
        loss: f64,
        /// The learning rate of that step.
        lr: f64,
        /// The checkpoint holding the state before the step.
        checkpoint: PathBuf,
    },
    /// `config.json` could not be written.
    #[error("writing {}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
