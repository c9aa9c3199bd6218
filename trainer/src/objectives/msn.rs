//! MSN, Masked Siamese Networks (Assran et al. 2022), following `src/msn_train.py`.
//!
//! ```text
//! views:  x_t   target view (unmasked)           x_a^1 .. x_a^V  anchor views: one of the
//!         model's size and the focal (small) crops, each with random patch dropping
//! anchors: z_a = h(f(x_a with the dropped patches removed))    f ViT (class token), h MLP
//! target:  z_t = h'(f'(x_t))                                   f', h': EMA of f, h; no grad
//! p(z)   = softmax(norm(z) norm(prototypes)^T / 0.1)           prototypes [K, out], learned
//! loss   = mean_a H(sharpen(p(z_t), 0.25), p(z_a))
//!        + me_max_weight (log K - H(mean_a p(z_a)))           mean-entropy maximisation
//! after each step: (f', h') <- m (f', h') + (1 - m)(f, h),  m cosine 0.996 -> 1
//! ```
//!
//! Patch dropping is the pipeline's `random` mask on each anchor view (MAE's masking: the
//! dropped patches never enter the encoder; [`forward_kept_cls`]); focal views of another
//! size use the position embedding resampled to their grid. Anchor views of one size go
//! through the encoder together. The loss is [`crate::losses::msn`], checked against the
//! reference values; this file's glue against the same golden.
//!
//! Not the paper's: the projector's activations are ReLU (MSN's `fc` uses GELU) since
//! Tessera's [`MlpHead`] is the SimCLR-family head; Sinkhorn on the targets (the official
//! config's `use_sinkhorn`) is not done; the prototypes get the optimiser's weight decay
//! of matrices (MSN excludes them; the loss normalises them, so only their step size
//! relative to their norm is affected).

use burn::module::{AutodiffModule, Initializer, Module, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};
use tessera_pipeline::masks::MaskSpec;

use super::masked_view::{MaskedView, check_mask_grid, forward_kept_cls, views, vit_config};
use super::two_view::{check_momentum, check_width, teacher_momentum};
use super::{Method, MethodOutput, MethodSpec, ResolveContext, StepContext};
use crate::backbone::{Backbone, NormMode};
use crate::error::{Error, Result};
use crate::feeder::DeviceBatch;
use crate::heads::{LastNorm, MlpHead, MlpHeadConfig};
use crate::losses::msn::{MsnLoss, msn};
use crate::precision::Precision;
use crate::vit::Vit;

/// `[objective]` of `method = "msn"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MsnConfig {
    /// Prototypes `K`. Default 1024 (ViT-S/16).
    pub num_prototypes: usize,
    /// Projector hidden width. Default 2048.
    pub proj_hidden_dim: usize,
    /// Projector output width (the prototypes' width). Default 256.
    pub proj_output_dim: usize,
    /// Softmax temperature of the prototype assignments. Default 0.1.
    pub temperature: f64,
    /// Sharpening temperature of the targets. Default 0.25; 1 leaves them as they are.
    pub target_sharpen_temperature: f64,
    /// Weight of the me-max regulariser. Default 1.0; 0 lets every anchor choose one
    /// prototype (collapse).
    pub me_max_weight: f64,
    /// Target-encoder momentum at step 0. Default 0.996.
    pub momentum: f64,
    /// Target-encoder momentum at the end of the run (cosine rise). Default 1.0.
    pub momentum_end: f64,
    /// Index of the unmasked target view (derived from the views: not a recipe key).
    pub target_view: usize,
    /// Indices of the masked anchor views (derived from the views: not a recipe key).
    pub anchor_views: Vec<usize>,
}

impl Default for MsnConfig {
    fn default() -> Self {
        Self {
            num_prototypes: 1024,
            proj_hidden_dim: 2048,
            proj_output_dim: 256,
            temperature: 0.1,
            target_sharpen_temperature: 0.25,
            me_max_weight: 1.0,
            momentum: 0.996,
            momentum_end: 1.0,
            target_view: 0,
            anchor_views: Vec::new(),
        }
    }
}

impl MsnConfig {
    /// The loss's settings.
    pub fn loss(&self) -> MsnLoss {
        MsnLoss {
            temperature: self.temperature,
            target_sharpen_temperature: self.target_sharpen_temperature,
            me_max_weight: self.me_max_weight,
        }
    }

    /// MSN's projector `d -> hidden (BN, ReLU) -> hidden (BN, ReLU) -> out`.
    pub fn projector(&self, d: usize) -> MlpHeadConfig {
        MlpHeadConfig {
            dims: vec![
                d,
                self.proj_hidden_dim,
                self.proj_hidden_dim,
                self.proj_output_dim,
            ],
            bias: true,
            last_bias: true,
            hidden_bn: true,
            last_bn: LastNorm::None,
        }
    }
}

