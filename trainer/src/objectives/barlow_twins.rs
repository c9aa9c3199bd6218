//! Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
//! Reduction"), Algorithm 1.
//!
//! ```text
//! z1, z2 = g(f(y1)), g(f(y2))            g: 3-layer 8192 expander (Linear no bias, BN, ReLU)
//! c      = bn(z1)^T bn(z2) / N           bn: BatchNorm1d without affine (batch statistics)
//! loss   = sum_i (1 - c_ii)^2 + lambda sum_{i != j} c_ij^2,   lambda = 0.0051
//! ```
//!
//! Official code: LARS (lr 0.2 weights, 0.0048 biases and norms, weight decay 1.5e-6).
//! The loss is [`crate::losses::barlow_twins::barlow_twins`], checked against the official
//! `BarlowTwins.forward`.

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::two_view::{Siamese, check_width, two_views};
use super::{Method, MethodOutput, MethodSpec, NoState, ResolveContext, StepContext};
use crate::backbone::Backbone;
use crate::error::{Error, Result};
use crate::feeder::DeviceBatch;
use crate::heads::{LastNorm, MlpHeadConfig};
use crate::losses::barlow_twins::barlow_twins_global;

/// `[objective]` of `method = "barlow_twins"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BarlowTwinsConfig {
    /// Weight of the off-diagonal (redundancy) term. Default 0.0051.
    pub lambda: f64,
    /// Expander width (every layer). Default 8192.
    pub proj_dim: usize,
}

impl Default for BarlowTwinsConfig {
    fn default() -> Self {
        Self {
            lambda: 0.0051,
            proj_dim: 8192,
        }
    }
}

impl MethodSpec for BarlowTwinsConfig {
    const NAME: &'static str = "barlow_twins";
    const PAPER: &'static str =
        "Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction";
    const RECIPES: &'static [&'static str] = &["barlowtwins_resnet50"];

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        ctx.require_views("Barlow Twins", 2)?;
        check_width("proj_dim", self.proj_dim)?;
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return Err(Error::config(
                "objective",
                "lambda",
                format!("{} must be >= 0", self.lambda),
            ));
        }
        Ok(self)
    }
}

impl<B: AutodiffBackend> Method<B> for BarlowTwinsConfig {
    type Model = Siamese<B>;
    type State = NoState<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let d = self.proj_dim;
        let projector = MlpHeadConfig {
            dims: vec![backbone.num_features(), d, d, d],
            bias: false,
            last_bias: false,
            hidden_bn: true,
            last_bn: LastNorm::None,
        };
        (
            Siamese::new(backbone, &projector, None, device),
            NoState::default(),
        )
    }

    fn forward(
        &self,
        model: &Self::Model,
        _state: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let (y1, y2) = two_views::<B>(batch)?;
        // Standardisation and cross-correlation over the global batch with several ranks.
        let sum = ctx.sum_over_ranks::<B>();
        let (z1, z2) = (model.project(y1), model.project(y2));
        let (loss, _c) = barlow_twins_global(z1, z2, self.lambda, sum.as_deref());
        Ok(MethodOutput::loss(loss))
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        model.backbone.clone()
    }
}
