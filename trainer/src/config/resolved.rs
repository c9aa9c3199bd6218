//! What a run derives from its recipe: where MAE's input sits in the batch
//! ([`MaskedView`]) and the resolved run config ([`ResolvedTrainConfig`]: effective batch,
//! absolute learning rate, schedule), written to `runs/<id>/config.json` before step 0.

use serde::{Deserialize, Serialize};
use tessera_pipeline::Recipe;
use tessera_pipeline::masks::MaskSpec;

use super::TrainerConfig;
use crate::error::{Error, Result};
use crate::objectives::mae::MaeConfig;
use crate::optim::AdamWSettings;
use crate::precision::Precision;
use crate::schedule::WarmupCosine;

impl TrainerConfig {
    /// Index (in the batch's view order) of the one view with a random (MAE) mask, checked
    /// against the model's image and patch size.
    pub fn masked_view(&self, recipe: &Recipe) -> Result<MaskedView> {
        let mae = self.mae()?;
        let mut found = None;
        for (index, instance) in recipe.view_instances().iter().enumerate() {
            let spec = &recipe.views[instance.spec];
            if let Some(MaskSpec::Random { ratio, patch_size }) = &spec.mask {
                if found.is_some() {
                    return Err(Error::config(
                        "recipe",
                        "views",
                        "MAE takes exactly one view with a `random` mask",
                    ));
                }
                found = Some((index, spec.size as usize, *patch_size as usize, *ratio));
            }
        }
        let Some((index, size, patch, ratio)) = found else {
            return Err(Error::config(
                "recipe",
                "views",
                "MAE needs one view with a `random` mask ([views.mask] kind = \"random\")",
            ));
        };
        if size != mae.encoder.img_size {
            return Err(Error::config(
                "model",
                "img_size",
                format!(
                    "{} differs from the masked view's size {size}",
                    mae.encoder.img_size
                ),
            ));
        }
        if patch != mae.encoder.patch_size {
            return Err(Error::config(
                "model",
                "patch_size",
                format!(
                    "{} differs from the mask's patch_size {patch}",
                    mae.encoder.patch_size
                ),
            ));
        }
        Ok(MaskedView {
            index,
            mask_ratio: ratio,
        })
    }

    /// Derives the run's numbers. `samples_per_epoch` (from the shard index, per rank) is
    /// needed when the length or the warmup is given in epochs.
    pub fn resolve(
        &self,
        recipe: &Recipe,
        samples_per_epoch: Option<u64>,
        world_size: u32,
    ) -> Result<ResolvedTrainConfig> {
        let (t, o) = (&self.train, &self.optim);
        let model = self.mae()?;
        let view = self.masked_view(recipe)?;
        let micro_batch = recipe.data.batch_size;
        let world = world_size.max(1) as usize;
        let accum_steps = match (t.batch_size, t.accum_steps) {
            (Some(batch), _) => {
                if batch % (micro_batch * world) != 0 {
                    return Err(Error::config(
                        "train",
                        "batch_size",
                        format!(
                            "{batch} is not a multiple of data.batch_size {micro_batch} x {world} ranks; \
                             the nearest are {} and {}",
                            (batch / (micro_batch * world)).max(1) * micro_batch * world,
                            (batch / (micro_batch * world) + 1) * micro_batch * world
                        ),
                    ));
                }
                batch / (micro_batch * world)
            }
            (None, accum) => accum.unwrap_or(1),
        };
        let effective_batch = micro_batch * accum_steps * world;
        let steps_per_epoch =
            samples_per_epoch.map(|n| (n / (micro_batch * accum_steps) as u64).max(1));
        let in_steps = |key: &str, epochs: f64| -> Result<u64> {
            let per = steps_per_epoch.ok_or_else(|| {
                Error::config(
                    "train",
                    key,
                    "given in epochs but the data set's size is unknown; give steps instead",
                )
            })?;
            Ok((epochs * per as f64).round() as u64)
        };
        let total_steps = match (t.steps, t.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => in_steps("epochs", e)?.max(1),
            (None, None) => {
                return Err(Error::config(
                    "train",
                    "epochs",
                    "set exactly one of `epochs` and `steps`",
                ));
            }
        };
        let warmup_steps = match (t.warmup_steps, t.warmup_epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => in_steps("warmup_epochs", e)?,
            (None, None) => 0,
        };
        if warmup_steps > total_steps {
            return Err(Error::config(
                "train",
                "warmup_steps",
                format!("warmup of {warmup_steps} steps is longer than the run's {total_steps}"),
            ));
        }
        let lr = o.lr.unwrap_or(o.base_lr * effective_batch as f64 / 256.0);
        if o.min_lr > lr {
            return Err(Error::config(
                "optim",
                "min_lr",
                format!("{} is above the peak lr {lr}", o.min_lr),
            ));
        }
        let num_patches = model.encoder.num_patches();
        Ok(ResolvedTrainConfig {
            recipe: recipe.source.clone(),
            num_patches,
            num_keep: ((num_patches as f64) * (1.0 - view.mask_ratio)) as usize,
            model,
            masked_view: view.index,
            mask_ratio: view.mask_ratio,
            micro_batch,
            accum_steps,
            world_size: world as u32,
            effective_batch,
            base_lr: o
                .lr
                .map_or(o.base_lr, |lr| lr * 256.0 / effective_batch as f64),
            schedule: WarmupCosine {
                peak_lr: lr,
                min_lr: o.min_lr,
                warmup_steps,
                total_steps,
            },
            adamw: AdamWSettings {
                betas: (o.betas[0] as f32, o.betas[1] as f32),
                eps: o.eps as f32,
                weight_decay: o.weight_decay as f32,
            },
            clip_grad: o.clip_grad,
            samples_per_epoch,
            steps_per_epoch,
            checkpoint_every: t.checkpoint_every,
            keep_checkpoints: t.keep_checkpoints,
            seed: t.seed.unwrap_or(recipe.data.seed),
            precision: t.precision,
            log_every: t.log_every.max(1),
        })
    }
}

