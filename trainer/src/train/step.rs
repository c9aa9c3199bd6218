//! One run's method, model, optimiser and position, and what advances them: the optimiser
//! step over a set of micro-batches, and checkpoints.

use std::path::{Path, PathBuf};

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tessera_pipeline::PipelineState;

use super::clip::clip_grad_per_parameter;
use super::{Observer, RunOptions, TrainError};
use crate::backbone::TimmWeights;
use crate::checkpoint::{self, RngState, Saved, TrainerState};
use crate::config::{ClipGradMode, ResolvedTrainConfig};
use crate::error::Error;
use crate::feeder::DeviceBatch;
use crate::objectives::{Method, StepContext};
use crate::optim::{Optim, clip_grad_norm};

/// The model, optimiser and position of a run: what `train_step` advances.
pub(super) struct Run<B: AutodiffBackend, M: Method<B>> {
    pub(super) config: ResolvedTrainConfig,
    pub(super) device: B::Device,
    pub(super) method: M,
    pub(super) model: M::Model,
    /// The method's untrained state (teacher, queue, centre).
    pub(super) state: M::State,
    pub(super) optim: Optim<M::Model, B>,
    /// Optimiser steps done (= the next step's index).
    pub(super) step: u64,
    /// Pipeline state after the last batch a finished step consumed.
    pub(super) pipeline: Option<PipelineState>,
    /// The trainer's own RNG (no method draws from it yet: masks come with the batches;
    /// saved so that one that does resumes exactly).
    pub(super) rng: ChaCha8Rng,
}

/// What one step produced.
pub(super) struct StepOutput {
    pub(super) loss: f64,
    /// The method's named loss parts, averaged over the micro-batches.
    pub(super) parts: Vec<(&'static str, f64)>,
    pub(super) lr: f64,
    pub(super) weight_decay: f64,
    /// The teacher's EMA momentum of this step (teacher methods).
    pub(super) momentum: Option<f64>,
    pub(super) images: u64,
    pub(super) epoch: u64,
    /// The picture the method drew of the first micro-batch, when one was due.
    pub(super) picture: Option<image::RgbImage>,
}

/// Failures inside a step.
pub(super) enum StepError {
    NonFinite { loss: f64, lr: f64 },
    Train(TrainError),
}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        StepError::Train(e.into())
    }
}

/// The newest checkpoint of `run_dir` that verifies; each newer, damaged one is reported to
/// `observer` (and logged). An error when there are checkpoints but none is intact:
/// starting afresh beside them would be pruned in their favour.
fn resume_point(run_dir: &Path, observer: &mut dyn Observer) -> Result<Option<PathBuf>, Error> {
    let newest = checkpoint::newest(run_dir)?;
    for skipped in &newest.skipped {
        observer.event(&format!(
            "checkpoint {} is damaged, falling back to an older one: {}",
            skipped.dir.display(),
            tessera_shards::error::Chain(&skipped.error)
        ));
    }
    match (newest.dir, newest.skipped.into_iter().next()) {
        (None, Some(first)) => Err(Error::NoIntactCheckpoint {
            path: run_dir.to_path_buf(),
            newest: first.dir,
            source: Box::new(first.error),
        }),
        (dir, _) => Ok(dir),
    }
}

