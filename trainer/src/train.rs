//! The training loop: batches in, optimiser steps, metrics, pictures and checkpoints out.
//!
//! ```text
//! checkpoint::latest(run_dir)? ─► model + optimiser + step + PipelineState
//!   ─► start the source at that state ─► Feeder (uploader thread) ─► loop {
//!        train_step: schedule lookup ─► forward ─► non-finite check ─► backward (accumulate)
//!                    ─► clip ─► optimiser step ─► metrics
//!        metrics.jsonl ◄─ every step;  pictures/ ◄─ every `picture_every`;
//!        checkpoint ◄─ every `checkpoint_every`, at the end, on interrupt, on a non-finite loss
//!      } ─► loss.png
//! ```
//!
//! Resume is exact: the checkpoint stores the pipeline's state after the last batch a finished
//! step consumed, the loader (ordered mode) continues from it, the masks come with the batches
//! and the schedule is a pure function of the step, so a resumed run computes the same losses
//! as one that never stopped. The loop itself draws no random numbers.
//!
//! `[train] precision` is applied to the model after it is built or restored
//! ([`MaeModel::with_precision`]); the loop is the same for f32 and bf16, since gradients,
//! clipping, the optimiser and checkpoints see f32 parameters either way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tessera_pipeline::PipelineState;

use crate::checkpoint::{self, RngState, TrainerState};
use crate::config::ResolvedTrainConfig;
use crate::error::Error;
use crate::feeder::{BatchSource, DeviceBatch, FeedError, Feeder, Normalize, UploaderTiming};
use crate::metrics::{MetricsError, MetricsLog, RunTotals, StepMetrics, read_metrics};
use crate::objectives::mae::{MaeInput, MaeModel};
use crate::optim::{GroupedAdamW, clip_grad_norm};
use crate::pictures::{PictureError, Reconstruction, loss_curve, save_png};

/// How a run is driven (what the recipe does not say).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run directory: `config.json`, `metrics.jsonl`, `checkpoints/`, `pictures/`, `loss.png`.
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
    /// Interrupted (Ctrl-C): the step in flight was finished and checkpointed.
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
    /// A picture could not be written.
    #[error(transparent)]
    Picture(#[from] PictureError),
    /// The batch source could not be started.
    #[error("starting the input pipeline")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A batch lacks the mask of the view MAE trains on.
    #[error("batch has no mask for view {view}: the recipe's masked view must carry a random mask")]
    MissingMask {
        /// The masked view's index.
        view: usize,
    },
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
}

/// The model, optimiser and position of a run: what `train_step` advances.
struct Run<B: AutodiffBackend> {
    config: ResolvedTrainConfig,
    device: B::Device,
    model: MaeModel<B>,
    optim: GroupedAdamW<MaeModel<B>, B>,
    /// Optimiser steps done (= the next step's index).
    step: u64,
    /// Pipeline state after the last batch a finished step consumed.
    pipeline: Option<PipelineState>,
    /// The trainer's own RNG (MAE draws nothing from it: masks come with the batches; saved
    /// so that objectives that do draw resume exactly).
    rng: ChaCha8Rng,
}

/// What one step produced.
struct StepOutput<B: Backend> {
    loss: f64,
    lr: f64,
    images: u64,
    epoch: u64,
    /// The first micro-batch's inputs and prediction, kept when a picture is due.
    picture: Option<(Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 2>)>,
}

