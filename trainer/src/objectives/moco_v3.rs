//! MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision
//! Transformers"), Algorithm 1.
//!
//! ```text
//! q1, q2 = pred(proj(f(x1))), pred(proj(f(x2)))      student: 3-layer projector, 2-layer predictor
//! k1, k2 = proj'(f'(x1)), proj'(f'(x2))              momentum encoder, no gradient
//! loss   = ctr(q1, k2) + ctr(q2, k1),  ctr(q, k) = CE(q k^T / T, arange) x 2T
//! after each step: f' <- m f' + (1 - m) f,  m: 0.99 -> 1 on a half cosine
//! ```
//!
//! Official defaults (ViT): T = 0.2, projector 4096 hidden / 256 out with BN (last BN without
//! affine), AdamW lr 1.5e-4 x batch / 256, weight decay 0.1. The loss is
//! [`crate::losses::infonce::moco_v3`].

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::simclr::check_temperature;
use super::two_view::{Siamese, Teacher, check_momentum, check_width, teacher_momentum, two_views};
use super::{Method, MethodOutput, MethodSpec, ResolveContext, StepContext};
use crate::backbone::Backbone;
use crate::error::Result;
use crate::feeder::DeviceBatch;
use crate::heads::{LastNorm, MlpHeadConfig};
use crate::losses::infonce::moco_v3_global;

/// `[objective]` of `method = "moco_v3"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MocoV3Config {
    /// InfoNCE temperature `T`. Default 0.2.
    pub temperature: f64,
    /// Projector and predictor hidden width. Default 4096.
    pub proj_hidden_dim: usize,
    /// Embedding width. Default 256.
    pub proj_output_dim: usize,
    /// Momentum at step 0. Default 0.99.
    pub momentum: f64,
    /// Momentum at the end of the run. Default 1.0.
    pub momentum_end: f64,
}

impl Default for MocoV3Config {
    fn default() -> Self {
        Self {
            temperature: 0.2,
            proj_hidden_dim: 4096,
            proj_output_dim: 256,
            momentum: 0.99,
            momentum_end: 1.0,
        }
    }
}

impl MethodSpec for MocoV3Config {
    const NAME: &'static str = "moco_v3";
    const PAPER: &'static str =
        "Chen, Xie and He 2021, An Empirical Study of Training Self-Supervised Vision Transformers";
    const RECIPES: &'static [&'static str] = &["mocov3_vit_small"];

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        ctx.require_views("MoCo v3", 2)?;
        check_temperature(self.temperature)?;
        check_width("proj_hidden_dim", self.proj_hidden_dim)?;
        check_width("proj_output_dim", self.proj_output_dim)?;
        check_momentum("momentum", self.momentum)?;
        check_momentum("momentum_end", self.momentum_end)?;
        Ok(self)
    }
}

impl<B: AutodiffBackend> Method<B> for MocoV3Config {
    type Model = Siamese<B>;
    type State = Teacher<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let (hidden, out) = (self.proj_hidden_dim, self.proj_output_dim);
        let mlp = |dims| MlpHeadConfig {
            dims,
            bias: false,
            last_bias: false,
            hidden_bn: true,
            last_bn: LastNorm::NoAffine,
        };
        let projector = mlp(vec![backbone.num_features(), hidden, hidden, out]);
        let predictor = mlp(vec![out, hidden, out]);
        let student = Siamese::new(backbone, &projector, Some(&predictor), device);
        let teacher = student.teacher();
        (student, teacher)
    }

    fn forward(
        &self,
        model: &Self::Model,
        teacher: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let (x1, x2) = two_views::<B>(batch)?;
        // Keys of every rank (no gradient), this rank's from `first_row`.
        let k1 = Tensor::from_inner(ctx.gather_rows(teacher.project(x1.clone().inner()))); // [W n, out]
        let k2 = Tensor::from_inner(ctx.gather_rows(teacher.project(x2.clone().inner())));
        let q1 = model.predict(model.project(x1)); // [n, out]
        let q2 = model.predict(model.project(x2));
        let [n, _] = q1.dims();
        Ok(MethodOutput::loss(moco_v3_global(
            q1,
            q2,
            k1,
            k2,
            self.temperature,
            ctx.first_row(n),
        )))
    }

    fn after_step(
        &self,
        model: Self::Model,
        teacher: Self::State,
        ctx: &StepContext,
    ) -> (Self::Model, Self::State) {
        let m = teacher_momentum(self.momentum, self.momentum_end, ctx);
        let teacher = model.update_teacher(teacher, m);
        (model, teacher)
    }

    fn teacher_momentum(&self, ctx: &StepContext) -> Option<f64> {
        Some(teacher_momentum(self.momentum, self.momentum_end, ctx))
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        model.backbone.clone()
    }

    fn teacher_backbone(&self, teacher: &Self::State) -> Option<Backbone<B::InnerBackend>> {
        Some(teacher.backbone.clone())
    }
}
