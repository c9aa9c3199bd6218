//! Self-supervised methods, one file each, and the one interface the training loop knows.
//!
//! A [`Method`] says what it builds (the trained model: backbone and heads; its untrained
//! [`Method::State`]: a momentum teacher, a queue, a centre), how one batch's views become a
//! loss, and what it updates after each optimiser step. The loop (`crate::train`), the
//! checkpoints, metrics, `tessera eval` and `tessera export` are written once against it.
//!
//! Adding a method is a file here (its recipe keys as a serde struct, [`MethodSpec`] to check
//! them against the recipe, and [`Method`]) plus one variant of [`MethodConfig`] and one line
//! in each `match` below; nothing in the loop changes.
//!
//! ```text
//! [objective] method = "byol" ─► MethodConfig::parse ─► ByolConfig (checked: two views, ...)
//!   ─► Method::init ─► (model: backbone + projector + predictor, state: teacher)
//!   ─► per micro-batch: Method::forward(model, state, views) ─► loss (+ logged parts)
//!   ─► optimiser step ─► Method::after_step (teacher EMA, queue, centre)
//! ```

use std::marker::PhantomData;

use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};
use tessera_pipeline::Recipe;

use crate::backbone::{Backbone, BackboneConfig};
use crate::distributed::GlobalBatch;
use crate::error::{Error, Result};
use crate::feeder::{DeviceBatch, Normalize};
use crate::precision::Precision;

pub mod barlow_twins;
pub mod byol;
pub mod data2vec;
pub mod dino;
pub mod dino_head;
pub mod ibot;
pub mod mae;
pub mod masked_view;
pub mod moco_v2;
pub mod moco_v3;
pub mod msn;
pub mod multicrop;
pub mod multicrop_cnn;
pub mod nnclr;
pub mod simclr;
pub mod simmim;
pub mod simsiam;
pub mod swav;
pub mod two_view;
pub mod vicreg;

/// Where the loop is, for the method computing a step.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The optimiser step being computed (0-based).
    pub step: u64,
    /// Optimiser steps of the whole run.
    pub total_steps: u64,
    /// Optimiser steps per epoch, when the data set's size is known.
    pub steps_per_epoch: Option<u64>,
    /// Whether a picture is due: the method may return one in [`MethodOutput::picture`].
    pub picture: bool,
    /// Samples to draw in a picture.
    pub picture_samples: usize,
    /// The normalisation the feeder applied (to draw pictures in true colours).
    pub normalize: Normalize,
    /// The run's seed: with `step` and `micro_batch` it keys the host-side draws a method
    /// makes (drop path, [`crate::vit::DropPath::draw`]), so a resumed run repeats them.
    pub seed: u64,
    /// Index of the micro-batch within the optimiser step (0 when not accumulating).
    pub micro_batch: usize,
    /// The other ranks of a data-parallel run (`None` alone). Methods use it through
    /// [`StepContext::gather_rows`] and [`StepContext::all_reduce_sum`], which are the
    /// identity alone, so that a loss over the global batch is one code path.
    pub global: Option<GlobalBatch>,
}

impl StepContext {
    /// Fraction of the run done before this step, in `[0, 1]`: what cosine schedules of
    /// teacher momentum follow.
    pub fn progress(&self) -> f64 {
        (self.step as f64 / self.total_steps.max(1) as f64).min(1.0)
    }

    /// Epochs done before this step (fractional); `None` when the epoch length is unknown.
    pub fn epoch(&self) -> Option<f64> {
        self.steps_per_epoch
            .map(|per| self.step as f64 / per.max(1) as f64)
    }

    /// Data-parallel ranks (1 alone).
    pub fn world_size(&self) -> usize {
        self.global.as_ref().map_or(1, GlobalBatch::world_size)
    }

    /// Index in the global batch of this rank's first row, for a local batch of `n` rows:
    /// `rank n` (0 alone). Rows of [`StepContext::gather_rows`] are laid out rank by rank.
    pub fn first_row(&self, n: usize) -> usize {
        self.global.as_ref().map_or(0, |g| g.rank() * n)
    }

    /// Every rank's rows, rank by rank (`[n, d]` in, `[W n, d]` out), differentiable; `z`
    /// itself alone. See [`GlobalBatch::gather_rows`].
    ///
    /// # Shapes
    /// `z`: `[n, d]`; returns `[world_size n, d]`.
    pub fn gather_rows<B: Backend>(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.global {
            Some(g) => g.gather_rows(z),
            None => z,
        }
    }

    /// [`StepContext::all_reduce_sum`] of `[r, c]` tensors as a function for the losses'
    /// global forms (`barlow_twins_global`, `vicreg_global`, `dino_global`); `None` alone,
    /// where those losses take their single-process path.
    #[allow(clippy::type_complexity)]
    pub fn sum_over_ranks<B: Backend>(
        &self,
    ) -> Option<Box<dyn Fn(Tensor<B, 2>) -> Tensor<B, 2> + '_>> {
        self.global.as_ref().map(|g| {
            Box::new(move |t| g.all_reduce_sum(t)) as Box<dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>>
        })
    }

    /// The sum of `x` over the ranks, differentiable on the autodiff backend (detach `x`
    /// for a statistic without gradient); `x` itself alone.
    ///
    /// # Shapes
    /// `x`: any shape, the same on every rank; returns that shape.
    pub fn all_reduce_sum<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match &self.global {
            Some(g) => g.all_reduce_sum(x),
            None => x,
        }
    }
}