/// Train `config`'s model on batches from `start_source` (called with the state to resume
/// from, `None` for a fresh run). `stop` is polled between steps (Ctrl-C sets it).
pub fn run<B, S, E>(
    config: &ResolvedTrainConfig,
    device: &B::Device,
    start_source: impl FnOnce(Option<PipelineState>) -> Result<S, E>,
    options: &RunOptions,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    S: BatchSource,
    E: std::error::Error + Send + Sync + 'static,
{
    let dir = &options.run_dir;
    std::fs::create_dir_all(dir.join(layout::PICTURES)).map_err(|source| TrainError::Config {
        path: dir.join(layout::PICTURES),
        source,
    })?;
    write_config(dir, config)?;

    // Model, optimiser and position: from the newest checkpoint, or fresh.
    let mut run = match options
        .resume
        .then(|| checkpoint::latest(dir))
        .transpose()?
        .flatten()
    {
        Some(path) => {
            let fresh = config.model.init::<B>(device);
            let restored = checkpoint::load(&path, fresh, config.adamw, device)?;
            if restored.state.config.model != config.model {
                return Err(Error::CheckpointMismatch {
                    path,
                    what: "the model in the recipe differs from the checkpoint's".into(),
                }
                .into());
            }
            let step = restored.state.step;
            observer.event(&format!("resuming from {} at step {step}", path.display()));
            let rng = restored
                .state
                .rng
                .restore()
                .unwrap_or_else(|| ChaCha8Rng::seed_from_u64(config.seed));
            Run {
                config: config.clone(),
                device: device.clone(),
                // Precision is not part of a checkpoint: the recipe's applies on resume.
                model: restored.model.with_precision(config.precision),
                optim: restored.optim,
                step,
                // Step 0 has consumed nothing: start the stream from its beginning.
                pipeline: (step > 0).then_some(restored.state.pipeline),
                rng,
            }
        }
        None => {
            B::seed(device, config.seed);
            let model = config
                .model
                .init::<B>(device)
                .with_precision(config.precision);
            let optim = GroupedAdamW::new(config.adamw, &model);
            let rng = ChaCha8Rng::seed_from_u64(config.seed);
            Run {
                config: config.clone(),
                device: device.clone(),
                model,
                optim,
                step: 0,
                pipeline: None,
                rng,
            }
        }
    };
    let first_step = run.step;
    let metrics_path = dir.join(layout::METRICS);
    let mut log = if first_step > 0 {
        MetricsLog::resume(&metrics_path, first_step)?
    } else {
        MetricsLog::create(&metrics_path)?
    };

    let source = start_source(run.pipeline).map_err(|e| TrainError::Source(Box::new(e)))?;
    let mut feeder = Feeder::<B::InnerBackend>::start(
        source,
        device.clone(),
        options.normalize,
        options.feeder_depth,
    );

    let total = config.total_steps();
    let last = options.stop_after.map_or(total, |s| s.min(total));
    observer.started(first_step, last);
    let started = Instant::now();
    let mut totals = RunTotals::default();
    let mut pictures = Vec::new();
    let mut last_loss = None;
    let mut checkpoint_path = None;
    let mut step_began = Instant::now();
    let stopped = loop {
        if run.step >= total {
            break StopReason::Finished;
        }
        if run.step >= last {
            break StopReason::StepLimit;
        }
        if stop.load(Ordering::Relaxed) {
            break StopReason::Interrupted;
        }
        if options.time_limit.is_some_and(|t| started.elapsed() >= t) {
            break StopReason::TimeLimit;
        }

        // Data: `accum_steps` uploaded micro-batches, timing the wait for each.
        let mut micro = Vec::with_capacity(config.accum_steps);
        let mut data_wait = Duration::ZERO;
        for _ in 0..config.accum_steps {
            match feeder.next() {
                Some((batch, waited)) => {
                    data_wait += waited;
                    micro.push(batch?);
                }
                None => break,
            }
        }
        if micro.len() < config.accum_steps {
            break StopReason::EndOfData;
        }

        let due_picture = (options.picture_every > 0
            && (run.step + 1) % options.picture_every == 0)
            || run.step + 1 == last;
        let out = match run.train_step(micro, due_picture) {
            Ok(out) => out,
            Err(StepError::NonFinite { loss, lr }) => {
                let path = run.save(dir)?;
                return Err(TrainError::NonFiniteLoss {
                    step: run.step,
                    loss,
                    lr,
                    checkpoint: path,
                });
            }
            Err(StepError::Train(e)) => return Err(e),
        };

        // Metrics: one record per step, time measured end to end (data wait included).
        let now = Instant::now();
        let m = StepMetrics::new(
            run.step - 1,
            out.epoch,
            out.loss,
            out.lr,
            out.images,
            now - step_began,
            data_wait,
        );
        log.append(&m)?;
        totals.add(&m);
        last_loss = Some(out.loss);
        observer.step(&m);
        if run.step % config.log_every == 0 {
            tracing::debug!(
                step = m.step,
                loss = m.loss,
                lr = m.lr,
                ips = m.images_per_second,
                "step"
            );
        }

        if let Some((images, pred, mask)) = out.picture {
            let path = dir
                .join(layout::PICTURES)
                .join(format!("step_{:07}.png", run.step));
            write_reconstruction(&path, images, pred, mask, &run, options)?;
            observer.event(&format!("picture {}", path.display()));
            pictures.push(path);
        }
        if config.checkpoint_every > 0 && run.step % config.checkpoint_every == 0 && run.step < last
        {
            let path = run.save(dir)?;
            observer.event(&format!("checkpoint {}", path.display()));
            checkpoint_path = Some(path);
        }
        // Reset the clock so checkpoint and picture time is not billed to the next step.
        step_began = Instant::now();
    };

    // The end, whatever the reason: a checkpoint of the last finished step (also on Ctrl-C).
    if run.step > first_step || checkpoint::latest(dir)?.is_none() {
        let path = run.save(dir)?;
        observer.event(&format!("checkpoint {}", path.display()));
        checkpoint_path = Some(path);
    } else if checkpoint_path.is_none() {
        checkpoint_path = checkpoint::latest(dir)?;
    }
    let uploader = feeder.timing();
    drop(feeder);

    let loss_path = dir.join(layout::LOSS_CURVE);
    let points: Vec<(u64, f64)> = read_metrics(&metrics_path)?
        .iter()
        .map(|m| (m.step, m.loss))
        .collect();
    save_png(&loss_curve(&points, 960, 540), &loss_path)?;

    Ok(RunSummary {
        first_step,
        steps_done: run.step,
        stopped,
        last_loss,
        images_per_second: totals.images_per_second(),
        data_wait_fraction: totals.data_wait_fraction(),
        checkpoint: checkpoint_path,
        pictures,
        loss_curve: loss_path,
        metrics: metrics_path,
        uploader,
    })
}

/// Failures inside a step.
enum StepError {
    NonFinite { loss: f64, lr: f64 },
    Train(TrainError),
}

impl<B: AutodiffBackend> Run<B> {
    /// One optimiser step over the micro-batches.
    fn train_step(
        &mut self,
        micro: Vec<DeviceBatch<B::InnerBackend>>,
        keep_picture: bool,
    ) -> Result<StepOutput<B::InnerBackend>, StepError> {
        let accum = micro.len();
        let view = self.config.masked_view;

        // 1. Schedule lookup: the lr is a pure function of the step.
        let lr = self.config.schedule.lr(self.step);

        let mut accumulator = GradientsAccumulator::<MaeModel<B>>::new();
        let mut loss_sum = 0.0;
        let mut images = 0;
        let mut picture = None;
        let mut last_state = None;
        for (i, batch) in micro.into_iter().enumerate() {
            let DeviceBatch {
                mut views,
                mut masks,
                state,
                len,
                ..
            } = batch;
            let mask = masks.get_mut(view).and_then(Option::take);
            let (Some(mask), true) = (mask, view < views.len()) else {
                return Err(StepError::Train(TrainError::MissingMask { view }));
            };
            let images_inner = views.swap_remove(view);
            let kept_inputs =
                (keep_picture && i == 0).then(|| (images_inner.clone(), mask.mask.clone()));

            // 2. Forward.
            let input = MaeInput {
                images: Tensor::from_inner(images_inner),
                ids_keep: Tensor::from_inner(mask.ids_keep),
                ids_restore: Tensor::from_inner(mask.ids_restore),
                mask: Tensor::from_inner(mask.mask),
            };
            let out = self.model.forward(input);

            // 3. Non-finite check before anything touches the weights.
            let loss_value: f64 = out.loss.clone().into_scalar().elem();
            if !loss_value.is_finite() {
                return Err(StepError::NonFinite {
                    loss: loss_value,
                    lr,
                });
            }
            loss_sum += loss_value;
            images += len as u64;
            last_state = Some(state);
            if let Some((imgs, m)) = kept_inputs {
                picture = Some((imgs, out.pred.clone().inner(), m));
            }

            // 4. Backward; micro-batch gradients are averaged by scaling the loss.
            let grads = (out.loss / accum as f64).backward();
            let grads = GradientsParams::from_grads(grads, &self.model);
            accumulator.accumulate(&self.model, grads);
        }

        // 5. Clip (optional) and step.
        let mut grads = accumulator.grads();
        if let Some(max_norm) = self.config.clip_grad {
            clip_grad_norm::<B, _>(&self.model, &mut grads, max_norm, &self.device);
        }
        self.model = self.optim.step(lr, self.model.clone(), grads);
        self.step += 1;
        self.pipeline = last_state;

        Ok(StepOutput {
            loss: loss_sum / accum as f64,
            lr,
            images,
            epoch: last_state.map_or(0, |s| s.epoch),
            picture,
        })
    }

    /// Checkpoint the current state (atomic; older ones pruned to `keep_checkpoints`).
    fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        let pipeline = self.pipeline.unwrap_or(PipelineState {
            seed: self.config.seed,
            epoch: 0,
            rank: 0,
            world_size: self.config.world_size,
            samples_consumed: 0,
        });
        let state = TrainerState {
            step: self.step,
            pipeline,
            rng: RngState::capture(&self.rng),
            config: self.config.clone(),
        };
        Ok(checkpoint::save(
            dir,
            &self.model,
            &self.optim,
            &state,
            self.config.keep_checkpoints,
        )?)
    }
}

