//! SimMIM (Xie et al. 2022, "SimMIM: A Simple Framework for Masked Image Modeling"),
//! following `models/simmim.py` top to bottom: the encoder with a mask token, the one-layer
//! prediction head, the L1 loss on masked pixels.
//!
//! ```text
//! x [n, 3, H, W], mask [n, l] (1 = masked; random coarse cells from the pipeline, ratio 0.6)
//! z     = ViT(patch_embed(x) * (1 - mask) + mask_token * mask + pos)     every token seen
//! x_rec = PixelShuffle(p)(Conv1x1(z[:, 1:] as a [n, d, H/p, W/p] map, d -> p*p*3))
//! loss  = sum(|x - x_rec| * mask_px) / (sum(mask_px) + 1e-5) / 3      (masked pixels only)
//! ```
//!
//! The 1x1 convolution is a linear layer on each patch token, and the pixel shuffle puts
//! its output channel `c*p*p + i*p + j` at pixel `(i, j)` of channel `c` of the patch
//! ([`tokens_to_image`]). The masks come from the pipeline (`[views.mask] kind = "simmim"`,
//! SimMIM's `MaskGenerator`: cells of `mask_patch_size` pixels upsampled to the model's
//! patch grid). The loss is [`crate::losses::simmim::simmim`], checked against the
//! official code's values; this file's glue is checked against the same golden.
//!
//! Not the paper's: SimMIM's ViT uses relative position bias and layer scale; this one
//! keeps Tessera's ViT (absolute sin-cos position embedding), as for MAE.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::mae::{patchify, reconstruction};
use super::masked_view::{mask_grid, reject_derived, single_masked_view, take_masked};
use super::{Method, MethodOutput, MethodSpec, NoState, ResolveContext, StepContext};
use crate::backbone::Backbone;
use crate::error::Result;
use crate::feeder::DeviceBatch;
use crate::losses::simmim::simmim;
use crate::precision::Precision;
use crate::vit::{MaskTokens, Vit, init_linear};

/// `[objective]` of `method = "simmim"`. SimMIM has no keys of its own: the mask ratio and
/// its cell size are the view's `[views.mask]`, the head is fixed by the encoder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimMimConfig {
    /// Index of the masked view (derived from the views: not a recipe key).
    pub view: usize,
}

impl MethodSpec for SimMimConfig {
    const NAME: &'static str = "simmim";
    const PAPER: &'static str =
        "Xie et al. 2022, SimMIM: A Simple Framework for Masked Image Modeling";
    const RECIPES: &'static [&'static str] = &["simmim_vit_base", "simmim_vit_tiny_cifar"];

    fn resolve(mut self, ctx: &ResolveContext<'_>) -> Result<Self> {
        reject_derived(&[("view", self.view != 0)])?;
        let view = single_masked_view(ctx, "SimMIM", &["simmim", "random"])?;
        self.view = view.index;
        Ok(self)
    }
}

/// The SimMIM model: the encoder, its mask token and the pixel head.
#[derive(Module, Debug)]
pub struct SimMimModel<B: Backend> {
    /// The encoder (the part that is exported).
    pub encoder: Vit<B>,
    /// Learned token standing for each masked patch `[1, 1, d]` (SimMIM: normal, std 0.02).
    pub mask_token: Param<Tensor<B, 3>>,
    /// The 1x1 convolution: token width to the pixels of one patch `[d, p*p*3]`.
    pub decoder: Linear<B>,
    /// Patch side in pixels (SimMIM's `encoder_stride` for a ViT).
    pub patch_size: usize,
}

/// What [`SimMimModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct SimMimOutput<B: Backend> {
    /// The L1 loss on masked pixels `[1]`.
    pub loss: Tensor<B, 1>,
    /// The reconstruction `[n, 3, H, W]` (normalised pixel units).
    pub x_rec: Tensor<B, 4>,
}

