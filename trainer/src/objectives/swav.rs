//! SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
//! Assignments", Algorithm 1 and `main_swav.py`) and SEER (Goyal et al. 2021: SwAV on a
//! RegNetY over uncurated images), one method with two families of recipes.
//!
//! ```text
//! C = prototypes, K columns of width d, each of unit length     (a Linear without bias)
//! z_v = normalize(h(f(x_v)))       every view v; f one pass per resolution, h the MLP head
//! scores_v = z_v C                 [n, K]
//! for i in the first crops_for_assign views (the high-resolution ones):
//!     q_i = sinkhorn(scores_i ++ queue_i C)[:n]      no gradient; 3 iterations, epsilon 0.05
//!     l_i = sum over v != i of -mean_rows(sum_k q_i log softmax(scores_v / tau)) / (V - 1)
//! loss = mean_i l_i;  then queue_i <- z_i (the queue is read before it is written)
//! optimiser step (C untouched while step < freeze_prototypes_niters); C <- normalize(C)
//! ```
//!
//! The loss and Sinkhorn-Knopp are [`crate::losses::swav`] (golden-tested against lightly
//! with and without a queue). Multi-crop batches go through the backbone once per
//! resolution ([`super::multicrop_cnn`]); the head sees every view at once, as in SwAV's
//! `forward_head`, so its BatchNorm normalises over all crops together.
//!
//! The queue (`queue_length` rows per assignment view, zeros at first) is filled from
//! `queue_start_epoch` on (or `queue_start_step`, for streams of unknown length) and takes
//! part in the codes once it is full, as `main_swav.py` does (`queue[i, -1] != 0`). Its rows
//! are the embeddings `z` (not scores), scored against the current prototypes each step.
//! It lives in [`SwavState`], so checkpoints carry it and a resumed run is exact.
//!
//! Logged beside the loss: `prototypes_used`, the number of distinct prototypes the
//! high-resolution views of the micro-batch score highest (a collapsed model uses one), and
//! `queue_used` (1 when the queue took part in the codes).
//!
//! Not as the official code: its LARS (apex `LARC` over SGD) adapts and decays every
//! parameter, biases and BatchNorm included; [`crate::optim`]'s LARS leaves 1-D parameters
//! out of both, as Barlow Twins' does. With gradient accumulation, Sinkhorn balances each
//! micro-batch (plus the queue), where the reference all-reduces over the global batch.

use std::collections::HashSet;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use super::multicrop_cnn::forward_by_resolution;
use super::simclr::check_temperature;
use super::two_view::check_width;
use super::{Method, MethodOutput, MethodSpec, ResolveContext, StepContext};
use crate::backbone::{Backbone, BackboneConfig, NormMode};
use crate::error::{Error, Result};
use crate::feeder::DeviceBatch;
use crate::heads::{LastNorm, MlpHead, MlpHeadConfig};
use crate::losses::normalize;
use crate::losses::queue::FeatureQueue;
use crate::losses::swav::{SwavLoss, swav_global};

/// `[objective]` of `method = "swav"`. Names follow `main_swav.py`'s flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwavConfig {
    /// Prototypes `K` (`nmb_prototypes`). Default 3000 (ImageNet); far more than the batch
    /// plus queue can balance makes the equipartition constraint loose.
    pub num_prototypes: usize,
    /// Head hidden width (`hidden_mlp`). Default 2048.
    pub proj_hidden_dim: usize,
    /// Embedding width `d` (`feat_dim`). Default 128.
    pub proj_output_dim: usize,
    /// Linear layers of the head. Default 2 (SwAV: `F -> 2048 -> 128`); SEER uses 3.
    pub proj_layers: usize,
    /// BatchNorm after each hidden linear layer of the head. Default true (SwAV); SEER's
    /// head has none.
    pub proj_hidden_bn: bool,
    /// Softmax temperature `tau` of the predictions. Default 0.1.
    pub temperature: f64,
    /// Entropic regularisation `epsilon` of the codes. Default 0.05; smaller gives harder
    /// codes.
    pub sinkhorn_epsilon: f64,
    /// Sinkhorn-Knopp iterations. Default 3 (SEER: 10).
    pub sinkhorn_iterations: usize,
    /// The first this many views are the ones whose codes are predicted
    /// (`crops_for_assign = 0 .. n`); they must share the first view's size. Default 2.
    pub crops_for_assign: usize,
    /// Rows of the feature queue per assignment view (`queue_length`). Default 0: no queue.
    /// Worth it when the batch is small next to `num_prototypes`.
    pub queue_length: usize,
    /// Epoch from which the queue is filled (`epoch_queue_starts`). Default 15. Early
    /// features move fast: a queue started too soon holds stale embeddings.
    pub queue_start_epoch: f64,
    /// Optimiser step from which the queue is filled; replaces `queue_start_epoch` when
    /// set (streams whose epoch length is unknown). Default unset.
    pub queue_start_step: Option<u64>,
    /// Optimiser steps during which the prototypes are not updated
    /// (`freeze_prototypes_niters`). Default 313 (one ImageNet epoch at batch 4096).
    pub freeze_prototypes_niters: u64,
}

