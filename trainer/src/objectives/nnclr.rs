//! NNCLR (Dwibedi et al. 2021, "With a Little Help from My Friends: Nearest-Neighbor
//! Contrastive Learning of Visual Representations").
//!
//! ```text
//! z0, z1 = g(f(x0)), g(f(x1))         projector 3 layers with BN; predictor 2 layers
//! p0, p1 = h(z0), h(z1)
//! nn(z)  = the support-set row most cosine-similar to z (no gradient)
//! loss   = 0.5 [NT-Xent(nn(z0), p1) + NT-Xent(nn(z1), p0)];  then z1 joins the support set
//! ```
//!
//! Paper defaults: support set 98304, T = 0.1, projector 2048 hidden / 256 out, predictor
//! 4096 hidden, LARS. Matches lightly's NNCLR example (`NNMemoryBankModule`, `NTXentLoss`);
//! the loss is [`crate::losses::nearest_neighbour::nnclr`].

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use super::simclr::check_temperature;
use super::two_view::{Siamese, check_width, two_views};
use super::{Method, MethodOutput, MethodSpec, ResolveContext, StepContext};
use crate::backbone::Backbone;
use crate::error::Result;
use crate::feeder::DeviceBatch;
use crate::heads::{LastNorm, MlpHeadConfig};
use crate::losses::nearest_neighbour::nnclr_global;
use crate::losses::queue::FeatureQueue;

/// `[objective]` of `method = "nnclr"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NnclrConfig {
    /// NT-Xent temperature. Default 0.1.
    pub temperature: f64,
    /// Support-set size. Default 98304 (paper); CIFAR recipes use a few thousand.
    pub queue_size: usize,
    /// Projector hidden width. Default 2048.
    pub proj_hidden_dim: usize,
    /// Embedding width. Default 256.
    pub proj_output_dim: usize,
    /// Predictor hidden width. Default 4096.
    pub pred_hidden_dim: usize,
}

impl Default for NnclrConfig {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            queue_size: 98304,
            proj_hidden_dim: 2048,
            proj_output_dim: 256,
            pred_hidden_dim: 4096,
        }
    }
}

impl MethodSpec for NnclrConfig {
    const NAME: &'static str = "nnclr";
    const PAPER: &'static str = "Dwibedi et al. 2021, With a Little Help from My Friends: Nearest-Neighbor Contrastive Learning";
    const RECIPES: &'static [&'static str] = &["nnclr_resnet18_cifar"];

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        ctx.require_views("NNCLR", 2)?;
        check_temperature(self.temperature)?;
        for (key, w) in [
            ("queue_size", self.queue_size),
            ("proj_hidden_dim", self.proj_hidden_dim),
            ("proj_output_dim", self.proj_output_dim),
            ("pred_hidden_dim", self.pred_hidden_dim),
        ] {
            check_width(key, w)?;
        }
        Ok(self)
    }
}

/// The support set.
#[derive(Module, Debug)]
pub struct NnclrState<B: Backend> {
    /// Past projections `[queue_size, d]`.
    pub support: FeatureQueue<B>,
}

impl<B: AutodiffBackend> Method<B> for NnclrConfig {
    type Model = Siamese<B>;
    type State = NnclrState<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let (hidden, out) = (self.proj_hidden_dim, self.proj_output_dim);
        let projector = MlpHeadConfig {
            dims: vec![backbone.num_features(), hidden, hidden, out],
            bias: true,
            last_bias: true,
            hidden_bn: true,
            last_bn: LastNorm::Affine,
        };
        let predictor = MlpHeadConfig {
            dims: vec![out, self.pred_hidden_dim, out],
            bias: true,
            last_bias: true,
            hidden_bn: true,
            last_bn: LastNorm::None,
        };
        let model = Siamese::new(backbone, &projector, Some(&predictor), device);
        let state = NnclrState {
            support: FeatureQueue::random(self.queue_size, out, device),
        };
        (model, state)
    }

    fn forward(
        &self,
        model: &Self::Model,
        state: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let (x0, x1) = two_views::<B>(batch)?;
        let (z0, z1) = (model.project(x0), model.project(x1)); // [n, d]
        let (p0, p1) = (model.predict(z0.clone()), model.predict(z1.clone()));
        let support = Tensor::from_inner(state.support.rows());
        let z1_detached = z1.clone().inner();
        let [n, _] = z0.dims();
        // Negatives from the global batch; every rank's projections join the support set,
        // so all ranks keep the same one.
        let gather = |z| ctx.gather_rows(z);
        let first = ctx.first_row(n);
        let loss = nnclr_global(p0, p1, z0, z1, support, self.temperature, &gather, first);
        state.support.enqueue(ctx.gather_rows(z1_detached))?; // [W n, d]
        Ok(MethodOutput::loss(loss))
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        model.backbone.clone()
    }
}
