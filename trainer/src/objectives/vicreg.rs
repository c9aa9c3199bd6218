//! VICReg (Bardes, Ponce, LeCun 2022, "VICReg: Variance-Invariance-Covariance
//! Regularization for Self-Supervised Learning"), Algorithm 1.
//!
//! ```text
//! z, z' = h(f(x)), h(f(x'))               h: 3-layer 8192 expander (Linear, BN, ReLU; last Linear)
//! loss  = 25 mse(z, z') + 25 [v(z) + v(z')] + 1 [c(z) + c(z')]
//!   v: mean over dims of relu(1 - sqrt(var + 1e-4));  c: sum of squared off-diagonal
//!   covariances / d
//! ```
//!
//! Official code: LARS (base lr 0.2, weight decay 1e-6). The loss is
//! [`crate::losses::vicreg::vicreg`]; its three terms are logged.

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::two_view::{Siamese, check_width, two_views};
use super::{Method, MethodOutput, MethodSpec, NoState, ResolveContext, StepContext, part};
use crate::backbone::Backbone;
use crate::error::{Error, Result};
use crate::feeder::DeviceBatch;
use crate::heads::{LastNorm, MlpHeadConfig};
use crate::losses::vicreg::{VicRegWeights, vicreg_global};

/// `[objective]` of `method = "vicreg"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VicRegConfig {
    /// Weight of the invariance (mean squared error) term, `lambda`. Default 25.
    pub invariance: f64,
    /// Weight of the variance (hinge on the std) term, `mu`. Default 25.
    pub variance: f64,
    /// Weight of the covariance term, `nu`. Default 1.
    pub covariance: f64,
    /// Expander width (every layer). Default 8192.
    pub proj_dim: usize,
}

impl Default for VicRegConfig {
    fn default() -> Self {
        Self {
            invariance: 25.0,
            variance: 25.0,
            covariance: 1.0,
            proj_dim: 8192,
        }
    }
}

impl MethodSpec for VicRegConfig {
    const NAME: &'static str = "vicreg";
    const PAPER: &'static str =
        "Bardes, Ponce and LeCun 2022, VICReg: Variance-Invariance-Covariance Regularization";
    const RECIPES: &'static [&'static str] = &["vicreg_resnet50"];

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        ctx.require_views("VICReg", 2)?;
        check_width("proj_dim", self.proj_dim)?;
        for (key, w) in [
            ("invariance", self.invariance),
            ("variance", self.variance),
            ("covariance", self.covariance),
        ] {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(Error::config("objective", key, format!("{w} must be >= 0")));
            }
        }
        Ok(self)
    }
}

impl<B: AutodiffBackend> Method<B> for VicRegConfig {
    type Model = Siamese<B>;
    type State = NoState<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let d = self.proj_dim;
        let projector = MlpHeadConfig {
            dims: vec![backbone.num_features(), d, d, d],
            bias: true,
            // The official expander's last Linear has no bias.
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
        let (x1, x2) = two_views::<B>(batch)?;
        let weights = VicRegWeights {
            invariance: self.invariance,
            variance: self.variance,
            covariance: self.covariance,
        };
        // Variance and covariance over the global batch with several ranks.
        let sum = ctx.sum_over_ranks::<B>();
        let out = vicreg_global(
            model.project(x1),
            model.project(x2),
            weights,
            sum.as_deref(),
        );
        Ok(MethodOutput {
            parts: vec![
                ("invariance", part(&out.invariance)),
                ("variance", part(&out.variance)),
                ("covariance", part(&out.covariance)),
            ],
            loss: out.total,
            picture: None,
        })
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        model.backbone.clone()
    }
}