fn write_config(dir: &Path, config: &ResolvedTrainConfig) -> Result<(), TrainError> {
    let path = dir.join(layout::CONFIG);
    let tmp = dir.join("config.json.tmp");
    let io = |source| TrainError::Config {
        path: path.clone(),
        source,
    };
    let text = serde_json::to_vec_pretty(config).map_err(|e| io(std::io::Error::other(e)))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)
}

fn write_reconstruction<B: AutodiffBackend>(
    path: &Path,
    images: Tensor<B::InnerBackend, 4>,
    pred: Tensor<B::InnerBackend, 3>,
    mask: Tensor<B::InnerBackend, 2>,
    run: &Run<B>,
    options: &RunOptions,
) -> Result<(), TrainError> {
    let [n, _, h, w] = images.dims();
    let k = options.picture_samples.min(n).max(1);
    let host = |data: burn::tensor::TensorData, name: &str| {
        data.convert::<f32>().into_vec::<f32>().map_err(|e| {
            TrainError::Trainer(Error::TensorData {
                name: name.to_string(),
                message: format!("{e:?}"),
            })
        })
    };
    let images = host(images.narrow(0, 0, k).into_data(), "images")?;
    let pred = host(pred.narrow(0, 0, k).into_data(), "pred")?;
    let mask = host(mask.narrow(0, 0, k).into_data(), "mask")?;
    let recon = Reconstruction {
        n: k,
        height: h,
        width: w,
        patch: run.config.model.encoder.patch_size,
        images,
        pred,
        mask,
        norm_pix: run.config.model.norm_pix_loss,
    };
    save_png(&recon.render(options.normalize)?, path)?;
    Ok(())
}
