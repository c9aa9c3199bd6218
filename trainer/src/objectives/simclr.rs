//! SimCLR (Chen, Kornblith, Norouzi, Hinton 2020, "A Simple Framework for Contrastive
//! Learning of Visual Representations").
//!
//! ```text
//! z1, z2 = g(f(view1)), g(f(view2))      f: backbone, g: projection MLP (BN in the hidden layer)
//! loss   = NT-Xent(z1, z2, temperature)  positives: the other view; negatives: the 2N - 2 others
//! ```
//!
//! The projection head follows the official TF code and lightly's `SimCLRProjectionHead`
//! (Linear, BatchNorm, ReLU, Linear). Optimiser in the recipes: LARS, lr 0.3 x batch / 256.
//! The loss is [`crate::losses::ntxent::nt_xent`], checked against lightly's `NTXentLoss`.
//! With several ranks the negatives come from the global batch (every rank's projections,
//! gathered with their gradients, as the paper's TPU code does) and the projector's
//! BatchNorm is synchronised: W ranks x B train as one process with batch W x B.

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use super::two_view::{Siamese, check_width, two_views};
use super::{Method, MethodOutput, MethodSpec, NoState, ResolveContext, StepContext};
use crate::backbone::Backbone;
use crate::error::{Error, Result};
use crate::feeder::DeviceBatch;
use crate::heads::{LastNorm, MlpHeadConfig};
use crate::losses::ntxent::nt_xent_global;

/// `[objective]` of `method = "simclr"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimClrConfig {
    /// NT-Xent temperature. Default 0.1 (ImageNet, paper); CIFAR-10 recipes use 0.5.
    pub temperature: f64,
    /// Projector hidden width. Default 2048.
    pub proj_hidden_dim: usize,
    /// Embedding width the loss sees. Default 128.
    pub proj_output_dim: usize,
}

impl Default for SimClrConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            proj_hidden_dim: 2048,
            proj_output_dim: 128,
        }
    }
}

impl SimClrConfig {
    fn projector(&self, features: usize) -> MlpHeadConfig {
        MlpHeadConfig {
            dims: vec![features, self.proj_hidden_dim, self.proj_output_dim],
            bias: true,
            last_bias: true,
            hidden_bn: true,
            last_bn: LastNorm::None,
        }
    }
}

impl MethodSpec for SimClrConfig {
    const NAME: &'static str = "simclr";
    const PAPER: &'static str =
        "Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual Representations";
    const RECIPES: &'static [&'static str] = &["simclr_resnet50", "simclr_resnet18_cifar"];

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        ctx.require_views("SimCLR", 2)?;
        check_temperature(self.temperature)?;
        check_width("proj_hidden_dim", self.proj_hidden_dim)?;
        check_width("proj_output_dim", self.proj_output_dim)?;
        Ok(self)
    }
}

/// Checks a softmax temperature.
pub(crate) fn check_temperature(t: f64) -> Result<()> {
    if !(t > 0.0 && t.is_finite()) {
        return Err(Error::config(
            "objective",
            "temperature",
            format!("{t} must be positive"),
        ));
    }
    Ok(())
}

impl<B: AutodiffBackend> Method<B> for SimClrConfig {
    type Model = Siamese<B>;
    type State = NoState<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let projector = self.projector(backbone.num_features());
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
        let (z1, z2) = (model.project(x1), model.project(x2)); // [n, out] each
        let [n, _] = z1.dims();
        // Negatives from the global batch (every rank's rows; this rank's alone when alone).
        let gather = |z| ctx.gather_rows(z);
        let loss = nt_xent_global(z1, z2, self.temperature, &gather, ctx.first_row(n));
        Ok(MethodOutput::loss(loss))
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        model.backbone.clone()
    }
}