impl MethodSpec for MsnConfig {
    const NAME: &'static str = "msn";
    const PAPER: &'static str =
        "Assran et al. 2022, Masked Siamese Networks for Label-Efficient Learning";
    const RECIPES: &'static [&'static str] = &["msn_vit_small", "msn_vit_tiny_cifar"];

    // `!(x > 0.0)` on purpose: NaN must fail the checks too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    fn resolve(mut self, ctx: &ResolveContext<'_>) -> Result<Self> {
        super::masked_view::reject_derived(&[
            ("target_view", self.target_view != 0),
            ("anchor_views", !self.anchor_views.is_empty()),
        ])?;
        let vit = vit_config(ctx, "MSN")?;
        check_width("num_prototypes", self.num_prototypes)?;
        check_width("proj_hidden_dim", self.proj_hidden_dim)?;
        check_width("proj_output_dim", self.proj_output_dim)?;
        check_momentum("momentum", self.momentum)?;
        check_momentum("momentum_end", self.momentum_end)?;
        for (key, value) in [
            ("temperature", self.temperature),
            (
                "target_sharpen_temperature",
                self.target_sharpen_temperature,
            ),
        ] {
            if !(value > 0.0) {
                return Err(Error::config(
                    "objective",
                    key,
                    format!("{value} must be positive"),
                ));
            }
        }
        let (mut targets, mut anchors) = (Vec::new(), Vec::new());
        for (index, (size, mask)) in views(ctx).into_iter().enumerate() {
            match mask {
                None => targets.push(index),
                Some(mask @ MaskSpec::Random { .. }) => {
                    check_mask_grid(&MaskedView { index, size, mask }, vit)?;
                    anchors.push(index);
                }
                Some(_) => {
                    return Err(Error::config(
                        "views",
                        "mask",
                        format!(
                            "MSN drops patches of its anchor views with kind = \"random\" \
                             masks; view {index} has another kind"
                        ),
                    ));
                }
            }
        }
        if targets.len() != 1 || anchors.is_empty() {
            return Err(Error::config(
                "views",
                "mask",
                format!(
                    "MSN takes one unmasked target view and at least one anchor view with a \
                     `random` mask; the recipe has {} unmasked and {} masked views",
                    targets.len(),
                    anchors.len()
                ),
            ));
        }
        self.target_view = targets[0];
        self.anchor_views = anchors;
        Ok(self)
    }
}

/// The MSN student: encoder, projector and prototypes.
#[derive(Module, Debug)]
pub struct MsnModel<B: Backend> {
    /// The encoder (the part that is exported).
    pub encoder: Vit<B>,
    /// Class token to the prototypes' space.
    pub projector: MlpHead<B>,
    /// Learned prototypes `[K, out]` (MSN's init: uniform in `±1/sqrt(out)`).
    pub prototypes: Param<Tensor<B, 2>>,
}

/// The target encoder: EMA of the student's encoder and projector.
#[derive(Module, Debug)]
pub struct MsnTarget<B: Backend> {
    /// EMA of [`MsnModel::encoder`].
    pub encoder: Vit<B>,
    /// EMA of [`MsnModel::projector`].
    pub projector: MlpHead<B>,
}

impl<B: Backend> MsnModel<B> {
    /// The projector and prototypes around `encoder`.
    pub fn new(encoder: Vit<B>, config: &MsnConfig, device: &B::Device) -> Self {
        let bound = 1.0 / (config.proj_output_dim as f64).sqrt();
        Self {
            projector: config.projector(encoder.embed_dim).init(device),
            prototypes: Initializer::Uniform {
                min: -bound,
                max: bound,
            }
            .init([config.num_prototypes, config.proj_output_dim], device),
            encoder,
        }
    }

