//! One run's model, optimiser and position, and what advances them: the optimiser step
//! over a set of micro-batches, checkpoints, and reconstruction pictures.

use std::path::{Path, PathBuf};

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::ElementConversion;
use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tessera_pipeline::PipelineState;

use super::{Observer, RunOptions, TrainError};
use crate::checkpoint::{self, RngState, TrainerState};
use crate::config::ResolvedTrainConfig;
use crate::error::Error;
use crate::feeder::DeviceBatch;
use crate::objectives::mae::{MaeInput, MaeModel};
use crate::optim::{GroupedAdamW, clip_grad_norm};
use crate::pictures::{Reconstruction, save_png};

/// The model, optimiser and position of a run: what `train_step` advances.
pub(super) struct Run<B: AutodiffBackend> {
    pub(super) config: ResolvedTrainConfig,
    pub(super) device: B::Device,
    pub(super) model: MaeModel<B>,
    pub(super) optim: GroupedAdamW<MaeModel<B>, B>,
    /// Optimiser steps done (= the next step's index).
    pub(super) step: u64,
    /// Pipeline state after the last batch a finished step consumed.
    pub(super) pipeline: Option<PipelineState>,
    /// The trainer's own RNG (MAE draws nothing from it: masks come with the batches; saved
    /// so that objectives that do draw resume exactly).
    pub(super) rng: ChaCha8Rng,
}

/// What one step produced.
pub(super) struct StepOutput<B: Backend> {
    pub(super) loss: f64,
    pub(super) lr: f64,
    pub(super) images: u64,
    pub(super) epoch: u64,
    /// The first micro-batch's inputs and prediction, kept when a picture is due.
    pub(super) picture: Option<(Tensor<B, 4>, Tensor<B, 3>, Tensor<B, 2>)>,
}

/// Failures inside a step.
pub(super) enum StepError {
    NonFinite { loss: f64, lr: f64 },
    Train(TrainError),
}

impl<B: AutodiffBackend> Run<B> {
    /// The model, optimiser and position from the newest checkpoint in the run directory
    /// when resuming (and there is one), else fresh from the recipe.
    pub(super) fn start(
        config: &ResolvedTrainConfig,
        device: &B::Device,
        options: &RunOptions,
        observer: &mut dyn Observer,
    ) -> Result<Self, TrainError> {
        let dir = &options.run_dir;
        let run = match options
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
        Ok(run)
    }

    /// One optimiser step over the micro-batches.
    pub(super) fn train_step(
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
        Ok(checkpoint::save(
            dir,
            &self.model,
            &self.optim,
            &state,
            self.config.keep_checkpoints,
        )?)
    }
}

pub(super) fn write_reconstruction<B: AutodiffBackend>(
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
