//! The trainer's sections of a recipe (`[model]`, `[objective]`, `[train]`, `[optim]`) and
//! the resolved run config derived from them.
//!
//! Two levels, as ripgrep's low/high args and MAE's `main_pretrain.py` printout: the
//! sections are parsed as written ([`ModelSection`], the method's keys, [`TrainSection`],
//! [`OptimSection`], every key documented with unit and default, unknown keys rejected),
//! then [`TrainerConfig::resolve`] derives what the run actually uses
//! ([`ResolvedTrainConfig`]: effective batch, absolute learning rate, steps per epoch,
//! warmup and total steps), which the training loop writes to `runs/<id>/config.json`
//! before step 0 and prints at start.
//!
//! `[model]` is the backbone; `[objective]` names the method (`method = "byol"`) and holds its
//! own keys (temperatures, head widths, the MAE decoder), checked by the method's file in
//! [`crate::objectives`] against the views it needs. The pipeline owns `[data]` and
//! `[[views]]` (`tessera_pipeline::recipe`); the batch size lives there once
//! (`data.batch_size`, samples per micro-batch per rank) and the effective batch is derived:
//! `data.batch_size x train.accum_steps x world_size`.

use serde::{Deserialize, Serialize};
use tessera_pipeline::Recipe;

use crate::backbone::BackboneConfig;
use crate::error::{Error, Result};
use crate::objectives::{MethodConfig, ResolveContext};
use crate::precision::Precision;
use crate::vit::VitConfig;

mod resolved;

#[cfg(test)]
pub(crate) use resolved::tiny_resolved_for_tests;
pub use resolved::{ResolvedTrainConfig, TINY_MAE_RECIPE};

fn default_arch() -> String {
    "vit_base_patch16_224".into()
}

/// `[model]`: the backbone (timm name) and overrides of its shape. The method's heads and
/// decoder are `[objective]` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// timm name of the backbone: `vit_tiny/small/base/large_patch16_224`, `resnet18`,
    /// `resnet50`, `regnety_002`, ... Default `vit_base_patch16_224`.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// ViT input side in pixels. Default: the arch's (224). Must equal the views' size.
    pub img_size: Option<usize>,
    /// ViT patch side in pixels. Default: the arch's (16). Must equal a mask's `patch_size`.
    /// Smaller patches mean quadratically more tokens (and attention cost).
    pub patch_size: Option<usize>,
    /// ViT width. Default: the arch's. Multiple of 4 and of `num_heads`.
    pub embed_dim: Option<usize>,
    /// ViT blocks. Default: the arch's.
    pub depth: Option<usize>,
    /// ViT heads. Default: the arch's.
    pub num_heads: Option<usize>,
    /// ViT MLP width / token width. Default: the arch's (4.0).
    pub mlp_ratio: Option<f64>,
    /// ViT stochastic depth: the drop rate of the last block's residual branches, rising
    /// linearly from 0 at the first (timm `drop_path_rate`). Default 0 (MAE); DINO ViT-S/16
    /// 0.1. In `[0, 1)`; high rates slow early training.
    pub drop_path_rate: Option<f64>,
    /// ResNet only: the CIFAR stem (3x3 convolution, stride 1, no max-pool) for 32-pixel
    /// images, as SimCLR's CIFAR experiments and solo-learn use. Default false.
    pub cifar_stem: Option<bool>,
    /// Start the backbone from these timm weights (a safetensors state dict, f32, f16 or
    /// bf16, timm's key names; a classifier head is ignored) instead of random ones. Read
    /// before step 0 of a fresh run; a resumed run takes its weights from the checkpoint.
    pub pretrained: Option<std::path::PathBuf>,
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
    /// With several ranks, BatchNorm in train mode (backbone, heads, momentum teachers)
    /// normalises with the statistics of the global batch, as PyTorch's `SyncBatchNorm`:
    /// one all-reduce per BatchNorm layer per forward pass (and one in the backward).
    /// Default true; false keeps per-rank statistics (faster, but W ranks x B then differ
    /// from one process with batch W x B). No effect in a single process.
    #[serde(default = "default_sync_batch_norm")]
    pub sync_batch_norm: bool,
}

fn default_sync_batch_norm() -> bool {
    true
}

/// The optimisers `[optim] optimizer` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    /// AdamW (MAE, MoCo v3, DINO): `betas`, `eps`.
    #[default]
    Adamw,
    /// SGD with momentum (MoCo v2, SimSiam): `momentum`, `nesterov`, `decay_all`.
    Sgd,
    /// LARS (SimCLR, BYOL, Barlow Twins, VICReg): `momentum`, `eta`.
    Lars,
}