    /// The anchor projections of several views, those of one shape encoded together.
    ///
    /// # Shapes
    /// `views`: `V` x (`images` `[n, 3, h_v, w_v]`, `ids_keep` `[n, k_v]`) -> `[V*n, out]`,
    /// view-major (row `v*n + b` is view `v` of image `b`).
    pub fn anchors(&self, views: Vec<(Tensor<B, 4>, Tensor<B, 2, Int>)>) -> Result<Tensor<B, 2>> {
        let mut features = Vec::new();
        let mut group: Vec<(Tensor<B, 4>, Tensor<B, 2, Int>)> = Vec::new();
        let mut flush = |group: &mut Vec<(Tensor<B, 4>, Tensor<B, 2, Int>)>| -> Result<()> {
            if group.is_empty() {
                return Ok(());
            }
            let (images, ids): (Vec<_>, Vec<_>) = group.drain(..).unzip();
            features.push(forward_kept_cls(
                &self.encoder,
                Tensor::cat(images, 0),
                Tensor::cat(ids, 0),
            )?); // [g*n, d]
            Ok(())
        };
        for (images, ids) in views {
            let same = group
                .first()
                .is_some_and(|(i, k)| i.dims() == images.dims() && k.dims() == ids.dims());
            if !same {
                flush(&mut group)?;
            }
            group.push((images, ids));
        }
        flush(&mut group)?;
        let features = Tensor::cat(features, 0); // [V*n, d]
        Ok(self.projector.forward(features, NormMode::Train))
    }

    /// The MSN loss of the anchors against the targets with this model's prototypes.
    ///
    /// # Shapes
    /// `anchors` `[V*n, out]` (view-major), `targets` `[n, out]` -> `[1]`.
    pub fn loss(
        &self,
        config: &MsnConfig,
        anchors: Tensor<B, 2>,
        targets: Tensor<B, 2>,
    ) -> Result<Tensor<B, 1>> {
        msn(&config.loss(), anchors, targets, self.prototypes.val())
    }
}

impl<B: Backend> MsnTarget<B> {
    /// The target projection of the unmasked view.
    ///
    /// # Shapes
    /// `images` `[n, 3, h, w]` -> `[n, out]`.
    pub fn project(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let tokens = self.encoder.forward_all_tokens(images, None, None); // [n, 1 + l, d]
        let [n, _, d] = tokens.dims();
        let cls = tokens.narrow(1, 0, 1).reshape([n, d]);
        self.projector.forward(cls, NormMode::Train)
    }
}