impl<B: AutodiffBackend, M: Method<B>> Run<B, M> {
    /// The model, optimiser and position from the newest checkpoint in the run directory
    /// when resuming (and there is one), else fresh from the recipe.
    pub(super) fn start(
        method: M,
        config: &ResolvedTrainConfig,
        device: &B::Device,
        options: &RunOptions,
        observer: &mut dyn Observer,
    ) -> Result<Self, TrainError> {
        let dir = &options.run_dir;
        let resume_from = if options.resume {
            resume_point(dir, observer)?
        } else {
            None
        };
        let run = match resume_from {
            Some(path) => {
                let restored = checkpoint::load::<B, M>(&path, &method, config, device)?;
                let saved = &restored.state.config;
                if saved.backbone != config.backbone || saved.method != config.method {
                    return Err(Error::CheckpointMismatch {
                        path,
                        what: "the model or method in the recipe differs from the checkpoint's"
                            .into(),
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
                    model: method.with_precision(restored.model, config.precision),
                    state: restored.method_state,
                    method,
                    optim: restored.optim,
                    step,
                    // Step 0 has consumed nothing: start the stream from its beginning.
                    pipeline: (step > 0).then_some(restored.state.pipeline),
                    rng,
                }
            }
            None => {
                B::seed(device, config.seed);
                let mut backbone = config.backbone.init::<B>(device);
                if let Some(path) = &config.pretrained {
                    let weights = TimmWeights::read(path)?;
                    backbone = backbone.load_timm(&weights)?;
                    observer.event(&format!("backbone weights from {}", path.display()));
                }
                let (model, state) = method.init(backbone, device);
                let model = method.with_precision(model, config.precision);
                let optim = Optim::new(config.optim, &model);
                Run {
                    config: config.clone(),
                    device: device.clone(),
                    method,
                    model,
                    state,
                    optim,
                    step: 0,
                    pipeline: None,
                    rng: ChaCha8Rng::seed_from_u64(config.seed),
                }
            }
        };
        Ok(run)
    }

    /// Where the loop is, for the method.
    fn context(&self, picture: bool, micro_batch: usize, options: &RunOptions) -> StepContext {
        StepContext {
            seed: self.config.seed,
            micro_batch,
            step: self.step,
            total_steps: self.config.total_steps(),
            steps_per_epoch: self.config.steps_per_epoch,
            picture,
            picture_samples: options.picture_samples,
            normalize: options.normalize,
        }
    }

    /// One optimiser step over the micro-batches.
    pub(super) fn train_step(
        &mut self,
        micro: Vec<DeviceBatch<B::InnerBackend>>,
        keep_picture: bool,
        options: &RunOptions,
    ) -> Result<StepOutput, StepError> {
        let accum = micro.len();

        // 1. Schedule lookup: lr and weight decay are pure functions of the step.
        let lr = self.config.schedule.lr(self.step);
        let weight_decay = self.config.weight_decay.value(self.step);

        let mut accumulator = GradientsAccumulator::<M::Model>::new();
        let mut loss_sum = 0.0;
        let mut parts: Vec<(&'static str, f64)> = Vec::new();
        let mut images = 0;
        let mut picture = None;
        let mut last_state = None;
        for (i, batch) in micro.into_iter().enumerate() {
            let ctx = self.context(keep_picture && i == 0, i, options);
            let (len, state) = (batch.len, batch.state);

            // 2. Forward.
            let out = self
                .method
                .forward(&self.model, &mut self.state, batch, &ctx)?;

            // 3. Non-finite check before anything touches the weights.
            let loss_value: f64 = out.loss.clone().into_scalar().elem();
            if !loss_value.is_finite() {
                return Err(StepError::NonFinite {
                    loss: loss_value,
                    lr,
                });
            }
            loss_sum += loss_value;
            for (name, value) in out.parts {
                let value: f64 = value.into_scalar().elem::<f64>() / accum as f64;
                match parts.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, sum)) => *sum += value,
                    None => parts.push((name, value)),
                }
            }
            images += len as u64;
            last_state = Some(state);
            picture = picture.or(out.picture);

            // 4. Backward; micro-batch gradients are averaged by scaling the loss.
            let grads = (out.loss / accum as f64).backward();
            let grads = GradientsParams::from_grads(grads, &self.model);
            accumulator.accumulate(&self.model, grads);
        }

        // 5. The method's say on the gradients, clipping (optional), the optimiser step.
        let ctx = self.context(false, 0, options);
        let momentum = self.method.teacher_momentum(&ctx);
        let mut grads = accumulator.grads();
        self.method.adjust_gradients(&self.model, &mut grads, &ctx);
        match (self.config.clip_grad, self.config.clip_grad_mode) {
            (Some(max_norm), ClipGradMode::Global) => {
                clip_grad_norm::<B, _>(&self.model, &mut grads, max_norm, &self.device);
            }
            (Some(max_norm), ClipGradMode::PerParameter) => {
                clip_grad_per_parameter::<B, _>(&self.model, &mut grads, max_norm);
            }
            (None, _) => {}
        }
        let model = self.optim.step(lr, weight_decay, self.model.clone(), grads);

        // 6. The method's own updates: teacher EMA, queues, prototypes.
        // (A module's clone shares its tensors: nothing is copied.)
        let (model, state) = self.method.after_step(model, self.state.clone(), &ctx);
        self.model = model;
        self.state = state;
        self.step += 1;
        self.pipeline = last_state;

        Ok(StepOutput {
            loss: loss_sum / accum as f64,
            parts,
            lr,
            weight_decay,
            momentum,
            images,
            epoch: last_state.map_or(0, |s| s.epoch),
            picture,
        })
    }

    /// Checkpoint the current state (atomic; older ones pruned to `keep_checkpoints`).
    pub(super) fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
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
        let saved = Saved::<B, M> {
            model: &self.model,
            optim: &self.optim,
            method_state: &self.state,
        };
        Ok(checkpoint::save(
            dir,
            saved,
            &state,
            self.config.keep_checkpoints,
        )?)
    }
}
