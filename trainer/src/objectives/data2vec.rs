//! data2vec for images (Baevski et al. 2022, "data2vec: A General Framework for
//! Self-supervised Learning in Speech, Vision and Language", §3).
//!
//! ```text
//! student: z = ViT(x with the block-masked patches replaced by a mask token)   [n, 1 + l, d]
//!          f(x) = regression head (linear d -> d) over z's patch tokens        [n, l, d]
//! teacher: EMA of the student's encoder, sees the whole image, no gradient;
//!          y = average of its top K = 6 block outputs (patch tokens), each instance-
//!              normalised over the tokens, then layer-normalised (no parameters)
//! loss   = smooth L1 (beta 2) between f(x) and y at the masked tokens, summed over the
//!          channels, / sqrt(d), averaged over the masked tokens
//! after each step: teacher <- tau teacher + (1 - tau) student,
//!          tau linear from 0.999 to 0.9999 over the first `momentum_anneal_fraction` of
//!          the run, then constant (§3.3 "τ0 = 0.999, τe = 0.9999, τn updates")
//! ```
//!
//! The target computation and the loss are [`crate::losses::data2vec`], checked by hand on
//! small cases (there is no reference value). Masks: BEiT's block masking from the pipeline
//! (`[views.mask] kind = "block"`, 60% of the patches in the paper). The block outputs are
//! the residual stream at the end of each block (the official image code's
//! `--layer_results end`); the paper's text prefers the FFN output before the last
//! residual, which this ViT does not expose.

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::masked_view::{reject_derived, single_masked_view, take_masked, vit_config};
use super::two_view::check_momentum;
use super::{Method, MethodOutput, MethodSpec, ResolveContext, StepContext};
use crate::backbone::Backbone;
use crate::error::{Error, Result};
use crate::feeder::DeviceBatch;
use crate::losses::data2vec::{regression_loss, targets};
use crate::precision::Precision;
use crate::vit::MaskTokens;
use crate::vit::{Vit, init_linear};

/// `[objective]` of `method = "data2vec"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Data2VecConfig {
    /// Teacher blocks averaged into the target, the last ones (`K`). Default 6 (paper, for
    /// ViT-B of 12 blocks). At most the encoder's depth; 1 is the last block alone.
    pub average_top_k_layers: usize,
    /// Instance-normalise each block's output over the tokens before averaging. Default true.
    pub instance_norm_target_layer: bool,
    /// Layer-normalise the averaged target over the channels (no parameters). Default true.
    pub layer_norm_targets: bool,
    /// Smooth L1 `beta`; 0 is the squared error. Default 2.0 (the official image recipe's
    /// `--l1_beta 2.0`).
    pub loss_beta: f64,
    /// Loss scale; unset = `1 / sqrt(d)` (fairseq's default).
    pub loss_scale: Option<f64>,
    /// Teacher momentum at step 0 (`tau_0`). Default 0.999.
    pub momentum: f64,
    /// Teacher momentum after the anneal (`tau_e`). Default 0.9999.
    pub momentum_end: f64,
    /// Fraction of the run over which the momentum rises linearly (`tau_n`), in (0, 1].
    /// Default 1 (the whole run).
    pub momentum_anneal_fraction: f64,
    /// Index of the masked view (derived from the views: not a recipe key).
    pub view: usize,
}

impl Default for Data2VecConfig {
    fn default() -> Self {
        Self {
            average_top_k_layers: 6,
            instance_norm_target_layer: true,
            layer_norm_targets: true,
            loss_beta: 2.0,
            loss_scale: None,
            momentum: 0.999,
            momentum_end: 0.9999,
            momentum_anneal_fraction: 1.0,
            view: 0,
        }
    }
}

impl Data2VecConfig {
    /// The teacher momentum of the step in `ctx`: linear from `momentum` to `momentum_end`
    /// over the first `momentum_anneal_fraction` of the run, then `momentum_end`.
    pub fn teacher_momentum(&self, ctx: &StepContext) -> f64 {
        let anneal = (ctx.total_steps as f64 * self.momentum_anneal_fraction).max(1.0);
        let t = (ctx.step as f64 / anneal).min(1.0);
        self.momentum + (self.momentum_end - self.momentum) * t
    }
}

