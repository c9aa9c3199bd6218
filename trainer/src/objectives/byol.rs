//! BYOL (Grill et al. 2020, "Bootstrap Your Own Latent"), Algorithm 1.
//!
//! ```text
//! online:  p = q(g(f(v)))            f backbone, g projector, q predictor (BN in hidden layers)
//! target:  z' = g'(f'(v'))           f', g': EMA of f, g; no gradient
//! loss   = [2 - 2 cos(p1, z'2)] + [2 - 2 cos(p2, z'1)]    (symmetric, mean over the batch)
//! after each step: xi <- tau xi + (1 - tau) theta,  tau = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2
//! ```
//!
//! Paper defaults: projector and predictor 4096 hidden, 256 out; tau_base 0.996; LARS.
//! The loss is [`crate::losses::cosine::byol`], checked against the paper's formula.

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::two_view::{Siamese, Teacher, check_momentum, check_width, teacher_momentum, two_views};
use super::{Method, MethodOutput, MethodSpec, ResolveContext, StepContext};
use crate::backbone::Backbone;
use crate::error::Result;
use crate::feeder::DeviceBatch;
use crate::heads::{LastNorm, MlpHeadConfig};
use crate::losses::cosine::byol;

/// `[objective]` of `method = "byol"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ByolConfig {
    /// Projector hidden width. Default 4096.
    pub proj_hidden_dim: usize,
    /// Projection width. Default 256.
    pub proj_output_dim: usize,
    /// Predictor hidden width. Default 4096.
    pub pred_hidden_dim: usize,
    /// Target momentum at step 0 (`tau_base`). Default 0.996.
    pub momentum: f64,
    /// Target momentum at the end of the run. Default 1.0 (cosine rise, as the paper).
    pub momentum_end: f64,
}

impl Default for ByolConfig {
    fn default() -> Self {
        Self {
            proj_hidden_dim: 4096,
            proj_output_dim: 256,
            pred_hidden_dim: 4096,
            momentum: 0.996,
            momentum_end: 1.0,
        }
    }
}

impl ByolConfig {
    fn heads(&self, features: usize) -> (MlpHeadConfig, MlpHeadConfig) {
        let mlp = |dims| MlpHeadConfig {
            dims,
            bias: true,
            last_bias: true,
            hidden_bn: true,
            last_bn: LastNorm::None,
        };
        let out = self.proj_output_dim;
        (
            mlp(vec![features, self.proj_hidden_dim, out]),
            mlp(vec![out, self.pred_hidden_dim, out]),
        )
    }
}

impl MethodSpec for ByolConfig {
    const NAME: &'static str = "byol";
    const PAPER: &'static str = "Grill et al. 2020, Bootstrap Your Own Latent";
    const RECIPES: &'static [&'static str] = &["byol_resnet50", "byol_resnet18_cifar"];

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        ctx.require_views("BYOL", 2)?;
        check_width("proj_hidden_dim", self.proj_hidden_dim)?;
        check_width("proj_output_dim", self.proj_output_dim)?;
        check_width("pred_hidden_dim", self.pred_hidden_dim)?;
        check_momentum("momentum", self.momentum)?;
        check_momentum("momentum_end", self.momentum_end)?;
        Ok(self)
    }
}

impl<B: AutodiffBackend> Method<B> for ByolConfig {
    type Model = Siamese<B>;
    type State = Teacher<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let (projector, predictor) = self.heads(backbone.num_features());
        let student = Siamese::new(backbone, &projector, Some(&predictor), device);
        let teacher = student.teacher();
        (student, teacher)
    }

    fn forward(
        &self,
        model: &Self::Model,
        teacher: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        _ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let (v1, v2) = two_views::<B>(batch)?;
        let z1 = Tensor::from_inner(teacher.project(v1.clone().inner())); // [n, out], no grad
        let z2 = Tensor::from_inner(teacher.project(v2.clone().inner()));
        let p1 = model.predict(model.project(v1)); // [n, out]
        let p2 = model.predict(model.project(v2));
        Ok(MethodOutput::loss(byol(p1, p2, z1, z2)))
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