impl Default for SwavConfig {
    fn default() -> Self {
        Self {
            num_prototypes: 3000,
            proj_hidden_dim: 2048,
            proj_output_dim: 128,
            proj_layers: 2,
            proj_hidden_bn: true,
            temperature: 0.1,
            sinkhorn_epsilon: 0.05,
            sinkhorn_iterations: 3,
            crops_for_assign: 2,
            queue_length: 0,
            queue_start_epoch: 15.0,
            queue_start_step: None,
            freeze_prototypes_niters: 313,
        }
    }
}

impl SwavConfig {
    /// The projection head over `features` backbone features.
    pub fn head(&self, features: usize) -> MlpHeadConfig {
        let mut dims = vec![features];
        dims.extend(std::iter::repeat_n(
            self.proj_hidden_dim,
            self.proj_layers.saturating_sub(1),
        ));
        dims.push(self.proj_output_dim);
        MlpHeadConfig {
            dims,
            bias: true,
            last_bias: true,
            hidden_bn: self.proj_hidden_bn,
            last_bn: LastNorm::None,
        }
    }

    /// The loss's hyper-parameters.
    pub fn loss(&self) -> SwavLoss {
        SwavLoss {
            temperature: self.temperature,
            sinkhorn_epsilon: self.sinkhorn_epsilon,
            sinkhorn_iterations: self.sinkhorn_iterations,
        }
    }

    /// Whether the step in `ctx` fills the queue: from `queue_start_step`, else from
    /// `queue_start_epoch`. When the epoch length is unknown and no step is given, only a
    /// queue that starts at epoch 0 is filled.
    pub fn queue_filling(&self, ctx: &StepContext) -> bool {
        if self.queue_length == 0 {
            return false;
        }
        match (self.queue_start_step, ctx.epoch()) {
            (Some(start), _) => ctx.step >= start,
            (None, Some(epoch)) => epoch >= self.queue_start_epoch,
            (None, None) => self.queue_start_epoch <= 0.0,
        }
    }

    /// The loss (and logged parts) of one micro-batch's views, in batch order; fills the
    /// queue when due.
    ///
    /// # Shapes
    /// `views`: `V >= 2` tensors `[n, 3, h_v, w_v]`, the first `crops_for_assign` of one size.
    ///
    /// # Errors
    /// [`Error::Shape`] when there are fewer views than `crops_for_assign` or two, or the
    /// views differ in batch size.
    pub fn views_loss<B: AutodiffBackend>(
        &self,
        model: &SwavModel<B>,
        state: &mut SwavState<B::InnerBackend>,
        views: Vec<Tensor<B, 4>>,
        ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let n_views = views.len();
        if n_views < self.crops_for_assign.max(2) {
            return Err(Error::Shape {
                what: "swav views (at least crops_for_assign and 2)",
                expected: vec![self.crops_for_assign.max(2)],
                actual: vec![n_views],
            });
        }
        let [n, _, _, _] = views[0].dims();
        let (z, scores) = model.forward(views)?; // [V n, d], [V n, K]
        let [_, d] = z.dims();
        let per_view: Vec<Tensor<B, 2>> = (0..n_views)
            .map(|v| scores.clone().narrow(0, v * n, n)) // [n, K]
            .collect();
        let (high, low) = per_view.split_at(self.crops_for_assign);

        // Codes: the queue joins Sinkhorn once it is full, scored by today's prototypes.
        let filling = self.queue_filling(ctx);
        if ctx.step == 0 && self.queue_length > 0 && !filling && ctx.epoch().is_none() {
            tracing::warn!(
                "the epoch length is unknown: the SwAV queue starts only with `queue_start_step`"
            );
        }
        let queued: Option<Vec<Tensor<B, 2>>> = (filling && state.is_full()).then(|| {
            let c = model.prototypes.weight.val().inner(); // [d, K]
            state
                .queues
                .iter()
                .map(|q| Tensor::from_inner(q.rows().matmul(c.clone()))) // [q, K]
                .collect()
        });
        // Codes balanced over the global batch with several ranks.
        let sum = ctx.sum_over_ranks::<B>();
        let loss = swav_global(&self.loss(), high, low, queued.as_deref(), sum.as_deref())?;
        if filling {
            let z = z.inner();
            for (i, queue) in state.queues.iter_mut().enumerate() {
                queue.enqueue(z.clone().slice([i * n..(i + 1) * n, 0..d]))?;
            }
        }

        // Spread: distinct prototypes the high-resolution views score highest.
        let device = loss.device();
        let hard = Tensor::cat(high.to_vec(), 0).inner().argmax(1); // [crops_for_assign n, 1]
        let used: HashSet<i64> = hard.into_data().iter::<i64>().collect();
        let scalar = |v: f64| Tensor::<B::InnerBackend, 1>::from_floats([v as f32], &device);
        let queue_used = if queued.is_some() { 1.0 } else { 0.0 };
        Ok(MethodOutput {
            loss,
            parts: vec![
                ("prototypes_used", scalar(used.len() as f64)),
                ("queue_used", scalar(queue_used)),
            ],
            picture: None,
        })
    }
}