/// SimMIM's decoder output to an image: PyTorch `PixelShuffle(p)` of the token map.
///
/// Output channel `c*p*p + i*p + j` of the token in grid cell `(r, s)` is pixel
/// `(r*p + i, s*p + j)` of channel `c`.
///
/// # Shapes
/// `tokens` `[n, gh*gw, c*p*p]` (row-major grid) -> `[n, c, gh*p, gw*p]`.
pub fn tokens_to_image<B: Backend>(
    tokens: Tensor<B, 3>,
    p: usize,
    gh: usize,
    gw: usize,
) -> Tensor<B, 4> {
    let [n, _, cpp] = tokens.dims(); // [n, l, c*p*p]
    let c = cpp / (p * p);
    tokens
        .reshape([n, gh, gw, c, p, p])
        .permute([0, 3, 1, 4, 2, 5]) // [n, c, gh, p, gw, p]
        .reshape([n, c, gh * p, gw * p])
}

impl<B: Backend> SimMimModel<B> {
    /// The head and mask token around `encoder`, SimMIM's initialisation for the token and
    /// MAE's (xavier-uniform, zero bias) for the head.
    pub fn new(encoder: Vit<B>, device: &B::Device) -> Self {
        let shape = encoder.shape();
        Self {
            mask_token: MaskTokens::init_token(shape.embed_dim, device),
            decoder: init_linear(shape.embed_dim, shape.patch_dim(), device),
            patch_size: shape.patch_size,
            encoder,
        }
    }

    /// Every patch's prediction: the encoder with mask tokens in place, then the head.
    ///
    /// # Shapes
    /// `images` `[n, 3, H, W]`, `mask` `[n, l]` (1 = masked) -> `[n, l, p*p*3]`.
    pub fn predict(&self, images: Tensor<B, 4>, mask: Tensor<B, 2>) -> Tensor<B, 3> {
        let z = self
            .encoder
            .forward_masked_patches(images, mask, self.mask_token.val()); // [n, l, d]
        self.decoder.forward(z) // [n, l, p*p*3]
    }

    /// The reconstruction from per-patch predictions, and its loss against `images`.
    ///
    /// # Shapes
    /// `images` `[n, 3, H, W]`, `pred` `[n, l, p*p*3]`, `mask` `[n, l]` (1 = masked) ->
    /// loss `[1]`, reconstruction `[n, 3, H, W]`.
    pub fn forward_loss(
        &self,
        images: Tensor<B, 4>,
        pred: Tensor<B, 3>,
        mask: Tensor<B, 2>,
    ) -> Result<SimMimOutput<B>> {
        let [_, _, h, w] = images.dims();
        let p = self.patch_size;
        let x_rec = tokens_to_image(pred, p, h / p, w / p); // [n, 3, H, W]
        let loss = simmim(images, x_rec.clone(), mask_grid(mask, h, w, p), p)?;
        Ok(SimMimOutput { loss, x_rec })
    }

    /// Encoder, head and loss, as `SimMIM.forward`.
    pub fn forward(&self, images: Tensor<B, 4>, mask: Tensor<B, 2>) -> Result<SimMimOutput<B>> {
        let pred = self.predict(images.clone(), mask.clone());
        self.forward_loss(images, pred, mask)
    }
}