/// What a method's forward pass returns for one micro-batch.
#[derive(Debug)]
pub struct MethodOutput<B: AutodiffBackend> {
    /// The loss to minimise, `[1]`.
    pub loss: Tensor<B, 1>,
    /// Named parts for the logs (`("invariance", ..)`), detached; empty for one-term losses.
    pub parts: Vec<(&'static str, Tensor<B::InnerBackend, 1>)>,
    /// A picture of what the method saw or made, when [`StepContext::picture`] asked.
    pub picture: Option<image::RgbImage>,
}

impl<B: AutodiffBackend> MethodOutput<B> {
    /// A loss without parts or picture.
    pub fn loss(loss: Tensor<B, 1>) -> Self {
        Self {
            loss,
            parts: Vec::new(),
            picture: None,
        }
    }
}

/// A self-supervised method: one implementation per file of this module.
pub trait Method<B: AutodiffBackend>: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// What the optimiser trains: the backbone and the method's heads.
    type Model: AutodiffModule<B> + 'static;
    /// What the method keeps between steps without training it (a momentum teacher, a
    /// queue, a centre), saved in checkpoints. `PhantomData` when there is none.
    type State: Module<B::InnerBackend> + 'static;

    /// A fresh model around `backbone` (freshly initialised, or with imported timm weights)
    /// and its state: heads with the paper's initialisation, a teacher equal to the student.
    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State);

    /// The model with its matmuls in `precision` (parameters stay f32). Methods without a
    /// bf16 path return it unchanged.
    fn with_precision(&self, model: Self::Model, _precision: Precision) -> Self::Model {
        model
    }

    /// One micro-batch: the uploaded views (and masks) in, the loss out. May update state
    /// that must follow every forward pass (BatchNorm statistics do on their own).
    fn forward(
        &self,
        model: &Self::Model,
        state: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        ctx: &StepContext,
    ) -> Result<MethodOutput<B>>;

    /// Changes the summed gradients before clipping and the optimiser step (DINO freezes
    /// its last layer in the first epoch). Default: nothing.
    fn adjust_gradients(
        &self,
        _model: &Self::Model,
        _grads: &mut GradientsParams,
        _ctx: &StepContext,
    ) {
    }

    /// After the optimiser step: teacher EMA, queue updates, prototype normalisation.
    /// Default: nothing.
    fn after_step(
        &self,
        model: Self::Model,
        state: Self::State,
        _ctx: &StepContext,
    ) -> (Self::Model, Self::State) {
        (model, state)
    }

    /// The momentum of the teacher EMA after the step `ctx` describes, for methods with a
    /// momentum teacher (logged as `train/momentum`). Default: `None`.
    fn teacher_momentum(&self, _ctx: &StepContext) -> Option<f64> {
        None
    }

    /// The backbone being pretrained (what `tessera eval` scores and `tessera export` writes).
    fn backbone(&self, model: &Self::Model) -> Backbone<B>;

    /// The momentum teacher's backbone, for methods that have one.
    fn teacher_backbone(&self, _state: &Self::State) -> Option<Backbone<B::InnerBackend>> {
        None
    }
}

/// A method's recipe keys (`[objective]`), checked against the rest of the recipe.
pub trait MethodSpec: Sized {
    /// The name in `[objective] method = "..."`.
    const NAME: &'static str;
    /// The paper, for `--list-methods`.
    const PAPER: &'static str;
    /// The shipped recipes that use it.
    const RECIPES: &'static [&'static str];
    /// Whether the method feeds the backbone views of several sizes (multi-crop), so that a
    /// ViT resamples its position table for views other than `[model] img_size` (see
    /// [`crate::vit::Vit::forward_all_tokens`]). Default false: every view must be `img_size`.
    const MULTI_RESOLUTION: bool = false;

    /// Checks the keys against the views and the backbone and fills in what they imply.
    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self>;
}

/// What a method's keys are checked against.
#[derive(Debug, Clone, Copy)]
pub struct ResolveContext<'a> {
    /// The whole recipe (views, masks).
    pub recipe: &'a Recipe,
    /// The backbone `[model]` describes.
    pub backbone: &'a BackboneConfig,
}

