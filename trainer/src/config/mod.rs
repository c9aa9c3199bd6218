//! The trainer's sections of a recipe (`[model]`, `[train]`, `[optim]`) and the resolved run
//! config derived from them.
//!
//! Two levels, as ripgrep's low/high args and MAE's `main_pretrain.py` printout: the
//! sections are parsed as written ([`ModelSection`], [`TrainSection`], [`OptimSection`],
//! every key documented with unit and default, unknown keys rejected), then
//! [`TrainerConfig::resolve`] derives what the run actually uses ([`ResolvedTrainConfig`]:
//! effective batch, absolute learning rate, steps per epoch, warmup and total steps), which
//! the training loop writes to `runs/<id>/config.json` before step 0 and prints at start.
//!
//! The pipeline owns `[data]` and `[[views]]` (`tessera_pipeline::recipe`); the batch size
//! lives there once (`data.batch_size`, samples per micro-batch per rank) and the effective
//! batch is derived: `data.batch_size x train.accum_steps x world_size`.

use serde::{Deserialize, Serialize};
use tessera_pipeline::Recipe;

use crate::error::{Error, Result};
use crate::objectives::mae::MaeConfig;
use crate::precision::Precision;
use crate::vit::{VitConfig, check_width};

mod resolved;

#[cfg(test)]
pub(crate) use resolved::tiny_resolved_for_tests;
pub use resolved::{MaskedView, ResolvedTrainConfig};

fn default_arch() -> String {
    "vit_base_patch16_224".into()
}
fn default_decoder_embed_dim() -> usize {
    512
}
fn default_decoder_depth() -> usize {
    8
}
fn default_decoder_num_heads() -> usize {
    16
}
fn default_true() -> bool {
    true
}

/// `[model]`: the encoder variant, overrides of its shape, and the MAE decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// timm name of the encoder the shape starts from: `vit_tiny_patch16_224`,
    /// `vit_small_patch16_224`, `vit_base_patch16_224` (default) or `vit_large_patch16_224`.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// Input side in pixels. Default: the arch's (224). Must equal the masked view's `size`.
    pub img_size: Option<usize>,
    /// Patch side in pixels. Default: the arch's (16). Must equal the mask's `patch_size`.
    /// Smaller patches mean quadratically more tokens (and attention cost).
    pub patch_size: Option<usize>,
    /// Encoder width. Default: the arch's. Multiple of 4 and of `num_heads`.
    pub embed_dim: Option<usize>,
    /// Encoder blocks. Default: the arch's.
    pub depth: Option<usize>,
    /// Encoder heads. Default: the arch's.
    pub num_heads: Option<usize>,
    /// MLP width / token width. Default: the arch's (4.0).
    pub mlp_ratio: Option<f64>,
    /// MAE decoder width. Default 512 (paper). Multiple of 4 and of `decoder_num_heads`.
    #[serde(default = "default_decoder_embed_dim")]
    pub decoder_embed_dim: usize,
    /// MAE decoder blocks. Default 8 (paper); 1 still learns (paper Table 1a).
    #[serde(default = "default_decoder_depth")]
    pub decoder_depth: usize,
    /// MAE decoder heads. Default 16.
    #[serde(default = "default_decoder_num_heads")]
    pub decoder_num_heads: usize,
    /// Targets are each patch's pixels normalised by the patch's mean and std. Default true
    /// (paper: +0.5% top-1 over raw pixels).
    #[serde(default = "default_true")]
    pub norm_pix_loss: bool,
}

fn default_checkpoint_every() -> u64 {
    1000
}
fn default_keep_checkpoints() -> usize {
    3
}
fn default_log_every() -> u64 {
    10
}

