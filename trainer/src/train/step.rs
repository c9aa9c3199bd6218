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
use crate::distributed::{Agreed, Collective, Contribution, GlobalBatch, StepSync};
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
    /// The per-step exchange with the other ranks; `None` alone.
    pub(super) sync: Option<StepSync<B::InnerBackend>>,
    /// Every rank's pipeline position after the last step (from the exchange).
    pub(super) rank_pipelines: Vec<Option<PipelineState>>,
    /// The other ranks, for the methods' global-batch operations; `None` alone.
    pub(super) global: Option<GlobalBatch>,
}

/// What this process was asked before a step (polled by the loop).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Requests {
    /// Stop after this step (signal, time limit).
    pub(super) stop: bool,
    /// Write a checkpoint after this step (SIGUSR1).
    pub(super) checkpoint: bool,
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
    /// What all ranks asked for (this process's requests alone when it is alone).
    pub(super) requests: Requests,
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

/// Where this rank's stream continues: its own saved position when the checkpoint was
/// written by as many ranks; otherwise the saved epoch from its start, split for this world
/// (said to `observer`).
fn rank_position(
    state: &TrainerState,
    world: &crate::distributed::World,
    observer: &mut dyn Observer,
) -> PipelineState {
    let saved_world = state.pipeline.world_size.max(1);
    if saved_world == world.world_size {
        if let Some(p) = state.ranks.iter().find(|p| p.rank == world.rank) {
            return *p;
        }
        if world.world_size == 1 {
            return state.pipeline;
        }
    }
    let epoch = state
        .ranks
        .iter()
        .map(|p| p.epoch)
        .min()
        .unwrap_or(state.pipeline.epoch);
    observer.event(&format!(
        "the checkpoint was written by {saved_world} rank(s), this run has {}: epoch {epoch} \
         restarts from its beginning in the new split",
        world.world_size
    ));
    PipelineState {
        seed: state.pipeline.seed,
        epoch,
        rank: world.rank,
        world_size: world.world_size,
        samples_consumed: 0,
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
                let pipeline = rank_position(&restored.state, &options.world, observer);
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
                    pipeline: (step > 0).then_some(pipeline),
                    rng,
                    sync: None,
                    rank_pipelines: Vec::new(),
                    global: None,
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
                    sync: None,
                    rank_pipelines: Vec::new(),
                    global: None,
                }
            }
        };
        let mut run = run;
        if options.world.is_distributed() {
            observer.event(&format!(
                "rank {} of {}: joining the collective at {}",
                options.world.rank,
                options.world.world_size,
                options
                    .world
                    .master
                    .as_ref()
                    .map(|m| format!("{}:{}", m.host, m.port))
                    .unwrap_or_default()
            ));
            let collective = Collective::<B::InnerBackend>::join(
                &options.world,
                device,
                options.join_timeout,
                options.collective_timeout,
            )?;
            let sync = StepSync::new(collective, options.world.clone());
            sync.check_same_weights::<B, _>(&run.model, device)?;
            run.global = Some(GlobalBatch::new(
                sync.collective().clone(),
                &options.world,
                config.sync_batch_norm,
            ));
            run.sync = Some(sync);
        }
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
            global: self.global.clone(),
        }
    }

    /// One optimiser step over the micro-batches.
    pub(super) fn train_step(
        &mut self,
        micro: Vec<DeviceBatch<B::InnerBackend>>,
        keep_picture: bool,
        requests: Requests,
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

            // 2. Forward (BatchNorm over the global batch, with other ranks).
            if let Some(global) = &self.global {
                global.set_step(self.step);
            }
            let bn_scope = self.global.as_ref().map(GlobalBatch::enter_batch_norm);
            let out = self
                .method
                .forward(&self.model, &mut self.state, batch, &ctx)?;
            drop(bn_scope);

            // 3. Non-finite check before anything touches the weights (with other ranks,
            //    after the exchange, so that all of them stop together).
            let loss_value: f64 = out.loss.clone().into_scalar().elem();
            if !loss_value.is_finite() && self.sync.is_none() {
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

        // 5. With other ranks: mean gradients, mean loss, agreed requests.
        let mut grads = accumulator.grads();
        let mut loss = loss_sum / accum as f64;
        let mut requests = requests;
        if let Some(sync) = &self.sync {
            let mine = Contribution {
                loss,
                parts: parts.iter().map(|(_, v)| *v).collect(),
                images,
                stop: requests.stop,
                checkpoint: requests.checkpoint,
                pipeline: last_state,
            };
            let agreed: Agreed = sync
                .exchange::<B, _>(&self.model, &mut grads, &mine, self.step, &self.device)
                .map_err(|e| StepError::Train(TrainError::Distributed(e)))?;
            if !agreed.loss.is_finite() {
                return Err(StepError::NonFinite {
                    loss: agreed.loss,
                    lr,
                });
            }
            loss = agreed.loss;
            for ((_, v), mean) in parts.iter_mut().zip(&agreed.parts) {
                *v = *mean;
            }
            images = agreed.images;
            requests = Requests {
                stop: agreed.stop,
                checkpoint: agreed.checkpoint,
            };
            self.rank_pipelines = agreed.pipelines;
        }

        // 6. The method's say on the gradients, clipping (optional), the optimiser step.
        let ctx = self.context(false, 0, options);
        let momentum = self.method.teacher_momentum(&ctx);
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

        // 7. The method's own updates: teacher EMA, queues, prototypes.
        // (A module's clone shares its tensors: nothing is copied.)
        let (model, state) = self.method.after_step(model, self.state.clone(), &ctx);
        self.model = model;
        self.state = state;
        self.step += 1;
        self.pipeline = last_state;

        Ok(StepOutput {
            loss,
            parts,
            lr,
            weight_decay,
            momentum,
            images,
            epoch: last_state.map_or(0, |s| s.epoch),
            picture,
            requests,
        })
    }

    /// Checkpoint the current state (atomic; older ones pruned to `keep_checkpoints`).
    /// Only rank 0 writes; the others return the path it writes to.
    pub(super) fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        if self.sync.as_ref().is_some_and(|s| !s.world().is_main()) {
            return Ok(checkpoint::path_for(dir, self.step));
        }
        let pipeline = self.pipeline.unwrap_or(PipelineState {
            seed: self.config.seed,
            epoch: 0,
            rank: self.sync.as_ref().map_or(0, |s| s.world().rank),
            world_size: self.config.world_size,
            samples_consumed: 0,
        });
        let state = TrainerState {
            step: self.step,
            pipeline,
            ranks: self.rank_pipelines.iter().flatten().copied().collect(),
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