impl<B: AutodiffBackend> Method<B> for SimMimConfig {
    type Model = SimMimModel<B>;
    type State = NoState<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let encoder = match backbone {
            Backbone::Vit(v) => v,
            // `resolve` rejects other backbones before a model is built.
            other => unreachable!("SimMIM over {other:?}"),
        };
        (SimMimModel::new(encoder, device), NoState::default())
    }

    fn with_precision(&self, mut model: Self::Model, precision: Precision) -> Self::Model {
        model.encoder = model.encoder.with_precision(precision);
        model
    }

    fn forward(
        &self,
        model: &Self::Model,
        _state: &mut Self::State,
        mut batch: DeviceBatch<B::InnerBackend>,
        ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let (images, mask) = take_masked(&mut batch, self.view)?;
        let kept = ctx.picture.then(|| (images.clone(), mask.mask.clone()));
        let out = model.forward(Tensor::from_inner(images), Tensor::from_inner(mask.mask))?;
        let picture = match kept {
            // Original, masked and reconstructed: the MAE figure.
            Some((images, mask)) => {
                let k = ctx.picture_samples.clamp(1, mask.dims()[0]);
                let pred = patchify(out.x_rec.clone().inner().narrow(0, 0, k), model.patch_size);
                Some(reconstruction(
                    images,
                    pred,
                    mask,
                    model.patch_size,
                    false,
                    ctx,
                )?)
            }
            None => None,
        };
        Ok(MethodOutput {
            loss: out.loss,
            parts: Vec::new(),
            picture,
        })
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        Backbone::Vit(model.encoder.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use crate::vit::VitConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;
    use burn::tensor::TensorData;

    type A = Autodiff<Flex>;

    /// The inverse of [`tokens_to_image`], written as loops over the definition.
    fn image_to_tokens(image: &[f32], n: usize, c: usize, side: usize, p: usize) -> Vec<f32> {
        let g = side / p;
        let mut out = vec![0f32; n * g * g * c * p * p];
        for s in 0..n {
            for (r, q) in (0..g).flat_map(|r| (0..g).map(move |q| (r, q))) {
                for (ch, i, j) in
                    (0..c).flat_map(|ch| (0..p).flat_map(move |i| (0..p).map(move |j| (ch, i, j))))
                {
                    let token = (s * g * g + r * g + q) * c * p * p;
                    out[token + ch * p * p + i * p + j] =
                        image[((s * c + ch) * side + r * p + i) * side + q * p + j];
                }
            }
        }
        out
    }

    fn tiny() -> VitConfig {
        VitConfig {
            img_size: 32,
            patch_size: 8,
            in_chans: 3,
            embed_dim: 16,
            depth: 1,
            num_heads: 2,
            mlp_ratio: 2.0,
            drop_path_rate: 0.0,
        }
    }

    /// The glue (pixel shuffle of the head's tokens, the `[n, l]` mask as the loss's grid)
    /// reproduces the official loss and its gradient: the golden reconstruction, cut into
    /// tokens by the definition above, goes through [`SimMimModel::forward_loss`].
    #[test]
    fn glue_matches_the_reference_loss_and_gradient() {
        let g = Golden::load("simmim");
        let device = Default::default();
        let p = g.param("patch") as usize;
        let x = g.tensor::<A, 4>("in.x", &device);
        let [n, c, side, _] = x.dims();
        let x_rec: Vec<f32> = g
            .tensor::<Flex, 4>("in.x_rec", &device)
            .into_data()
            .to_vec()
            .unwrap();
        let l = (side / p) * (side / p);
        let tokens = Tensor::<A, 3>::from_data(
            TensorData::new(image_to_tokens(&x_rec, n, c, side, p), [n, l, c * p * p]),
            &device,
        )
        .require_grad();
        let mask = g
            .int_tensor::<A, 3>("out.mask", &device)
            .float()
            .reshape([n, l]);
        let model = SimMimModel::new(tiny().init::<A>(&device), &device);
        let out = model.forward_loss(x, tokens.clone(), mask).unwrap();
        g.assert_close("out.loss", out.loss.clone());
        let grads = out.loss.backward();
        let grad: Vec<f32> = tokens.grad(&grads).unwrap().into_data().to_vec().unwrap();
        let want: Vec<f32> = g
            .tensor::<Flex, 4>("grad.x_rec", &device)
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(grad.len(), want.len());
        let want = image_to_tokens(&want, n, c, side, p);
        for (a, b) in grad.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 + 1e-4 * b.abs(), "{a} vs {b}");
        }
    }

    /// Mask tokens replace exactly the masked patches: changing the pixels of a masked
    /// patch changes nothing, changing a visible one changes the output; with every patch
    /// masked the image does not matter at all.
    #[test]
    fn masked_patches_are_hidden_from_the_encoder() {
        let device = Default::default();
        let model = SimMimModel::new(tiny().init::<Flex>(&device), &device);
        let (n, l) = (1, 16);
        let images = Tensor::<Flex, 4>::random([n, 3, 32, 32], Distribution::Default, &device);
        let mut mask = vec![0f32; l];
        mask[5] = 1.0; // row 1, column 1 of the 4x4 grid
        let mask = Tensor::<Flex, 2>::from_data(TensorData::new(mask, [n, l]), &device);
        let base: Vec<f32> = model
            .predict(images.clone(), mask.clone())
            .into_data()
            .to_vec()
            .unwrap();
        // Patch 5 is row 1, column 1: pixels [8, 16) x [8, 16).
        let bump = |r: std::ops::Range<usize>, c: std::ops::Range<usize>| {
            let delta = Tensor::<Flex, 4>::ones([n, 3, 8, 8], &device);
            images.clone().slice_assign(
                [0..n, 0..3, r.clone(), c.clone()],
                images.clone().slice([0..n, 0..3, r, c]) + delta,
            )
        };
        let masked: Vec<f32> = model
            .predict(bump(8..16, 8..16), mask.clone())
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(base, masked, "a masked patch's pixels reach the encoder");
        let visible: Vec<f32> = model
            .predict(bump(0..8, 0..8), mask)
            .into_data()
            .to_vec()
            .unwrap();
        assert_ne!(
            base, visible,
            "a visible patch's pixels do not reach the encoder"
        );

        let all = Tensor::<Flex, 2>::ones([n, l], &device);
        let a: Vec<f32> = model
            .predict(images.clone(), all.clone())
            .into_data()
            .to_vec()
            .unwrap();
        let b: Vec<f32> = model
            .predict(images.neg(), all)
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn pixel_shuffle_follows_the_definition() {
        let device = Default::default();
        let (n, c, side, p) = (2, 3, 8, 4);
        let image: Vec<f32> = (0..n * c * side * side).map(|i| i as f32).collect();
        let tokens = image_to_tokens(&image, n, c, side, p);
        let l = (side / p) * (side / p);
        let back = tokens_to_image(
            Tensor::<Flex, 3>::from_data(TensorData::new(tokens, [n, l, c * p * p]), &device),
            p,
            side / p,
            side / p,
        );
        assert_eq!(back.into_data().to_vec::<f32>().unwrap(), image);
    }

    #[test]
    fn forward_backward_reaches_the_mask_token_and_the_head() {
        let device = Default::default();
        let model = SimMimModel::new(tiny().init::<A>(&device), &device);
        let images = Tensor::<A, 4>::random([2, 3, 32, 32], Distribution::Default, &device);
        let mask = Tensor::<A, 2>::from_data(
            TensorData::new(
                (0..32)
                    .map(|i| (i % 3 == 0) as u8 as f32)
                    .collect::<Vec<_>>(),
                [2, 16],
            ),
            &device,
        );
        let out = model.forward(images, mask).unwrap();
        assert_eq!(out.x_rec.dims(), [2, 3, 32, 32]);
        let loss = out.loss.clone().into_scalar();
        assert!(loss.is_finite() && loss > 0.0, "{loss}");
        let grads = out.loss.backward();
        for (name, g) in [
            (
                "mask_token",
                model.mask_token.grad(&grads).map(|g| g.into_data()),
            ),
            (
                "decoder",
                model.decoder.weight.grad(&grads).map(|g| g.into_data()),
            ),
        ] {
            let g: Vec<f32> = g
                .unwrap_or_else(|| panic!("{name}: no gradient"))
                .to_vec()
                .unwrap();
            assert!(
                g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != 0.0),
                "{name}"
            );
        }
    }
}