/// `[train]`: length, warmup, accumulation, checkpoints, seed and precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Run length in epochs (passes over the data set; fractions allowed). Exactly one of
    /// `epochs` and `steps`. Needs the data set's size, known from the shard index.
    pub epochs: Option<f64>,
    /// Run length in optimiser steps. Exactly one of `epochs` and `steps`.
    pub steps: Option<u64>,
    /// Linear warmup in epochs. At most one of `warmup_epochs` and `warmup_steps`;
    /// default 0 (none). MAE: 40 of 800.
    pub warmup_epochs: Option<f64>,
    /// Linear warmup in optimiser steps.
    pub warmup_steps: Option<u64>,
    /// Effective batch: samples per optimiser step over all ranks (MAE: 4096). When set,
    /// `accum_steps` is derived as `batch_size / (data.batch_size x world_size)`, which must
    /// divide exactly; do not set both. Default: `data.batch_size x accum_steps x world_size`.
    pub batch_size: Option<usize>,
    /// Micro-batches of `data.batch_size` accumulated per optimiser step. Default 1.
    /// Raises the effective batch (and so the lr) without raising memory.
    pub accum_steps: Option<usize>,
    /// Optimiser steps between checkpoints; 0 = only at the end (and on interrupt).
    /// Default 1000.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Newest complete checkpoints kept; older ones are deleted. Default 3, at least 1.
    #[serde(default = "default_keep_checkpoints")]
    pub keep_checkpoints: usize,
    /// Seed of the model's initialisation and the trainer's own RNG. Default: `data.seed`.
    pub seed: Option<u64>,
    /// Floating-point policy: `"f32"` (default) or `"bf16"` (matmuls in bf16 over f32 master
    /// weights, optimiser state and loss; see [`crate::precision`]). Worth it on GPUs with
    /// bf16 tensor cores; on CPU (`Flex`) bf16 is slower than f32.
    #[serde(default)]
    pub precision: Precision,
    /// Optimiser steps between metric lines. Default 10.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
}

fn default_base_lr() -> f64 {
    1.5e-4
}
fn default_weight_decay() -> f64 {
    0.05
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.95]
}
fn default_eps() -> f64 {
    1e-8
}

/// `[optim]`: AdamW and the learning-rate scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Learning rate per 256 samples of effective batch: `lr = base_lr x batch / 256`.
    /// Default 1.5e-4 (MAE). Ignored when `lr` is set.
    #[serde(default = "default_base_lr")]
    pub base_lr: f64,
    /// Absolute peak learning rate, overriding `base_lr` scaling. Default: unset.
    pub lr: Option<f64>,
    /// Floor of the cosine decay. Default 0.
    #[serde(default)]
    pub min_lr: f64,
    /// Decoupled weight decay of matrices (not biases, norms or tokens). Default 0.05.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Adam `(beta1, beta2)`. Default `[0.9, 0.95]` (MAE; PyTorch's 0.999 is slower to adapt).
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Adam denominator epsilon. Default 1e-8 (PyTorch; burn's own default is 1e-5).
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip gradients to this global L2 norm; unset = no clipping (MAE pretraining).
    pub clip_grad: Option<f64>,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            base_lr: default_base_lr(),
            lr: None,
            min_lr: 0.0,
            weight_decay: default_weight_decay(),
            betas: default_betas(),
            eps: default_eps(),
            clip_grad: None,
        }
    }
}

/// The trainer's sections of one recipe, parsed and checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerConfig {
    /// `[model]`.
    pub model: ModelSection,
    /// `[train]`.
    pub train: TrainSection,
    /// `[optim]` (all defaults when absent).
    pub optim: OptimSection,
}

fn parse_section<T: serde::de::DeserializeOwned>(
    section: &'static str,
    table: &toml::Table,
) -> Result<T> {
    // Through text so that the deserialiser's message points at the key (line, column, name).
    let text = toml::to_string(table).map_err(|e| Error::config(section, "-", e.to_string()))?;
    toml::from_str(&text).map_err(|source| Error::ConfigParse { section, source })
}

impl TrainerConfig {
    /// Parses `[model]`, `[train]` and `[optim]` of `recipe` and checks them against its views.
    pub fn from_recipe(recipe: &Recipe) -> Result<Self> {
        for (name, section) in [
            ("schedule", &recipe.schedule),
            ("objective", &recipe.objective),
        ] {
            if section.is_some() {
                return Err(Error::config(
                    "recipe",
                    name,
                    "this section is not read by the MAE trainer: warmup and length go in [train], \
                     norm_pix_loss in [model], learning rates in [optim]",
                ));
            }
        }
        let model = recipe
            .model
            .as_ref()
            .ok_or_else(|| Error::config("model", "-", "the recipe has no [model] section"))?;
        let train = recipe
            .train
            .as_ref()
            .ok_or_else(|| Error::config("train", "-", "the recipe has no [train] section"))?;
        let config = Self {
            model: parse_section("model", model)?,
            train: parse_section("train", train)?,
            optim: match &recipe.optim {
                Some(table) => parse_section("optim", table)?,
                None => OptimSection::default(),
            },
        };
        config.mae()?;
        config.check_train()?;
        config.masked_view(recipe)?;
        Ok(config)
    }