/// `[optim]`: the optimiser, the learning-rate scale and weight decay.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// `adamw` (default), `sgd` or `lars`.
    #[serde(default)]
    pub optimizer: OptimizerName,
    /// Learning rate per 256 samples of effective batch: `lr = base_lr x batch / 256`.
    /// Default 1.5e-4 (MAE). Ignored when `lr` is set.
    pub base_lr: Option<f64>,
    /// Absolute peak learning rate, overriding `base_lr` scaling. Default: unset.
    pub lr: Option<f64>,
    /// Floor of the cosine decay. Default 0.
    #[serde(default)]
    pub min_lr: f64,
    /// Weight decay of matrices (not of biases, norms or tokens, unless SGD's `decay_all`).
    /// Default 0.05.
    pub weight_decay: Option<f64>,
    /// Weight decay at the end of the run, reached on a half cosine (DINO: 0.04 -> 0.4).
    /// Default: constant.
    pub weight_decay_end: Option<f64>,
    /// AdamW `(beta1, beta2)`. Default `[0.9, 0.95]` (MAE; PyTorch's 0.999 is slower to adapt).
    pub betas: Option<[f64; 2]>,
    /// AdamW denominator epsilon. Default 1e-8 (PyTorch; burn's own default is 1e-5).
    pub eps: Option<f64>,
    /// SGD and LARS momentum. Default 0.9.
    pub momentum: Option<f64>,
    /// SGD: Nesterov momentum. Default false.
    pub nesterov: Option<bool>,
    /// SGD: decay every parameter, biases and norms too (MoCo v2's and SimSiam's official
    /// code). Default true.
    pub decay_all: Option<bool>,
    /// LARS trust coefficient `eta`. Default 0.001.
    pub eta: Option<f64>,
    /// Clip gradients to this L2 norm (see `clip_grad_mode`); unset = no clipping (MAE
    /// pretraining). DINO: 3.0 per parameter.
    pub clip_grad: Option<f64>,
    /// What `clip_grad` bounds: `"global"` (default; the norm of all gradients together,
    /// PyTorch `clip_grad_norm_`) or `"per_parameter"` (each parameter's gradient on its
    /// own, DINO `utils.clip_gradients`).
    pub clip_grad_mode: Option<ClipGradMode>,
}

/// What `[optim] clip_grad` bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipGradMode {
    /// The L2 norm of all gradients together (PyTorch `clip_grad_norm_`).
    #[default]
    Global,
    /// Each parameter's gradient norm on its own (DINO `utils.clip_gradients`).
    PerParameter,
}

impl OptimSection {
    /// The keys set that only another optimiser reads, with the one that reads them.
    fn foreign_keys(&self) -> Vec<(&'static str, &'static str)> {
        let mut keys = Vec::new();
        let adamw = self.optimizer == OptimizerName::Adamw;
        let sgd = self.optimizer == OptimizerName::Sgd;
        let lars = self.optimizer == OptimizerName::Lars;
        if !adamw && self.betas.is_some() {
            keys.push(("betas", "adamw"));
        }
        if !adamw && self.eps.is_some() {
            keys.push(("eps", "adamw"));
        }
        if adamw && self.momentum.is_some() {
            keys.push(("momentum", "sgd or lars"));
        }
        if !sgd && self.nesterov.is_some() {
            keys.push(("nesterov", "sgd"));
        }
        if !sgd && self.decay_all.is_some() {
            keys.push(("decay_all", "sgd"));
        }
        if !lars && self.eta.is_some() {
            keys.push(("eta", "lars"));
        }
        keys
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
    /// The backbone `[model]` describes.
    pub backbone: BackboneConfig,
    /// `[objective]`: the method and its settings, checked against the views.
    pub method: MethodConfig,
}

/// Deserialises one recipe table, unknown keys rejected.
pub(crate) fn parse_table<T: serde::de::DeserializeOwned>(
    section: &'static str,
    table: &toml::Table,
) -> Result<T> {
    // Through text so that the deserialiser's message points at the key (line, column, name).
    let text = toml::to_string(table).map_err(|e| Error::config(section, "-", e.to_string()))?;
    toml::from_str(&text).map_err(|source| Error::ConfigParse { section, source })
}

impl TrainerConfig {
    /// Parses `[model]`, `[objective]`, `[train]` and `[optim]` of `recipe` and checks them
    /// against its views.
    pub fn from_recipe(recipe: &Recipe) -> Result<Self> {
        if recipe.schedule.is_some() {
            return Err(Error::config(
                "recipe",
                "schedule",
                "no such section: warmup and length go in [train], learning rates and \
                 weight-decay schedules in [optim], teacher momentum in [objective]",
            ));
        }
        let model: ModelSection = match &recipe.model {
            Some(table) => parse_table("model", table)?,
            None => {
                return Err(Error::config(
                    "model",
                    "-",
                    "the recipe has no [model] section",
                ));
            }
        };
        let train = recipe
            .train
            .as_ref()
            .ok_or_else(|| Error::config("train", "-", "the recipe has no [train] section"))?;
        let objective = recipe.objective.as_ref().ok_or_else(|| {
            Error::config(
                "objective",
                "method",
                format!(
                    "the recipe has no [objective] section; add one with `method = \"...\"` ({})",
                    crate::objectives::names().join(", ")
                ),
            )
        })?;
        let backbone = backbone(&model)?;
        let method = MethodConfig::parse(
            objective,
            &ResolveContext {
                recipe,
                backbone: &backbone,
            },
        )?;
        let config = Self {
            model,
            train: parse_table("train", train)?,
            optim: match &recipe.optim {
                Some(table) => parse_table("optim", table)?,
                None => OptimSection::default(),
            },
            backbone,
            method,
        };
        config.check_train()?;
        config.check_views(recipe)?;
        Ok(config)
    }

