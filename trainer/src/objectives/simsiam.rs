//! SimSiam (Chen and He 2021, "Exploring Simple Siamese Representation Learning"),
//! Algorithm 1.
//!
//! ```text
//! z1, z2 = f(x1), f(x2)                  f: backbone + 3-layer projector (BN, last BN no affine)
//! p1, p2 = h(z1), h(z2)                  h: predictor 2048 -> 512 -> 2048
//! loss   = -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2      no momentum encoder
//! ```
//!
//! Official code: projector `Linear(bias=False), BN, ReLU` twice, then `Linear, BN(affine=False)`;
//! predictor `Linear(2048, 512, bias=False), BN, ReLU, Linear(512, 2048)`; SGD with momentum
//! 0.9, weight decay 1e-4 on every parameter, lr 0.05 x batch / 256 (the predictor's lr is
//! not decayed in the paper; here it follows the one schedule). The loss is
//! [`crate::losses::cosine::simsiam`].

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::two_view::{Siamese, check_width, two_views};
use super::{Method, MethodOutput, MethodSpec, NoState, ResolveContext, StepContext};
use crate::backbone::Backbone;
use crate::error::Result;
use crate::feeder::DeviceBatch;
use crate::heads::{LastNorm, MlpHeadConfig};
use crate::losses::cosine::simsiam;

/// `[objective]` of `method = "simsiam"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSiamConfig {
    /// Projector width (hidden and output). Default 2048.
    pub proj_dim: usize,
    /// Predictor bottleneck width. Default 512.
    pub pred_hidden_dim: usize,
}

impl Default for SimSiamConfig {
    fn default() -> Self {
        Self {
            proj_dim: 2048,
            pred_hidden_dim: 512,
        }
    }
}

impl MethodSpec for SimSiamConfig {
    const NAME: &'static str = "simsiam";
    const PAPER: &'static str =
        "Chen and He 2021, Exploring Simple Siamese Representation Learning";
    const RECIPES: &'static [&'static str] = &["simsiam_resnet18_cifar"];

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        ctx.require_views("SimSiam", 2)?;
        check_width("proj_dim", self.proj_dim)?;
        check_width("pred_hidden_dim", self.pred_hidden_dim)?;
        Ok(self)
    }
}

impl<B: AutodiffBackend> Method<B> for SimSiamConfig {
    type Model = Siamese<B>;
    type State = NoState<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let d = self.proj_dim;
        let projector = MlpHeadConfig {
            dims: vec![backbone.num_features(), d, d, d],
            bias: false,
            last_bias: false,
            hidden_bn: true,
            last_bn: LastNorm::NoAffine,
        };
        let predictor = MlpHeadConfig {
            dims: vec![d, self.pred_hidden_dim, d],
            bias: false,
            last_bias: true,
            hidden_bn: true,
            last_bn: LastNorm::None,
        };
        let model = Siamese::new(backbone, &projector, Some(&predictor), device);
        (model, NoState::default())
    }

    fn forward(
        &self,
        model: &Self::Model,
        _state: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        _ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let (x1, x2) = two_views::<B>(batch)?;
        let (z1, z2) = (model.project(x1), model.project(x2)); // [n, d]
        let (p1, p2) = (model.predict(z1.clone()), model.predict(z2.clone()));
        Ok(MethodOutput::loss(simsiam(p1, p2, z1, z2)))
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        model.backbone.clone()
    }
}