    /// The model these sections describe.
    pub fn mae(&self) -> Result<MaeConfig> {
        let m = &self.model;
        let base = VitConfig::by_name(&m.arch).ok_or_else(|| {
            Error::config(
                "model",
                "arch",
                format!(
                    "unknown `{}`; known: {}",
                    m.arch,
                    VitConfig::NAMES.join(", ")
                ),
            )
        })?;
        let encoder = VitConfig {
            img_size: m.img_size.unwrap_or(base.img_size),
            patch_size: m.patch_size.unwrap_or(base.patch_size),
            in_chans: 3,
            embed_dim: m.embed_dim.unwrap_or(base.embed_dim),
            depth: m.depth.unwrap_or(base.depth),
            num_heads: m.num_heads.unwrap_or(base.num_heads),
            mlp_ratio: m.mlp_ratio.unwrap_or(base.mlp_ratio),
        };
        encoder
            .check()
            .map_err(|(key, msg)| Error::config("model", key, msg))?;
        check_width(
            "decoder_embed_dim",
            m.decoder_embed_dim,
            m.decoder_num_heads,
        )
        .map_err(|(key, msg)| Error::config("model", key, msg))?;
        if m.decoder_depth == 0 {
            return Err(Error::config(
                "model",
                "decoder_depth",
                "must be at least 1",
            ));
        }
        Ok(MaeConfig {
            encoder,
            decoder_embed_dim: m.decoder_embed_dim,
            decoder_depth: m.decoder_depth,
            decoder_num_heads: m.decoder_num_heads,
            norm_pix_loss: m.norm_pix_loss,
        })
    }