    /// ViTs take one image size: every view must have it unless the method resamples
    /// position embeddings (multi-crop methods say so with [`crate::objectives::MethodSpec::MULTI_RESOLUTION`]);
    /// then every view must be a multiple of the patch size.
    fn check_views(&self, recipe: &Recipe) -> Result<()> {
        if let BackboneConfig::Vit(vit) = &self.backbone {
            let multi = self.method.multi_resolution();
            for instance in recipe.view_instances() {
                let spec = &recipe.views[instance.spec];
                let size = spec.size as usize;
                if multi && (size == 0 || !size.is_multiple_of(vit.patch_size)) {
                    return Err(Error::config(
                        "model",
                        "patch_size",
                        format!(
                            "{} does not divide view `{}`'s size {size}",
                            vit.patch_size, spec.name
                        ),
                    ));
                }
                if !multi && size != vit.img_size {
                    return Err(Error::config(
                        "model",
                        "img_size",
                        format!(
                            "{} differs from view `{}`'s size {}",
                            vit.img_size, spec.name, spec.size
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The backbone `[model]` names, with its overrides applied and checked.
pub fn backbone(m: &ModelSection) -> Result<BackboneConfig> {
    let unknown = || {
        Error::config(
            "model",
            "arch",
            format!(
                "unknown `{}`; known: {}",
                m.arch,
                BackboneConfig::NAMES.join(", ")
            ),
        )
    };
    let base = BackboneConfig::by_name(&m.arch).ok_or_else(unknown)?;
    let vit_keys = [
        ("img_size", m.img_size.is_some()),
        ("patch_size", m.patch_size.is_some()),
        ("embed_dim", m.embed_dim.is_some()),
        ("depth", m.depth.is_some()),
        ("num_heads", m.num_heads.is_some()),
        ("mlp_ratio", m.mlp_ratio.is_some()),
        ("drop_path_rate", m.drop_path_rate.is_some()),
    ];
    match base {
        BackboneConfig::Vit(base) => {
            if m.cifar_stem.is_some() {
                return Err(Error::config(
                    "model",
                    "cifar_stem",
                    format!("a ResNet key; `{}` is a ViT", m.arch),
                ));
            }
            let vit = VitConfig {
                img_size: m.img_size.unwrap_or(base.img_size),
                patch_size: m.patch_size.unwrap_or(base.patch_size),
                in_chans: 3,
                embed_dim: m.embed_dim.unwrap_or(base.embed_dim),
                depth: m.depth.unwrap_or(base.depth),
                num_heads: m.num_heads.unwrap_or(base.num_heads),
                mlp_ratio: m.mlp_ratio.unwrap_or(base.mlp_ratio),
                drop_path_rate: m.drop_path_rate.unwrap_or(base.drop_path_rate),
            };
            vit.check()
                .map_err(|(key, msg)| Error::config("model", key, msg))?;
            Ok(BackboneConfig::Vit(vit))
        }
        other => {
            if let Some((key, _)) = vit_keys.iter().find(|(_, set)| *set) {
                return Err(Error::config(
                    "model",
                    *key,
                    format!("a ViT key; `{}` is a convolutional network", m.arch),
                ));
            }
            match (other, m.cifar_stem) {
                (BackboneConfig::ResNet(mut r), Some(stem)) => {
                    r.cifar_stem = stem;
                    Ok(BackboneConfig::ResNet(r))
                }
                (other, Some(_)) if !matches!(other, BackboneConfig::ResNet(_)) => Err(
                    Error::config("model", "cifar_stem", "only ResNets have a CIFAR stem"),
                ),
                (other, _) => Ok(other),
            }
        }
    }
}

impl TrainerConfig {
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
        if let Some((key, owner)) = o.foreign_keys().first() {
            return err(
                "optim",
                key,
                format!(
                    "a setting of {owner}; this recipe's optimizer is {}",
                    serde_json::to_string(&o.optimizer).unwrap_or_default()
                ),
            );
        }
        for (key, v) in [
            ("base_lr", o.base_lr.unwrap_or(1.0)),
            ("lr", o.lr.unwrap_or(1.0)),
            ("eps", o.eps.unwrap_or(1.0)),
            ("eta", o.eta.unwrap_or(1.0)),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return err("optim", key, format!("{v} must be positive"));
            }
        }
        for (key, v) in [
            ("min_lr", o.min_lr),
            ("weight_decay", o.weight_decay.unwrap_or(0.0)),
            ("weight_decay_end", o.weight_decay_end.unwrap_or(0.0)),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return err("optim", key, format!("{v} must be >= 0"));
            }
        }
        if let Some(betas) = o.betas
            && betas.iter().any(|b| !(0.0..1.0).contains(b))
        {
            return err(
                "optim",
                "betas",
                format!("{betas:?}: each must be in [0, 1)"),
            );
        }
        if let Some(m) = o.momentum
            && !(0.0..1.0).contains(&m)
        {
            return err("optim", "momentum", format!("{m} must be in [0, 1)"));
        }
        if o.clip_grad_mode.is_some() && o.clip_grad.is_none() {
            return err(
                "optim",
                "clip_grad_mode",
                "set without `clip_grad`, the norm to clip to".into(),
            );
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
    use crate::objectives::mae::MaeConfig;
    use crate::optim::OptimSettings;

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

[objective]
method = "mae"
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
        let BackboneConfig::Vit(vit) = &r.backbone else {
            panic!("{:?}", r.backbone)
        };
        assert_eq!((vit.depth, vit.embed_dim, vit.num_patches()), (6, 192, 64));
        let MethodConfig::Mae(mae) = &r.method else {
            panic!("{:?}", r.method)
        };
        assert_eq!((mae.view, mae.mask_ratio, mae.decoder_depth), (0, 0.75, 2));
        assert!(matches!(
            r.optim,
            OptimSettings::AdamW {
                betas: (0.9, 0.95),
                ..
            }
        ));
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
        // Every shipped training recipe parses, checks and resolves; each method has one.
        let mut methods = std::collections::BTreeSet::new();
        for (name, text) in tessera_pipeline::recipe::BUILTIN_RECIPES {
            if !text.contains("[objective]") {
                continue; // a pipeline-only recipe (`tessera profile`)
            }
            let recipe = Recipe::load(name).unwrap();
            let config = TrainerConfig::from_recipe(&recipe)
                .unwrap_or_else(|e| panic!("{name}: {e}: {:?}", std::error::Error::source(&e)));
            config
                .resolve(&recipe, Some(50_000), 1)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            methods.insert(config.method.name());
        }
        for m in crate::objectives::list() {
            assert!(methods.contains(m.name), "no shipped recipe for {}", m.name);
            for r in m.recipes {
                assert!(
                    Recipe::load(r).is_ok(),
                    "{}: recipe {r} is not shipped",
                    m.name
                );
            }
        }
        let base = Recipe::load("mae_vit_base").unwrap();
        let r = TrainerConfig::from_recipe(&base)
            .unwrap()
            .resolve(&base, Some(1_281_167), 1)
            .unwrap();
        assert_eq!((r.effective_batch, r.accum_steps), (4096, 64));
        assert!((r.lr() - 2.4e-3).abs() < 1e-12);
        let BackboneConfig::Vit(vit) = &r.backbone else {
            panic!("{:?}", r.backbone)
        };
        let MethodConfig::Mae(mae) = &r.method else {
            panic!("{:?}", r.method)
        };
        assert_eq!(mae.model(vit), MaeConfig::mae_vit_base_patch16());
        assert_eq!(r.schedule.total_steps, 800 * r.steps_per_epoch.unwrap());
        assert_eq!(r.schedule.warmup_steps, 40 * r.steps_per_epoch.unwrap());
        assert_eq!(r.precision, Precision::Bf16);

        let cifar = Recipe::load("mae_vit_tiny_cifar").unwrap();
        let r = TrainerConfig::from_recipe(&cifar)
            .unwrap()
            .resolve(&cifar, Some(50_000), 1)
            .unwrap();
        assert_eq!(r.effective_batch, 64);
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
            (
                TINY.replace("depth = 6", "depth = 6\ndrop_path_rate = 1.5"),
                "drop_path_rate",
            ),
            (
                TINY.replace(
                    "base_lr = 1e-3",
                    "base_lr = 1e-3\nclip_grad_mode = \"per_parameter\"",
                ),
                "clip_grad_mode",
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
