//! What a run derives from its recipe: the resolved run config ([`ResolvedTrainConfig`]:
//! backbone, method, effective batch, absolute learning rate, schedules, optimiser),
//! written to `runs/<id>/config.json` before step 0.

use serde::{Deserialize, Serialize};
use tessera_pipeline::Recipe;

use super::{OptimSection, OptimizerName, TrainerConfig};
use crate::backbone::BackboneConfig;
use crate::error::{Error, Result};
use crate::objectives::MethodConfig;
use crate::optim::OptimSettings;
use crate::precision::Precision;
use crate::schedule::{CosineSchedule, WarmupCosine};

impl TrainerConfig {
    /// Derives the run's numbers. `samples_per_epoch` (from the shard index, per rank) is
    /// needed when the length or the warmup is given in epochs.
    pub fn resolve(
        &self,
        recipe: &Recipe,
        samples_per_epoch: Option<u64>,
        world_size: u32,
    ) -> Result<ResolvedTrainConfig> {
        let (t, o) = (&self.train, &self.optim);
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
        let base_lr = o.base_lr.unwrap_or(1.5e-4);
        let lr = o.lr.unwrap_or(base_lr * effective_batch as f64 / 256.0);
        if o.min_lr > lr {
            return Err(Error::config(
                "optim",
                "min_lr",
                format!("{} is above the peak lr {lr}", o.min_lr),
            ));
        }
        let weight_decay = o.weight_decay.unwrap_or(0.05);
        Ok(ResolvedTrainConfig {
            recipe: recipe.source.clone(),
            backbone: self.backbone.clone(),
            pretrained: self.model.pretrained.clone(),
            method: self.method.clone(),
            image_size: recipe
                .view_instances()
                .first()
                .map_or(0, |v| recipe.views[v.spec].size as usize),
            micro_batch,
            accum_steps,
            world_size: world as u32,
            effective_batch,
            base_lr: o
                .lr
                .map_or(base_lr, |lr| lr * 256.0 / effective_batch as f64),
            schedule: WarmupCosine {
                peak_lr: lr,
                min_lr: o.min_lr,
                warmup_steps,
                total_steps,
            },
            weight_decay: CosineSchedule {
                start: weight_decay,
                end: o.weight_decay_end.unwrap_or(weight_decay),
                total_steps,
            },
            optim: optim_settings(o, weight_decay),
            clip_grad: o.clip_grad,
            clip_grad_mode: o.clip_grad_mode.unwrap_or_default(),
            samples_per_epoch,
            steps_per_epoch,
            checkpoint_every: t.checkpoint_every,
            keep_checkpoints: t.keep_checkpoints,
            seed: t.seed.unwrap_or(recipe.data.seed),
            precision: t.precision,
            log_every: t.log_every.max(1),
            sync_batch_norm: t.sync_batch_norm,
        })
    }
}

/// The optimiser `[optim]` describes, with the defaults filled in.
fn optim_settings(o: &OptimSection, weight_decay: f64) -> OptimSettings {
    match o.optimizer {
        OptimizerName::Adamw => {
            let [b1, b2] = o.betas.unwrap_or([0.9, 0.95]);
            OptimSettings::AdamW {
                betas: (b1, b2),
                eps: o.eps.unwrap_or(1e-8),
                weight_decay,
            }
        }
        OptimizerName::Sgd => OptimSettings::Sgd {
            momentum: o.momentum.unwrap_or(0.9),
            nesterov: o.nesterov.unwrap_or(false),
            weight_decay,
            decay_all: o.decay_all.unwrap_or(true),
        },
        OptimizerName::Lars => OptimSettings::Lars {
            momentum: o.momentum.unwrap_or(0.9),
            eta: o.eta.unwrap_or(1e-3),
            weight_decay,
        },
    }
}

/// Everything a run derives from its recipe, written to `runs/<id>/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedTrainConfig {
    /// The recipe's name or path.
    pub recipe: String,
    /// The backbone, every variant field filled in.
    pub backbone: BackboneConfig,
    /// timm weights the backbone starts from, if any.
    pub pretrained: Option<std::path::PathBuf>,
    /// The method and its settings.
    pub method: MethodConfig,
    /// Side of the first (global) view in pixels: what evaluation cuts images to.
    pub image_size: usize,
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
    /// Weight decay per step (constant unless `weight_decay_end` is set).
    pub weight_decay: CosineSchedule,
    /// The optimiser and its hyper-parameters (the base weight decay among them).
    pub optim: OptimSettings,
    /// Gradient-norm clip, if any.
    pub clip_grad: Option<f64>,
    /// Whether `clip_grad` bounds the global norm or each parameter's.
    #[serde(default)]
    pub clip_grad_mode: super::ClipGradMode,
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
    /// BatchNorm over the global batch when there are several ranks (SyncBatchNorm).
    #[serde(default = "super::default_sync_batch_norm")]
    pub sync_batch_norm: bool,
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

/// The smallest complete MAE recipe (8x8 images, patch 4, one block of width 16): a
/// model that builds, trains and checkpoints in milliseconds, for tests and fuzzing
/// (`fuzz/fuzz_targets/checkpoint.rs`).
pub const TINY_MAE_RECIPE: &str = r#"
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

[objective]
method = "mae"
decoder_embed_dim = 16
decoder_depth = 1
decoder_num_heads = 2

[train]
steps = 10
warmup_steps = 2

[optim]
lr = 1e-2
"#;

/// A tiny, complete run config for tests elsewhere in the crate ([`TINY_MAE_RECIPE`]).
#[cfg(test)]
pub(crate) fn tiny_resolved_for_tests() -> ResolvedTrainConfig {
    let recipe = Recipe::parse(TINY_MAE_RECIPE, "tiny").expect("tiny recipe parses");
    TrainerConfig::from_recipe(&recipe)
        .and_then(|c| c.resolve(&recipe, None, 1))
        .expect("tiny recipe resolves")
}