    // `!(x > 0.0)` on purpose: NaN must fail the checks too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    fn check_train(&self) -> Result<()> {
        let (t, o) = (&self.train, &self.optim);
        let err = |section, key: &str, msg: String| Err(Error::config(section, key, msg));
        match (t.epochs, t.steps) {
            (Some(_), Some(_)) | (None, None) => {
                return err(
                    "train",
                    "epochs",
                    "set exactly one of `epochs` and `steps`".into(),
                );
            }
            (Some(e), None) if !(e > 0.0) => {
                return err("train", "epochs", format!("{e} must be positive"));
            }
            (None, Some(0)) => return err("train", "steps", "must be at least 1".into()),
            _ => {}
        }
        match (t.warmup_epochs, t.warmup_steps) {
            (Some(_), Some(_)) => {
                return err(
                    "train",
                    "warmup_epochs",
                    "set at most one of `warmup_epochs` and `warmup_steps`".into(),
                );
            }
            (Some(w), None) if !(w >= 0.0) => {
                return err("train", "warmup_epochs", format!("{w} must be >= 0"));
            }
            (Some(_), None) if t.epochs.is_none() => {
                return err(
                    "train",
                    "warmup_epochs",
                    "needs `epochs`; with `steps` use `warmup_steps`".into(),
                );
            }
            _ => {}
        }
        match (t.batch_size, t.accum_steps) {
            (Some(_), Some(_)) => {
                return err(
                    "train",
                    "accum_steps",
                    "set `batch_size` (effective) or `accum_steps`, not both".into(),
                );
            }
            (Some(0), None) => return err("train", "batch_size", "must be at least 1".into()),
            (None, Some(0)) => return err("train", "accum_steps", "must be at least 1".into()),
            _ => {}
        }
        if t.keep_checkpoints == 0 {
            return err(
                "train",
                "keep_checkpoints",
                "must be at least 1 (the one to resume from)".into(),
            );
        }
        for (key, v) in [("base_lr", o.base_lr), ("lr", o.lr.unwrap_or(1.0))] {
            if !(v > 0.0 && v.is_finite()) {
                return err("optim", key, format!("{v} must be positive"));
            }
        }
        if !(o.min_lr >= 0.0) {
            return err("optim", "min_lr", format!("{} must be >= 0", o.min_lr));
        }
        if !(o.weight_decay >= 0.0) {
            return err(
                "optim",
                "weight_decay",
                format!("{} must be >= 0", o.weight_decay),
            );
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return err(
                "optim",
                "betas",
                format!("{:?}: each must be in [0, 1)", o.betas),
            );
        }
        if !(o.eps > 0.0) {
            return err("optim", "eps", format!("{} must be positive", o.eps));
        }
        if let Some(c) = o.clip_grad
            && !(c > 0.0)
        {
            return err(
                "optim",
                "clip_grad",
                format!("{c} must be positive (leave it out for no clipping)"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn recipe(
        extra: &str,
    ) -> std::result::Result<Recipe, tessera_pipeline::recipe::RecipeError> {
        Recipe::parse(
            &format!(
                r#"
[data]
batch_size = 32

[[views]]
name = "image"
size = 32
scale = [0.35, 1.0]
[views.mask]
kind = "random"
ratio = 0.75
patch_size = 4
{extra}"#
            ),
            "test",
        )
    }

    const TINY: &str = r#"
[model]
arch = "vit_tiny_patch16_224"
img_size = 32
patch_size = 4
depth = 6
decoder_embed_dim = 128
decoder_depth = 2
decoder_num_heads = 4

[train]
epochs = 10
warmup_epochs = 1
accum_steps = 2

[optim]
base_lr = 1e-3
"#;

    #[test]
    fn resolves_effective_batch_lr_and_steps() {
        let recipe = recipe(TINY).unwrap();
        let config = TrainerConfig::from_recipe(&recipe).unwrap();
        let r = config.resolve(&recipe, Some(6400), 1).unwrap();
        assert_eq!(r.effective_batch, 64);
        assert!((r.lr() - 1e-3 * 64.0 / 256.0).abs() < 1e-15);
        assert_eq!(r.steps_per_epoch, Some(100));
        assert_eq!((r.schedule.warmup_steps, r.total_steps()), (100, 1000));
        assert_eq!((r.num_patches, r.num_keep), (64, 16));
        assert_eq!(r.model.encoder.depth, 6);
        assert_eq!(r.model.encoder.embed_dim, 192);
        assert_eq!(r.adamw.betas, (0.9, 0.95));
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            serde_json::from_str::<ResolvedTrainConfig>(&json).unwrap(),
            r
        );
        // An effective batch instead of accum_steps: 32 x 4 accum x 2 ranks = 256.
        let text = TINY.replace("accum_steps = 2", "batch_size = 256");
        let recipe2 = super::tests::recipe(&text).unwrap();
        let r2 = TrainerConfig::from_recipe(&recipe2)
            .unwrap()
            .resolve(&recipe2, Some(6400), 2)
            .unwrap();
        assert_eq!((r2.accum_steps, r2.effective_batch), (4, 256));
        let err = TrainerConfig::from_recipe(&recipe2)
            .unwrap()
            .resolve(&recipe2, Some(6400), 3)
            .unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
        // Epochs need the data set's size.
        let err = config.resolve(&recipe, None, 1).unwrap_err().to_string();
        assert!(err.contains("epochs"), "{err}");
    }

    /// The shipped recipes load through the pipeline and resolve to the documented numbers.
    #[test]
    fn shipped_recipes_resolve() {
        let base = Recipe::load("mae_vit_base").unwrap();
        let r = TrainerConfig::from_recipe(&base)
            .unwrap()
            .resolve(&base, Some(1_281_167), 1)
            .unwrap();
        assert_eq!((r.effective_batch, r.accum_steps), (4096, 64));
        assert!((r.lr() - 2.4e-3).abs() < 1e-12);
        assert_eq!(r.model, MaeConfig::mae_vit_base_patch16());
        assert_eq!(r.schedule.total_steps, 800 * r.steps_per_epoch.unwrap());
        assert_eq!(r.schedule.warmup_steps, 40 * r.steps_per_epoch.unwrap());
        assert_eq!(r.precision, Precision::Bf16);

        let cifar = Recipe::load("mae_vit_tiny_cifar").unwrap();
        let r = TrainerConfig::from_recipe(&cifar)
            .unwrap()
            .resolve(&cifar, Some(50_000), 1)
            .unwrap();
        assert_eq!((r.effective_batch, r.num_patches, r.num_keep), (64, 64, 16));
        assert_eq!((r.schedule.warmup_steps, r.schedule.total_steps), (30, 300));
        assert!((r.lr() - 1e-3).abs() < 1e-12);
        assert_eq!(r.precision, Precision::F32, "the default");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (TINY.replace("depth = 6", "depth = 6\ndepht = 3"), "depht"),
            (
                TINY.replace("arch = \"vit_tiny_patch16_224\"", "arch = \"vit_giant\""),
                "arch",
            ),
            (
                TINY.replace("patch_size = 4", "patch_size = 8"),
                "patch_size",
            ),
            (
                TINY.replace("epochs = 10\n", "epochs = 10\nsteps = 5\n"),
                "epochs",
            ),
            (
                TINY.replace("base_lr = 1e-3", "base_lr = \"fast\""),
                "base_lr",
            ),
            (
                TINY.replace("accum_steps = 2", "accum_steps = 0"),
                "accum_steps",
            ),
            (
                TINY.replace("accum_steps = 2", "accum_steps = 2\nprecision = \"fp16\""),
                "precision",
            ),
        ];
        for (text, key) in cases {
            let recipe = recipe(&text).unwrap();
            let err = TrainerConfig::from_recipe(&recipe).unwrap_err();
            let chain = format!(
                "{err}: {}",
                std::error::Error::source(&err)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
            assert!(chain.contains(key), "{key}: {chain}");
        }
    }
}
