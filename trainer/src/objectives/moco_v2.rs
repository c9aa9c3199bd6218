//! MoCo v2 (Chen, Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive
//! Learning"; He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation
//! Learning", Algorithm 1).
//!
//! ```text
//! q = normalize(g(f_q(x_q)))          query encoder: backbone + MLP head 2048 -> 128
//! k = normalize(g'(f_k(x_k)))         key encoder: EMA of the query encoder (m = 0.999), no grad
//! logits = [q.k, q.queue^T] / T       T = 0.2; the positive is class 0
//! loss = CE(logits, 0); then the batch's keys replace the oldest of the queue (65536 keys)
//! ```
//!
//! The official code shuffles the batch across GPUs before the key encoder (shuffle BN) so
//! that BatchNorm statistics cannot leak which key belongs to which query; on one device
//! there is nothing to shuffle across, as in lightly's and solo-learn's single-GPU runs.
//! SGD, lr 0.03 x batch / 256, weight decay 1e-4 on every parameter. The loss is
//! [`crate::losses::infonce::moco_v2`].

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use super::simclr::check_temperature;
use super::two_view::{Siamese, Teacher, check_momentum, check_width, teacher_momentum, two_views};
use super::{Method, MethodOutput, MethodSpec, ResolveContext, StepContext};
use crate::backbone::Backbone;
use crate::error::Result;
use crate::feeder::DeviceBatch;
use crate::heads::{LastNorm, MlpHeadConfig};
use crate::losses::infonce::moco_v2;
use crate::losses::normalize;
use crate::losses::queue::FeatureQueue;

/// `[objective]` of `method = "moco_v2"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MocoV2Config {
    /// InfoNCE temperature `T`. Default 0.2.
    pub temperature: f64,
    /// Keys in the queue `K`. Default 65536. Larger than the data set means stale negatives
    /// of the same images.
    pub queue_size: usize,
    /// MLP head hidden width. Default 2048.
    pub proj_hidden_dim: usize,
    /// Key width. Default 128.
    pub proj_output_dim: usize,
    /// Key-encoder momentum `m`. Default 0.999.
    pub momentum: f64,
    /// Momentum at the end of the run. Default: the same (fixed, as MoCo v2).
    pub momentum_end: Option<f64>,
}

impl Default for MocoV2Config {
    fn default() -> Self {
        Self {
            temperature: 0.2,
            queue_size: 65536,
            proj_hidden_dim: 2048,
            proj_output_dim: 128,
            momentum: 0.999,
            momentum_end: None,
        }
    }
}

impl MethodSpec for MocoV2Config {
    const NAME: &'static str = "moco_v2";
    const PAPER: &'static str =
        "Chen, Fan, Girshick and He 2020, Improved Baselines with Momentum Contrastive Learning";
    const RECIPES: &'static [&'static str] = &["mocov2_resnet50"];

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        ctx.require_views("MoCo v2", 2)?;
        check_temperature(self.temperature)?;
        check_width("queue_size", self.queue_size)?;
        check_width("proj_hidden_dim", self.proj_hidden_dim)?;
        check_width("proj_output_dim", self.proj_output_dim)?;
        check_momentum("momentum", self.momentum)?;
        check_momentum("momentum_end", self.momentum_end.unwrap_or(self.momentum))?;
        Ok(self)
    }
}

/// The key encoder and the queue of its past keys.
#[derive(Module, Debug)]
pub struct MocoV2State<B: Backend> {
    /// Momentum key encoder.
    pub teacher: Teacher<B>,
    /// Past keys, L2-normalised `[K, d]`.
    pub queue: FeatureQueue<B>,
}

impl<B: AutodiffBackend> Method<B> for MocoV2Config {
    type Model = Siamese<B>;
    type State = MocoV2State<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let projector = MlpHeadConfig {
            dims: vec![
                backbone.num_features(),
                self.proj_hidden_dim,
                self.proj_output_dim,
            ],
            bias: true,
            last_bias: true,
            hidden_bn: false,
            last_bn: LastNorm::None,
        };
        let student = Siamese::new(backbone, &projector, None, device);
        let state = MocoV2State {
            teacher: student.teacher(),
            queue: FeatureQueue::random(self.queue_size, self.proj_output_dim, device),
        };
        (student, state)
    }

    fn forward(
        &self,
        model: &Self::Model,
        state: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let (x_q, x_k) = two_views::<B>(batch)?;
        let k = normalize(state.teacher.project(x_k.inner()), 1); // [n, d], no grad
        let q = model.project(x_q); // [n, d]
        let loss = moco_v2(
            q,
            Tensor::from_inner(k.clone()),
            Tensor::from_inner(state.queue.rows()),
            self.temperature,
        );
        // Every rank's keys join the queue (the official `concat_all_gather`), so all ranks
        // keep the same queue: the one of a single process with the global batch.
        state.queue.enqueue(ctx.gather_rows(k))?; // [W n, d]
        Ok(MethodOutput::loss(loss))
    }

    fn after_step(
        &self,
        model: Self::Model,
        state: Self::State,
        ctx: &StepContext,
    ) -> (Self::Model, Self::State) {
        let end = self.momentum_end.unwrap_or(self.momentum);
        let m = teacher_momentum(self.momentum, end, ctx);
        let MocoV2State { teacher, queue } = state;
        let teacher = model.update_teacher(teacher, m);
        (model, MocoV2State { teacher, queue })
    }

    fn teacher_momentum(&self, ctx: &StepContext) -> Option<f64> {
        Some(teacher_momentum(
            self.momentum,
            self.momentum_end.unwrap_or(self.momentum),
            ctx,
        ))
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        model.backbone.clone()
    }

    fn teacher_backbone(&self, state: &Self::State) -> Option<Backbone<B::InnerBackend>> {
        Some(state.teacher.backbone.clone())
    }
}