impl MethodSpec for SwavConfig {
    const NAME: &'static str = "swav";
    const PAPER: &'static str = "Caron et al. 2020, Unsupervised Learning of Visual Features by \
        Contrasting Cluster Assignments (SEER: Goyal et al. 2021, Self-supervised Pretraining of \
        Visual Features in the Wild)";
    const RECIPES: &'static [&'static str] =
        &["swav_resnet50", "seer_regnety", "swav_resnet18_cifar"];

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        let sizes = ctx.view_sizes();
        if sizes.len() < 2 {
            return Err(Error::config(
                "views",
                "count",
                format!(
                    "SwAV predicts each view's codes from the other views: it needs at least 2 \
                     views per image, the recipe makes {}",
                    sizes.len()
                ),
            ));
        }
        let assign = self.crops_for_assign;
        if assign == 0 || assign > sizes.len() {
            return Err(Error::config(
                "objective",
                "crops_for_assign",
                format!("{assign} must be between 1 and the {} views", sizes.len()),
            ));
        }
        if sizes[..assign].iter().any(|&s| s != sizes[0]) {
            return Err(Error::config(
                "objective",
                "crops_for_assign",
                format!(
                    "the first {assign} views give the codes and must share the first view's \
                     size; the recipe's sizes are {sizes:?}"
                ),
            ));
        }
        if let BackboneConfig::Vit(vit) = ctx.backbone
            && sizes.iter().any(|&s| s != vit.img_size)
        {
            return Err(Error::config(
                "views",
                "size",
                format!(
                    "SwAV on a ViT needs every view at the model's img_size {} (no position \
                     embedding interpolation here); the recipe's sizes are {sizes:?}",
                    vit.img_size
                ),
            ));
        }
        check_temperature(self.temperature)?;
        if !(self.sinkhorn_epsilon > 0.0 && self.sinkhorn_epsilon.is_finite()) {
            return Err(Error::config(
                "objective",
                "sinkhorn_epsilon",
                format!("{} must be positive", self.sinkhorn_epsilon),
            ));
        }
        check_width("num_prototypes", self.num_prototypes)?;
        check_width("proj_hidden_dim", self.proj_hidden_dim)?;
        check_width("proj_output_dim", self.proj_output_dim)?;
        check_width("proj_layers", self.proj_layers)?;
        if !(self.queue_start_epoch >= 0.0 && self.queue_start_epoch.is_finite()) {
            return Err(Error::config(
                "objective",
                "queue_start_epoch",
                format!("{} must be a number of epochs >= 0", self.queue_start_epoch),
            ));
        }
        Ok(self)
    }
}

/// What SwAV trains: the backbone, the projection head and the prototypes.
#[derive(Module, Debug)]
pub struct SwavModel<B: Backend> {
    /// The network being pretrained.
    pub backbone: Backbone<B>,
    /// Features to the embedding (before L2 normalisation).
    pub projector: MlpHead<B>,
    /// Prototypes `C`: a linear layer without bias, weight `[d, K]` (burn's layout, the
    /// transpose of PyTorch's `prototypes.weight`), each column of unit length.
    pub prototypes: Linear<B>,
}