impl ResolveContext<'_> {
    /// The sizes of the batch's views, in order.
    pub fn view_sizes(&self) -> Vec<usize> {
        self.recipe
            .view_instances()
            .iter()
            .map(|v| self.recipe.views[v.spec].size as usize)
            .collect()
    }

    /// Checks that the recipe makes exactly `want` views of one size (two-view methods).
    pub fn require_views(&self, method: &str, want: usize) -> Result<usize> {
        let sizes = self.view_sizes();
        if sizes.len() != want {
            return Err(Error::config(
                "views",
                "count",
                format!(
                    "{method} takes {want} views per image but the recipe makes {} ({}); \
                     give one [[views]] entry `count = {want}`",
                    sizes.len(),
                    sizes
                        .iter()
                        .map(|s| format!("{s}px"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if sizes.windows(2).any(|w| w[0] != w[1]) {
            return Err(Error::config(
                "views",
                "size",
                format!("{method}'s views must share one size; the recipe has {sizes:?}"),
            ));
        }
        Ok(sizes[0])
    }
}

/// No state between steps.
pub type NoState<B> = PhantomData<B>;

macro_rules! methods {
    ($( $variant:ident($config:ty) ),* $(,)?) => {
        /// Every method and its resolved settings (`config.json`'s `method`).
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "name", rename_all = "snake_case")]
        #[allow(clippy::large_enum_variant)]
        pub enum MethodConfig {
            $(
                #[doc = concat!("See [`", stringify!($config), "`].")]
                $variant($config),
            )*
        }

        /// One line per method: name, paper, recipes.
        pub fn list() -> Vec<MethodInfo> {
            vec![$(MethodInfo {
                name: <$config as MethodSpec>::NAME,
                paper: <$config as MethodSpec>::PAPER,
                recipes: <$config as MethodSpec>::RECIPES,
            }),*]
        }

        impl MethodConfig {
            /// The method's name in recipes.
            pub fn name(&self) -> &'static str {
                match self { $(Self::$variant(_) => <$config as MethodSpec>::NAME,)* }
            }

            /// [`MethodSpec::MULTI_RESOLUTION`] of the method.
            pub fn multi_resolution(&self) -> bool {
                match self { $(Self::$variant(_) => <$config as MethodSpec>::MULTI_RESOLUTION,)* }
            }

            /// Parses `[objective]` (`method = "..."` plus that method's keys) and checks it.
            pub fn parse(table: &toml::Table, ctx: &ResolveContext<'_>) -> Result<Self> {
                let name = match table.get("method") {
                    Some(toml::Value::String(name)) => name.as_str(),
                    Some(other) => return Err(Error::config("objective", "method",
                        format!("{other} is not a method name; known: {}", names().join(", ")))),
                    None => return Err(Error::config("objective", "method",
                        format!("missing; known: {}", names().join(", ")))),
                };
                let mut keys = table.clone();
                keys.remove("method");
                $(
                    if name == <$config as MethodSpec>::NAME {
                        let spec: $config = crate::config::parse_table("objective", &keys)?;
                        return Ok(Self::$variant(spec.resolve(ctx)?));
                    }
                )*
                Err(Error::config("objective", "method",
                    format!("unknown `{name}`; known: {}", names().join(", "))))
            }

            /// Calls `visitor` with the method's concrete type.
            pub fn visit<B: AutodiffBackend, V: MethodVisitor<B>>(&self, visitor: V) -> V::Output {
                match self { $(Self::$variant(m) => visitor.visit(m),)* }
            }
        }
    };
}

methods! {
    Mae(mae::MaeMethod),
    Simclr(simclr::SimClrConfig),
    MocoV2(moco_v2::MocoV2Config),
    MocoV3(moco_v3::MocoV3Config),
    Byol(byol::ByolConfig),
    Simsiam(simsiam::SimSiamConfig),
    BarlowTwins(barlow_twins::BarlowTwinsConfig),
    Vicreg(vicreg::VicRegConfig),
    Nnclr(nnclr::NnclrConfig),
    Dino(dino::DinoConfig),
    Ibot(ibot::IbotConfig),
    Swav(swav::SwavConfig),
    Simmim(simmim::SimMimConfig),
    Data2vec(data2vec::Data2VecConfig),
    Msn(msn::MsnConfig),
}

/// The names `[objective] method` accepts.
pub fn names() -> Vec<&'static str> {
    list().iter().map(|m| m.name).collect()
}

/// A method, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MethodInfo {
    /// `[objective] method`.
    pub name: &'static str,
    /// Authors, year, title.
    pub paper: &'static str,
    /// Shipped recipes.
    pub recipes: &'static [&'static str],
}

/// Code that runs with a method's concrete type ([`MethodConfig::visit`]): the training
/// loop, checkpoint loading, export.
pub trait MethodVisitor<B: AutodiffBackend> {
    /// What the visit returns.
    type Output;
    /// Runs with the method `M`.
    fn visit<M: Method<B>>(self, method: &M) -> Self::Output;
}

/// The backbone of `model` on the inner (non-autodiff) backend, for evaluation.
pub fn inner_backbone<B: AutodiffBackend, M: Method<B>>(
    method: &M,
    model: &M::Model,
) -> Backbone<B::InnerBackend> {
    method.backbone(model).valid()
}

/// Detached scalar for [`MethodOutput::parts`].
pub fn part<B: AutodiffBackend>(loss: &Tensor<B, 1>) -> Tensor<B::InnerBackend, 1> {
    loss.clone().inner()
}