impl<B: AutodiffBackend> Method<B> for MsnConfig {
    type Model = MsnModel<B>;
    type State = MsnTarget<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let encoder = match backbone {
            Backbone::Vit(v) => v,
            // `resolve` rejects other backbones before a model is built.
            other => unreachable!("MSN over {other:?}"),
        };
        let model = MsnModel::new(encoder, self, device);
        let target = MsnTarget {
            encoder: model.encoder.valid(),
            projector: model.projector.valid(),
        };
        (model, target)
    }

    fn with_precision(&self, mut model: Self::Model, precision: Precision) -> Self::Model {
        model.encoder = model.encoder.with_precision(precision);
        model
    }

    fn forward(
        &self,
        model: &Self::Model,
        target: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        _ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let DeviceBatch {
            views, mut masks, ..
        } = batch;
        let count = views.len();
        let missing = |what| Error::Shape {
            what,
            expected: vec![self.anchor_views.len() + 1],
            actual: vec![count],
        };
        let target_images = views
            .get(self.target_view)
            .cloned()
            .ok_or_else(|| missing("msn target view"))?;
        let mut anchors = Vec::with_capacity(self.anchor_views.len());
        for &index in &self.anchor_views {
            let images = views.get(index).cloned();
            let mask = masks.get_mut(index).and_then(Option::take);
            let (Some(images), Some(mask)) = (images, mask) else {
                return Err(missing("msn anchor view"));
            };
            anchors.push((
                Tensor::from_inner(images),
                Tensor::from_inner(mask.ids_keep),
            ));
        }
        let z_t = Tensor::from_inner(target.project(target_images)); // [n, out], no grad
        let z_a = model.anchors(anchors)?; // [V*n, out]
        Ok(MethodOutput::loss(model.loss(self, z_a, z_t)?))
    }

    fn after_step(
        &self,
        model: Self::Model,
        target: Self::State,
        ctx: &StepContext,
    ) -> (Self::Model, Self::State) {
        let m = teacher_momentum(self.momentum, self.momentum_end, ctx);
        let student = MsnTarget {
            encoder: model.encoder.valid(),
            projector: model.projector.valid(),
        };
        (model, crate::teacher::ema_update(target, &student, m))
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        Backbone::Vit(model.encoder.clone())
    }

    fn teacher_backbone(&self, target: &Self::State) -> Option<Backbone<B::InnerBackend>> {
        Some(Backbone::Vit(target.encoder.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use crate::vit::VitConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type A = Autodiff<Flex>;

    fn tiny() -> VitConfig {
        VitConfig {
            img_size: 16,
            patch_size: 4,
            in_chans: 3,
            embed_dim: 16,
            depth: 2,
            num_heads: 2,
            mlp_ratio: 2.0,
            drop_path_rate: 0.0,
        }
    }

    fn ids(rows: &[&[i64]]) -> Tensor<Flex, 2, Int> {
        let n = rows.len();
        let k = rows[0].len();
        let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [n, k]), &Default::default())
    }

    /// The glue: per-view anchor projections stacked view-major and scored with the model's
    /// prototypes give the reference loss and gradients (golden: 3 views of 8 images).
    #[test]
    fn glue_matches_the_reference_loss_and_gradients() {
        let g = Golden::load("msn");
        let device = Default::default();
        let anchors = g.tensor::<A, 2>("in.anchors", &device);
        let targets = g.tensor::<A, 2>("in.targets", &device);
        let [rows, out] = anchors.dims();
        let [n, _] = targets.dims();
        let views: Vec<Tensor<A, 2>> = (0..rows / n)
            .map(|v| anchors.clone().narrow(0, v * n, n).detach().require_grad())
            .collect();
        let config = MsnConfig {
            temperature: g.param("temperature"),
            target_sharpen_temperature: g.param("target_sharpen_temperature"),
            me_max_weight: g.param("me_max_weight"),
            proj_output_dim: out,
            proj_hidden_dim: 8,
            num_prototypes: 4,
            ..Default::default()
        };
        let mut model = MsnModel::new(tiny().init::<A>(&device), &config, &device);
        model.prototypes = Param::from_tensor(g.tensor::<A, 2>("in.prototypes", &device));
        let loss = model
            .loss(&config, Tensor::cat(views.clone(), 0), targets)
            .unwrap();
        g.assert_close("out.loss", loss.clone());
        let grads = loss.backward();
        let grad = Tensor::cat(views.iter().map(|v| v.grad(&grads).unwrap()).collect(), 0);
        g.assert_close("grad.anchors", grad);
        g.assert_close("grad.prototypes", model.prototypes.grad(&grads).unwrap());
    }

    /// Dropping patches: the kept path equals MAE's `forward_kept` at the model's size, and
    /// at another size with every patch kept it equals the full forward there (the same
    /// resampled position embedding).
    #[test]
    fn kept_patches_path_at_any_size() {
        let device = Default::default();
        let vit = tiny().init::<Flex>(&device);
        let images = Tensor::<Flex, 4>::random([2, 3, 16, 16], Distribution::Default, &device);
        let keep = ids(&[&[0, 3, 5, 9, 15], &[1, 2, 4, 8, 12]]);
        let got = forward_kept_cls(&vit, images.clone(), keep.clone()).unwrap();
        let want = vit
            .forward_kept(images, keep)
            .narrow(1, 0, 1)
            .reshape([2, 16]);
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::default());

        let small = Tensor::<Flex, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
        let all = ids(&[&[0, 1, 2, 3], &[0, 1, 2, 3]]);
        let got = forward_kept_cls(&vit, small.clone(), all).unwrap();
        let want = vit
            .forward_all_tokens(small, None, None)
            .narrow(1, 0, 1)
            .reshape([2, 16]);
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::default());
    }

    /// Anchors of two sizes: grouped by shape, stacked view-major, projected; the loss is
    /// finite and reaches the encoder, the projector and the prototypes.
    #[test]
    fn anchors_of_two_sizes_train_every_part() {
        let device = Default::default();
        let config = MsnConfig {
            num_prototypes: 6,
            proj_hidden_dim: 8,
            proj_output_dim: 4,
            ..Default::default()
        };
        let model = MsnModel::new(tiny().init::<A>(&device), &config, &device);
        let big = || Tensor::<A, 4>::random([2, 3, 16, 16], Distribution::Default, &device);
        let small = || Tensor::<A, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
        let k = |rows: &[&[i64]]| Tensor::<A, 2, Int>::from_inner(ids(rows));
        let anchors = model
            .anchors(vec![
                (big(), k(&[&[0, 5, 10], &[1, 6, 11]])),
                (small(), k(&[&[0, 3], &[1, 2]])),
                (small(), k(&[&[1, 3], &[0, 2]])),
            ])
            .unwrap();
        assert_eq!(anchors.dims(), [6, 4]);
        let target = MsnTarget {
            encoder: model.encoder.valid(),
            projector: model.projector.valid(),
        };
        let z_t = Tensor::<A, 2>::from_inner(target.project(big().inner()));
        let loss = model.loss(&config, anchors, z_t).unwrap();
        assert!(loss.clone().into_scalar().is_finite());
        let grads = loss.backward();
        assert!(model.prototypes.grad(&grads).is_some());
        assert!(model.encoder.cls_token.grad(&grads).is_some());
        assert!(
            model.projector.layers[0]
                .linear
                .weight
                .grad(&grads)
                .is_some()
        );
    }
}