impl MethodSpec for Data2VecConfig {
    const NAME: &'static str = "data2vec";
    const PAPER: &'static str = "Baevski et al. 2022, data2vec: A General Framework for \
         Self-supervised Learning in Speech, Vision and Language";
    const RECIPES: &'static [&'static str] = &["data2vec_vit_base", "data2vec_vit_tiny_cifar"];

    // `!(x > 0.0)` on purpose: NaN must fail the checks too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    fn resolve(mut self, ctx: &ResolveContext<'_>) -> Result<Self> {
        reject_derived(&[("view", self.view != 0)])?;
        let view = single_masked_view(ctx, "data2vec", &["block", "random", "simmim"])?;
        let vit = vit_config(ctx, "data2vec")?;
        if self.average_top_k_layers == 0 || self.average_top_k_layers > vit.depth {
            return Err(Error::config(
                "objective",
                "average_top_k_layers",
                format!(
                    "{} must be in 1..={} (the encoder's depth)",
                    self.average_top_k_layers, vit.depth
                ),
            ));
        }
        check_momentum("momentum", self.momentum)?;
        check_momentum("momentum_end", self.momentum_end)?;
        if !(self.momentum_anneal_fraction > 0.0 && self.momentum_anneal_fraction <= 1.0) {
            return Err(Error::config(
                "objective",
                "momentum_anneal_fraction",
                format!("{} must be in (0, 1]", self.momentum_anneal_fraction),
            ));
        }
        if !(self.loss_beta >= 0.0) {
            return Err(Error::config(
                "objective",
                "loss_beta",
                format!("{} must be 0 (L2) or positive", self.loss_beta),
            ));
        }
        if let Some(scale) = self.loss_scale.filter(|s| !(*s > 0.0)) {
            return Err(Error::config(
                "objective",
                "loss_scale",
                format!("{scale} must be positive; leave it out for 1/sqrt(d)"),
            ));
        }
        self.view = view.index;
        Ok(self)
    }
}

/// The data2vec student: the encoder, its mask token and the regression head.
#[derive(Module, Debug)]
pub struct Data2VecModel<B: Backend> {
    /// The encoder (the part that is exported).
    pub encoder: Vit<B>,
    /// Learned token standing for each masked patch `[1, 1, d]`.
    pub mask_token: Param<Tensor<B, 3>>,
    /// Linear regression head `[d, d]` (the paper's "final_proj").
    pub final_proj: Linear<B>,
}

/// The momentum teacher: an EMA of the student's encoder.
#[derive(Module, Debug)]
pub struct Data2VecTeacher<B: Backend> {
    /// EMA of [`Data2VecModel::encoder`] (same parameter ids).
    pub encoder: Vit<B>,
}

impl<B: Backend> Data2VecModel<B> {
    /// The head and mask token around `encoder`.
    pub fn new(encoder: Vit<B>, device: &B::Device) -> Self {
        let d = encoder.embed_dim;
        Self {
            mask_token: MaskTokens::init_token(d, device),
            final_proj: init_linear(d, d, device),
            encoder,
        }
    }

    /// The student's prediction at every patch.
    ///
    /// # Shapes
    /// `images` `[n, 3, H, W]`, `mask` `[n, l]` (1 = masked) -> `[n, l, d]`.
    pub fn predict(&self, images: Tensor<B, 4>, mask: Tensor<B, 2>) -> Tensor<B, 3> {
        let z = self
            .encoder
            .forward_masked_patches(images, mask, self.mask_token.val()); // [n, l, d]
        self.final_proj.forward(z) // [n, l, d]
    }
}