impl<B: Backend> SwavModel<B> {
    /// Unit-length embeddings and prototype scores of every view, BatchNorm in training
    /// mode: the backbone once per resolution, the head over all views together.
    ///
    /// # Shapes
    /// `views`: `V` tensors `[n, 3, h_v, w_v]` -> (`z` `[V n, d]`, scores `[V n, K]`); view
    /// `v`'s rows are `v n .. (v + 1) n`.
    ///
    /// # Errors
    /// [`Error::Shape`] when there are no views or they differ in batch size.
    pub fn forward(&self, views: Vec<Tensor<B, 4>>) -> Result<(Tensor<B, 2>, Tensor<B, 2>)> {
        let features = forward_by_resolution(views, |x| {
            self.backbone.forward_features(x, NormMode::Train)
        })?; // [V n, F]
        let z = normalize(self.projector.forward(features, NormMode::Train), 1); // [V n, d]
        let scores = self.prototypes.forward(z.clone()); // [V n, K]
        Ok((z, scores))
    }

    /// The same model with each prototype (a column of `C`) scaled to unit length, outside
    /// any graph (SwAV normalises before every forward pass; here after every step and at
    /// init, which is the same sequence of weights).
    pub fn normalize_prototypes(mut self) -> Self {
        self.prototypes.weight = self.prototypes.weight.map(|c| {
            let tracked = c.is_require_grad();
            // Untracked (a plain `detach` keeps a leaf's requirement), then a fresh leaf.
            normalize(c.set_require_grad(false), 0).set_require_grad(tracked) // [d, K]
        });
        self
    }
}

/// The queue of past embeddings, one per assignment view (none without a queue).
#[derive(Module, Debug)]
pub struct SwavState<B: Backend> {
    /// `[queue_length, d]` each; rows are zero until written.
    pub queues: Vec<FeatureQueue<B>>,
}

impl<B: Backend> SwavState<B> {
    /// Whether every queue has been written through (its last row is no longer zero; the
    /// rows are unit embeddings once written), `main_swav.py`'s test.
    pub fn is_full(&self) -> bool {
        !self.queues.is_empty()
            && self.queues.iter().all(|q| {
                let [rows, d] = q.rows().dims();
                let last: f64 = q
                    .rows()
                    .slice([rows - 1..rows, 0..d])
                    .abs()
                    .sum()
                    .into_scalar()
                    .elem();
                last > 0.0
            })
    }
}

impl<B: AutodiffBackend> Method<B> for SwavConfig {
    type Model = SwavModel<B>;
    type State = SwavState<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let projector = self.head(backbone.num_features()).init(device);
        let prototypes = LinearConfig::new(self.proj_output_dim, self.num_prototypes)
            .with_bias(false)
            .init(device);
        let model = SwavModel {
            backbone,
            projector,
            prototypes,
        }
        .normalize_prototypes();
        let queues = if self.queue_length == 0 {
            Vec::new()
        } else {
            (0..self.crops_for_assign)
                .map(|_| {
                    let zeros = Tensor::zeros([self.queue_length, self.proj_output_dim], device);
                    FeatureQueue::from_parts(zeros, 0).expect("row 0 of a non-empty queue")
                })
                .collect()
        };
        (model, SwavState { queues })
    }

    fn forward(
        &self,
        model: &Self::Model,
        state: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let views = batch.views.into_iter().map(Tensor::from_inner).collect();
        self.views_loss(model, state, views, ctx)
    }

    /// The prototypes get no update during the first `freeze_prototypes_niters` steps
    /// (no gradient: neither momentum nor weight decay touches them, as `p.grad = None`).
    fn adjust_gradients(
        &self,
        model: &Self::Model,
        grads: &mut GradientsParams,
        ctx: &StepContext,
    ) {
        if ctx.step < self.freeze_prototypes_niters {
            grads.remove::<B::InnerBackend, 2>(model.prototypes.weight.id);
        }
    }

    fn after_step(
        &self,
        model: Self::Model,
        state: Self::State,
        _ctx: &StepContext,
    ) -> (Self::Model, Self::State) {
        (model.normalize_prototypes(), state)
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        model.backbone.clone()
    }
}

#[cfg(test)]
#[path = "swav_tests.rs"]
mod tests;