/// Where MAE's input is in the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskedView {
    /// Index into `Batch::views` / `Batch::masks`.
    pub index: usize,
    /// The mask ratio the pipeline applies.
    pub mask_ratio: f64,
}

/// Everything a run derives from its recipe, written to `runs/<id>/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedTrainConfig {
    /// The recipe's name or path.
    pub recipe: String,
    /// The model, every variant field filled in.
    pub model: MaeConfig,
    /// Index of the masked view in the batch.
    pub masked_view: usize,
    /// Fraction of patches masked.
    pub mask_ratio: f64,
    /// Patches per image `L`.
    pub num_patches: usize,
    /// Visible patches per image `K` (as the pipeline computes it, `L x (1 - ratio)` floored).
    pub num_keep: usize,
    /// Samples per micro-batch per rank (`data.batch_size`).
    pub micro_batch: usize,
    /// Micro-batches per optimiser step.
    pub accum_steps: usize,
    /// Data-parallel ranks.
    pub world_size: u32,
    /// Samples per optimiser step over all ranks.
    pub effective_batch: usize,
    /// Learning rate per 256 samples (derived back from `lr` when that was given).
    pub base_lr: f64,
    /// Peak lr, floor, warmup and total steps.
    pub schedule: WarmupCosine,
    /// AdamW hyper-parameters.
    pub adamw: AdamWSettings,
    /// Global gradient-norm clip, if any.
    pub clip_grad: Option<f64>,
    /// Samples per epoch per rank, if known.
    pub samples_per_epoch: Option<u64>,
    /// Optimiser steps per epoch (`samples / (micro_batch x accum_steps)`, at least 1), if known.
    pub steps_per_epoch: Option<u64>,
    /// Optimiser steps between checkpoints (0 = end only).
    pub checkpoint_every: u64,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Seed of initialisation and the trainer's RNG.
    pub seed: u64,
    /// Floating-point policy.
    pub precision: Precision,
    /// Optimiser steps between metric lines.
    pub log_every: u64,
}

impl ResolvedTrainConfig {
    /// The absolute peak learning rate.
    pub fn lr(&self) -> f64 {
        self.schedule.peak_lr
    }

    /// Optimiser steps of the run.
    pub fn total_steps(&self) -> u64 {
        self.schedule.total_steps
    }
}

/// A tiny, complete run config for tests elsewhere in the crate (8x8 images, patch 4).
#[cfg(test)]
pub(crate) fn tiny_resolved_for_tests() -> ResolvedTrainConfig {
    let text = r#"
[data]
batch_size = 2

[[views]]
name = "image"
size = 8
[views.mask]
kind = "random"
ratio = 0.75
patch_size = 4

[model]
arch = "vit_tiny_patch16_224"
img_size = 8
patch_size = 4
embed_dim = 16
depth = 1
num_heads = 2
decoder_embed_dim = 16
decoder_depth = 1
decoder_num_heads = 2

[train]
steps = 10
warmup_steps = 2

[optim]
lr = 1e-2
"#;
    let recipe = Recipe::parse(text, "tiny").expect("tiny recipe parses");
    TrainerConfig::from_recipe(&recipe)
        .and_then(|c| c.resolve(&recipe, None, 1))
        .expect("tiny recipe resolves")
}