impl<B: Backend> Data2VecTeacher<B> {
    /// The targets: the top `k` block outputs at the patch tokens, normalised and averaged.
    ///
    /// # Shapes
    /// `images` `[n, 3, H, W]` -> `[n, l, d]`.
    pub fn targets(&self, images: Tensor<B, 4>, config: &Data2VecConfig) -> Result<Tensor<B, 3>> {
        let (_, blocks) = self.encoder.forward_with_blocks(images, None, None);
        let depth = blocks.len();
        let k = config.average_top_k_layers.min(depth);
        let top = blocks
            .into_iter()
            .skip(depth - k)
            .map(|b| {
                let [n, t, d] = b.dims(); // [n, 1 + l, d]
                b.slice([0..n, 1..t, 0..d]) // [n, l, d]
            })
            .collect();
        targets(
            top,
            config.instance_norm_target_layer,
            config.layer_norm_targets,
        )
    }
}

impl<B: AutodiffBackend> Method<B> for Data2VecConfig {
    type Model = Data2VecModel<B>;
    type State = Data2VecTeacher<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let encoder = match backbone {
            Backbone::Vit(v) => v,
            // `resolve` rejects other backbones before a model is built.
            other => unreachable!("data2vec over {other:?}"),
        };
        let model = Data2VecModel::new(encoder, device);
        let teacher = Data2VecTeacher {
            encoder: model.encoder.valid(),
        };
        (model, teacher)
    }

    fn with_precision(&self, mut model: Self::Model, precision: Precision) -> Self::Model {
        model.encoder = model.encoder.with_precision(precision);
        model
    }

    fn forward(
        &self,
        model: &Self::Model,
        teacher: &mut Self::State,
        mut batch: DeviceBatch<B::InnerBackend>,
        _ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let (images, mask) = take_masked(&mut batch, self.view)?;
        let y = teacher.targets(images.clone(), self)?; // [n, l, d], no grad
        let pred = model.predict(
            Tensor::from_inner(images),
            Tensor::from_inner(mask.mask.clone()),
        );
        let loss = regression_loss(
            pred,
            Tensor::from_inner(y),
            Tensor::from_inner(mask.mask),
            self.loss_beta,
            self.loss_scale,
        )?;
        Ok(MethodOutput::loss(loss))
    }

    fn after_step(
        &self,
        model: Self::Model,
        teacher: Self::State,
        ctx: &StepContext,
    ) -> (Self::Model, Self::State) {
        let m = self.teacher_momentum(ctx);
        let encoder = crate::teacher::ema_update(teacher.encoder, &model.encoder.valid(), m);
        (model, Data2VecTeacher { encoder })
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        Backbone::Vit(model.encoder.clone())
    }

    fn teacher_backbone(&self, teacher: &Self::State) -> Option<Backbone<B::InnerBackend>> {
        Some(Backbone::Vit(teacher.encoder.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vit::VitConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, TensorData};

    type A = Autodiff<Flex>;

    fn tiny() -> VitConfig {
        VitConfig {
            img_size: 16,
            patch_size: 4,
            in_chans: 3,
            embed_dim: 8,
            depth: 3,
            num_heads: 2,
            mlp_ratio: 2.0,
            drop_path_rate: 0.0,
        }
    }

    fn ctx(step: u64, total_steps: u64) -> StepContext {
        StepContext {
            step,
            total_steps,
            steps_per_epoch: None,
            picture: false,
            picture_samples: 0,
            normalize: crate::feeder::Normalize::default(),
            seed: 0,
            micro_batch: 0,
            global: None,
        }
    }

    fn max_diff<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a: Vec<f32> = a.into_data().to_vec().unwrap();
        let b: Vec<f32> = b.into_data().to_vec().unwrap();
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// The teacher's targets are the top blocks of the plain forward, by hand: the block
    /// outputs of running `blocks` on the embedding, patch tokens, normalised, averaged.
    #[test]
    fn targets_come_from_the_teachers_top_blocks() {
        let device = Default::default();
        let images = Tensor::<Flex, 4>::random([2, 3, 16, 16], Distribution::Default, &device);
        let config = Data2VecConfig {
            average_top_k_layers: 2,
            ..Default::default()
        };
        // One encoder, not a clone: burn clones uninitialised (lazy) parameters as fresh
        // lazy initialisers, so a clone taken before first use gets other random weights.
        let teacher = Data2VecTeacher {
            encoder: tiny().init::<Flex>(&device),
        };
        let vit = &teacher.encoder;
        let got = teacher.targets(images.clone(), &config).unwrap();
        let (_, blocks) = vit.forward_with_blocks(images.clone(), None, None);

        let cls = vit.cls_token.val() + vit.pos_embed.val().slice([0..1, 0..1, 0..8]);
        let mut x = Tensor::cat(vec![cls.expand([2, 1, 8]), vit.embed_patches(images)], 1);
        let mut outs = Vec::new();
        for block in &vit.blocks {
            x = block.forward(x);
            outs.push(x.clone());
        }
        let block_diffs: Vec<f32> = outs
            .iter()
            .zip(&blocks)
            .map(|(a, b)| max_diff(a.clone(), b.clone()))
            .collect();
        let patches = |b: &Tensor<Flex, 3>| b.clone().slice([0..2, 1..17, 0..8]);
        let want = targets(outs[1..].iter().map(patches).collect(), true, true).unwrap();
        let from_blocks = targets(blocks[1..].iter().map(patches).collect(), true, true).unwrap();
        let d_blocks = max_diff(got.clone(), from_blocks);
        let d_want = max_diff(got.clone(), want);
        assert!(
            block_diffs.iter().all(|d| *d < 1e-5) && d_blocks < 1e-4 && d_want < 1e-4,
            "blocks {block_diffs:?}, targets vs the API's blocks {d_blocks}, vs by hand {d_want}"
        );
        assert_eq!(got.dims(), [2, 16, 8]);
    }

    #[test]
    fn momentum_rises_linearly_then_stays() {
        let config = Data2VecConfig {
            momentum_anneal_fraction: 0.5,
            ..Default::default()
        };
        let m = |step| config.teacher_momentum(&ctx(step, 100));
        assert!((m(0) - 0.999).abs() < 1e-12);
        assert!((m(25) - 0.99945).abs() < 1e-12);
        assert!((m(50) - 0.9999).abs() < 1e-12);
        assert!((m(99) - 0.9999).abs() < 1e-12);
    }

    /// A step's loss is finite, reaches the mask token, the head and the encoder, and the
    /// teacher follows the EMA afterwards.
    #[test]
    fn forward_backward_and_teacher_update() {
        let device = Default::default();
        let config = Data2VecConfig {
            average_top_k_layers: 2,
            ..Default::default()
        };
        let (model, teacher) = <Data2VecConfig as Method<A>>::init(
            &config,
            Backbone::Vit(tiny().init(&device)),
            &device,
        );
        let images = Tensor::<Flex, 4>::random([2, 3, 16, 16], Distribution::Default, &device);
        let mask: Vec<f32> = (0..32).map(|i| (i % 2) as f32).collect();
        let mask = Tensor::<Flex, 2>::from_data(TensorData::new(mask, [2, 16]), &device);
        let y = teacher.targets(images.clone(), &config).unwrap();
        let pred = model.predict(Tensor::from_inner(images), Tensor::from_inner(mask.clone()));
        let loss = regression_loss(
            pred,
            Tensor::from_inner(y),
            Tensor::from_inner(mask),
            2.0,
            None,
        )
        .unwrap();
        let value = loss.clone().into_scalar();
        assert!(value.is_finite() && value > 0.0, "{value}");
        let grads = loss.backward();
        assert!(model.mask_token.grad(&grads).is_some());
        assert!(model.final_proj.weight.grad(&grads).is_some());
        assert!(model.encoder.cls_token.grad(&grads).is_some());

        // EMA with m = 0 copies the student.
        let moved = crate::teacher::ema_update(teacher.encoder, &model.encoder.valid(), 0.0);
        let a: Vec<f32> = moved.blocks[0]
            .attn
            .qkv
            .weight
            .val()
            .into_data()
            .to_vec()
            .unwrap();
        let b: Vec<f32> = model.encoder.valid().blocks[0]
            .attn
            .qkv
            .weight
            .val()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(a, b);
    }
}
