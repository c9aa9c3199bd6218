//! Masked Autoencoders (He et al. 2021), following the official `models_mae.py` top to
//! bottom: config → init → `patchify`/`unpatchify` → `forward_encoder` →
//! `forward_decoder` → `forward_loss` → `forward`.
//!
//! One difference from the reference: `random_masking` is not here. The pipeline draws the
//! masks on CPU workers (sorting on the device would round-trip through the host) and the
//! batch carries them: `ids_keep` (visible patches), `ids_restore` (MAE's
//! `argsort(ids_shuffle)`) and `mask` (1 = masked, i.e. hidden from the encoder and predicted).
//! The encoder gathers the kept patches; the decoder appends mask tokens and unshuffles with
//! `ids_restore`, exactly as the reference does after its own `random_masking`.
//!
//! Precision: [`MaeModel::with_precision`] sets the matmul dtype of the encoder, the decoder
//! blocks and the decoder's two linears; the mask token, the position tables, the unshuffle
//! and the whole loss (`norm_pix_loss` statistics included) stay f32, as the prediction
//! comes back to f32 before it meets the target (see [`crate::precision`]).

use burn::module::{Initializer, Module, Param};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};
use tessera_pipeline::batch::MaskBatch;

use burn::tensor::backend::AutodiffBackend;
use tessera_pipeline::masks::MaskSpec;

use super::{Method, MethodOutput, MethodSpec, NoState, ResolveContext, StepContext};
use crate::backbone::{Backbone, BackboneConfig};
use crate::error::{Error, Result};
use crate::feeder::DeviceBatch;
use crate::pictures::Reconstruction;
use crate::precision::{Precision, to_f32};
use crate::vit::{
    Block, Vit, VitConfig, check_width, init_block, init_layer_norm, init_linear,
    sincos_pos_embed_2d,
};

/// Encoder plus the MAE decoder's shape and the loss's target normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaeConfig {
    /// The encoder.
    pub encoder: VitConfig,
    /// Decoder token width (512 in the paper).
    pub decoder_embed_dim: usize,
    /// Decoder blocks (8 in the paper).
    pub decoder_depth: usize,
    /// Decoder attention heads (16 in the paper).
    pub decoder_num_heads: usize,
    /// Predict per-patch normalised pixels (paper default: true).
    pub norm_pix_loss: bool,
}

impl MaeConfig {
    /// `mae_vit_base_patch16_dec512d8b` with the paper's `norm_pix_loss`.
    pub fn mae_vit_base_patch16() -> Self {
        Self::with_paper_decoder(VitConfig::vit_base_patch16_224())
    }

    /// `mae_vit_large_patch16_dec512d8b` with the paper's `norm_pix_loss`.
    pub fn mae_vit_large_patch16() -> Self {
        Self::with_paper_decoder(VitConfig::vit_large_patch16_224())
    }

    /// The paper's decoder (512 wide, 8 deep, 16 heads) over `encoder`.
    pub fn with_paper_decoder(encoder: VitConfig) -> Self {
        Self {
            encoder,
            decoder_embed_dim: 512,
            decoder_depth: 8,
            decoder_num_heads: 16,
            norm_pix_loss: true,
        }
    }

    /// Builds the model with MAE's initialisation (xavier-uniform linears, zero biases,
    /// unit LayerNorms, normal(0.02) class and mask tokens, fixed sin-cos tables).
    pub fn init<B: Backend>(&self, device: &B::Device) -> MaeModel<B> {
        self.init_around(self.encoder.init(device), device)
    }

    /// The decoder around `encoder` (of shape `self.encoder`), MAE's initialisation.
    pub fn init_around<B: Backend>(&self, encoder: Vit<B>, device: &B::Device) -> MaeModel<B> {
        let enc = &self.encoder;
        let dd = self.decoder_embed_dim;
        MaeModel {
            encoder,
            decoder_embed: init_linear(enc.embed_dim, dd, device),
            mask_token: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, 1, dd], device),
            decoder_pos_embed: sincos_pos_embed_2d(dd, enc.grid_size(), device),
            decoder_blocks: (0..self.decoder_depth)
                .map(|_| init_block(dd, self.decoder_num_heads, enc.mlp_ratio, device))
                .collect(),
            decoder_norm: init_layer_norm(dd, device),
            decoder_pred: init_linear(dd, enc.patch_dim(), device),
            patch_size: enc.patch_size,
            norm_pix_loss: self.norm_pix_loss,
            precision: Precision::F32,
        }
    }
}

/// The MAE model: a [`Vit`] encoder and a light transformer decoder.
#[derive(Module, Debug)]
pub struct MaeModel<B: Backend> {
    /// The encoder (the part that is exported).
    pub encoder: Vit<B>,
    /// Encoder width to decoder width.
    pub decoder_embed: Linear<B>,
    /// Learned token standing for each masked patch `[1, 1, Dd]`.
    pub mask_token: Param<Tensor<B, 3>>,
    /// Fixed sin-cos table `[1, 1 + L, Dd]`. Not trained.
    pub decoder_pos_embed: Tensor<B, 3>,
    /// Decoder blocks.
    pub decoder_blocks: Vec<Block<B>>,
    /// Decoder final norm.
    pub decoder_norm: LayerNorm<B>,
    /// Decoder width to pixels of one patch (`P * P * 3`).
    pub decoder_pred: Linear<B>,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// See [`MaeConfig::norm_pix_loss`].
    pub norm_pix_loss: bool,
    /// Dtype of `decoder_embed` and `decoder_pred` (not saved; set by
    /// [`MaeModel::with_precision`]).
    pub precision: Precision,
}

/// One batch's device tensors for MAE.
#[derive(Debug, Clone)]
pub struct MaeInput<B: Backend> {
    /// Normalised images `[n, 3, H, W]`.
    pub images: Tensor<B, 4>,
    /// Visible patch indices `[n, k]`, each in `0..l`.
    pub ids_keep: Tensor<B, 2, Int>,
    /// Position of each patch in the (kept ++ masked) order `[n, l]`.
    pub ids_restore: Tensor<B, 2, Int>,
    /// `[n, l]`, 1 = masked (predicted, counted in the loss), 0 = visible.
    pub mask: Tensor<B, 2>,
}

impl<B: Backend> MaeInput<B> {
    /// Uploads the pipeline's masks for `images` and checks that the shapes agree.
    pub fn new(images: Tensor<B, 4>, masks: &MaskBatch, device: &B::Device) -> Result<Self> {
        let [n, _, _, _] = images.dims();
        let (l, k) = (masks.num_patches, masks.num_keep);
        let shape_err = |what, expected: Vec<usize>, actual: usize| Error::Shape {
            what,
            expected,
            actual: vec![actual],
        };
        if masks.len != n {
            return Err(shape_err("masks.len", vec![n], masks.len));
        }
        if k == 0 || masks.ids_keep.len() != n * k {
            return Err(shape_err("ids_keep", vec![n, k], masks.ids_keep.len()));
        }
        if masks.ids_restore.len() != n * l {
            return Err(shape_err(
                "ids_restore",
                vec![n, l],
                masks.ids_restore.len(),
            ));
        }
        if masks.mask.len() != n * l {
            return Err(shape_err("mask", vec![n, l], masks.mask.len()));
        }
        let ints = |v: &[u32], shape: [usize; 2]| {
            Tensor::<B, 2, Int>::from_data(
                TensorData::new(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), shape),
                device,
            )
        };
        let mask: Vec<f32> = masks.mask.iter().map(|&m| f32::from(m)).collect();
        Ok(Self {
            images,
            ids_keep: ints(&masks.ids_keep, [n, k]),
            ids_restore: ints(&masks.ids_restore, [n, l]),
            mask: Tensor::from_data(TensorData::new(mask, [n, l]), device),
        })
    }
}

/// What [`MaeModel::forward`] returns.
#[derive(Debug, Clone)]
pub struct MaeOutput<B: Backend> {
    /// Mean squared error over masked patches `[1]`.
    pub loss: Tensor<B, 1>,
    /// Predicted pixels `[n, l, P*P*3]` (normalised per patch when `norm_pix_loss`).
    pub pred: Tensor<B, 3>,
    /// `[n, l]`, 1 = masked.
    pub mask: Tensor<B, 2>,
}

/// MAE `patchify`: `[n, 3, h*p, w*p]` -> `[n, h*w, p*p*3]`, each patch in `(row, col, channel)` order.
pub fn patchify<B: Backend>(images: Tensor<B, 4>, p: usize) -> Tensor<B, 3> {
    let [n, c, height, width] = images.dims();
    let (h, w) = (height / p, width / p);
    images
        .reshape([n, c, h, p, w, p])
        .permute([0, 2, 4, 3, 5, 1]) // nchpwq -> nhwpqc
        .reshape([n, h * w, p * p * c])
}

/// MAE `unpatchify`: `[n, h*w, p*p*3]` -> `[n, 3, h*p, w*p]` (square grids).
pub fn unpatchify<B: Backend>(patches: Tensor<B, 3>, p: usize) -> Tensor<B, 4> {
    let [n, l, pd] = patches.dims();
    let c = pd / (p * p);
    let h = (l as f64).sqrt().round() as usize;
    patches
        .reshape([n, h, h, p, p, c])
        .permute([0, 5, 1, 3, 2, 4]) // nhwpqc -> nchpwq
        .reshape([n, c, h * p, h * p])
}

/// MAE's unshuffle: append one mask token per masked patch after the kept tokens, then
/// gather with `ids_restore` so that token `i` (after the class token) is patch `i`.
///
/// # Shapes
/// `tokens` `[n, 1 + k, d]` (class token first), `mask_token` `[1, 1, d]`,
/// `ids_restore` `[n, l]` -> `[n, 1 + l, d]`.
pub fn restore_patch_order<B: Backend>(
    tokens: Tensor<B, 3>,
    mask_token: Tensor<B, 3>,
    ids_restore: Tensor<B, 2, Int>,
) -> Tensor<B, 3> {
    let [n, k1, d] = tokens.dims();
    let [_, l] = ids_restore.dims();
    let mask_tokens = mask_token.expand([n, l + 1 - k1, d]); // [n, l - k, d]
    let shuffled = Tensor::cat(
        vec![tokens.clone().slice([0..n, 1..k1, 0..d]), mask_tokens],
        1,
    ); // [n, l, d]
    let unshuffled = crate::vit::gather_tokens(shuffled, ids_restore); // [n, l, d], patch order
    Tensor::cat(vec![tokens.slice([0..n, 0..1, 0..d]), unshuffled], 1)
}

impl<B: Backend> MaeModel<B> {
    /// The same model with every matmul in `precision`; parameters, their gradients and
    /// what checkpoints save stay f32.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.encoder = self.encoder.with_precision(precision);
        for block in &mut self.decoder_blocks {
            block.set_precision(precision);
        }
        self.precision = precision;
        self
    }

    /// The encoder over the visible patches only.
    ///
    /// # Shapes
    /// `images` `[n, 3, H, W]`, `ids_keep` `[n, k]` -> latent `[n, 1 + k, d]`.
    pub fn forward_encoder(
        &self,
        images: Tensor<B, 4>,
        ids_keep: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        self.encoder.forward_kept(images, ids_keep)
    }

    /// Appends mask tokens, unshuffles to patch order and predicts every patch's pixels.
    ///
    /// # Shapes
    /// `latent` `[n, 1 + k, d]`, `ids_restore` `[n, l]` -> `[n, l, P*P*3]`.
    pub fn forward_decoder(
        &self,
        latent: Tensor<B, 3>,
        ids_restore: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let p = self.precision;
        let x = to_f32(p.linear(&self.decoder_embed, latent)); // [n, 1 + k, dd]
        let [_, l] = ids_restore.dims();
        let mut x = restore_patch_order(x, self.mask_token.val(), ids_restore); // [n, 1 + l, dd]
        x = x + self.decoder_pos_embed.clone();
        for block in &self.decoder_blocks {
            x = block.forward(x);
        }
        let x = to_f32(p.linear(&self.decoder_pred, self.decoder_norm.forward(x))); // [n, 1 + l, P*P*3]
        let [n, _, pd] = x.dims();
        x.slice([0..n, 1..l + 1, 0..pd]) // drop the class token
    }

    /// Mean squared error per patch, averaged over the masked patches only.
    ///
    /// # Shapes
    /// `images` `[n, 3, H, W]`, `pred` `[n, l, P*P*3]`, `mask` `[n, l]` (1 = masked) -> `[1]`.
    pub fn forward_loss(
        &self,
        images: Tensor<B, 4>,
        pred: Tensor<B, 3>,
        mask: Tensor<B, 2>,
    ) -> Tensor<B, 1> {
        let mut target = patchify(images, self.patch_size); // [n, l, P*P*3]
        if self.norm_pix_loss {
            let (var, mean) = target.clone().var_mean(2); // unbiased, as torch.var
            target = (target - mean) / (var + 1e-6).sqrt();
        }
        let per_patch = (pred - target)
            .powi_scalar(2)
            .mean_dim(2)
            .squeeze_dim::<2>(2); // [n, l]
        (per_patch * mask.clone()).sum() / mask.sum()
    }

    /// Encoder, decoder and loss, as `MaskedAutoencoderViT.forward`.
    pub fn forward(&self, input: MaeInput<B>) -> MaeOutput<B> {
        let MaeInput {
            images,
            ids_keep,
            ids_restore,
            mask,
        } = input;
        let latent = self.forward_encoder(images.clone(), ids_keep);
        let pred = self.forward_decoder(latent, ids_restore);
        let loss = self.forward_loss(images, pred.clone(), mask.clone());
        MaeOutput { loss, pred, mask }
    }
}

/// `[objective]` of `method = "mae"`: the decoder and the target, plus where the masked
/// view sits in the batch (derived from the recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaeMethod {
    /// Decoder token width. Default 512 (paper). Multiple of 4 and of `decoder_num_heads`.
    pub decoder_embed_dim: usize,
    /// Decoder blocks. Default 8 (paper); 1 still learns (paper Table 1a).
    pub decoder_depth: usize,
    /// Decoder heads. Default 16.
    pub decoder_num_heads: usize,
    /// Targets are each patch's pixels normalised by the patch's mean and std. Default true
    /// (paper: +0.5% top-1 over raw pixels).
    pub norm_pix_loss: bool,
    /// Index of the view with the random mask (derived from the views: not a recipe key).
    pub view: usize,
    /// Fraction of patches the pipeline masks (derived from the view's mask: not a recipe key).
    pub mask_ratio: f64,
}

impl Default for MaeMethod {
    fn default() -> Self {
        Self {
            decoder_embed_dim: 512,
            decoder_depth: 8,
            decoder_num_heads: 16,
            norm_pix_loss: true,
            view: 0,
            mask_ratio: 0.75,
        }
    }
}

impl MaeMethod {
    /// The whole model's shape over the `encoder`.
    pub fn model(&self, encoder: &VitConfig) -> MaeConfig {
        MaeConfig {
            encoder: encoder.clone(),
            decoder_embed_dim: self.decoder_embed_dim,
            decoder_depth: self.decoder_depth,
            decoder_num_heads: self.decoder_num_heads,
            norm_pix_loss: self.norm_pix_loss,
        }
    }
}

impl MethodSpec for MaeMethod {
    const NAME: &'static str = "mae";
    const PAPER: &'static str = "He et al. 2021, Masked Autoencoders Are Scalable Vision Learners";
    const RECIPES: &'static [&'static str] = &["mae_vit_base", "mae_vit_tiny_cifar"];

    fn resolve(mut self, ctx: &ResolveContext<'_>) -> Result<Self> {
        let defaults = Self::default();
        for (key, set) in [
            ("view", self.view != defaults.view),
            ("mask_ratio", self.mask_ratio != defaults.mask_ratio),
        ] {
            if set {
                return Err(Error::config(
                    "objective",
                    key,
                    "is derived from the masked view ([views.mask]); not a recipe key",
                ));
            }
        }
        let BackboneConfig::Vit(encoder) = ctx.backbone else {
            return Err(Error::config(
                "model",
                "arch",
                format!(
                    "MAE needs a ViT encoder (`vit_*`), not `{}`",
                    ctx.backbone.arch_name().unwrap_or("this backbone")
                ),
            ));
        };
        check_width(
            "decoder_embed_dim",
            self.decoder_embed_dim,
            self.decoder_num_heads,
        )
        .map_err(|(key, msg)| Error::config("objective", key, msg))?;
        if self.decoder_depth == 0 {
            return Err(Error::config(
                "objective",
                "decoder_depth",
                "must be at least 1",
            ));
        }
        let recipe = ctx.recipe;
        let mut found = None;
        for (index, instance) in recipe.view_instances().iter().enumerate() {
            let spec = &recipe.views[instance.spec];
            if let Some(MaskSpec::Random { ratio, patch_size }) = &spec.mask {
                if found.is_some() {
                    return Err(Error::config(
                        "views",
                        "mask",
                        "MAE takes exactly one view with a `random` mask",
                    ));
                }
                found = Some((index, spec.size as usize, *patch_size as usize, *ratio));
            }
        }
        let Some((index, size, patch, ratio)) = found else {
            return Err(Error::config(
                "views",
                "mask",
                "MAE needs one view with a `random` mask ([views.mask] kind = \"random\")",
            ));
        };
        if size != encoder.img_size {
            return Err(Error::config(
                "model",
                "img_size",
                format!(
                    "{} differs from the masked view's size {size}",
                    encoder.img_size
                ),
            ));
        }
        if patch != encoder.patch_size {
            return Err(Error::config(
                "model",
                "patch_size",
                format!(
                    "{} differs from the mask's patch_size {patch}",
                    encoder.patch_size
                ),
            ));
        }
        self.view = index;
        self.mask_ratio = ratio;
        Ok(self)
    }
}

impl<B: AutodiffBackend> Method<B> for MaeMethod {
    type Model = MaeModel<B>;
    type State = NoState<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let encoder = match backbone {
            Backbone::Vit(v) => v,
            // `resolve` rejects other backbones before a model is built.
            other => unreachable!("MAE over {other:?}"),
        };
        let model = self.model(&encoder.shape()).init_around(encoder, device);
        (model, NoState::default())
    }

    fn with_precision(&self, model: Self::Model, precision: Precision) -> Self::Model {
        model.with_precision(precision)
    }

    fn forward(
        &self,
        model: &Self::Model,
        _state: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let DeviceBatch {
            mut views,
            mut masks,
            ..
        } = batch;
        let mask = masks.get_mut(self.view).and_then(Option::take);
        let (Some(mask), true) = (mask, self.view < views.len()) else {
            return Err(Error::Shape {
                what: "masked view",
                expected: vec![self.view + 1],
                actual: vec![views.len()],
            });
        };
        let images = views.swap_remove(self.view);
        let kept = ctx.picture.then(|| (images.clone(), mask.mask.clone()));
        let out = model.forward(MaeInput {
            images: Tensor::from_inner(images),
            ids_keep: Tensor::from_inner(mask.ids_keep),
            ids_restore: Tensor::from_inner(mask.ids_restore),
            mask: Tensor::from_inner(mask.mask),
        });
        let picture = match kept {
            Some((images, mask)) => Some(reconstruction(
                images,
                out.pred.clone().inner(),
                mask,
                model.patch_size,
                model.norm_pix_loss,
                ctx,
            )?),
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

/// The MAE paper's figure: original, masked and reconstructed, for the first samples
/// (`pred` in patches, as MAE's decoder gives them; SimMIM draws with it too).
pub(super) fn reconstruction<B: Backend>(
    images: Tensor<B, 4>,
    pred: Tensor<B, 3>,
    mask: Tensor<B, 2>,
    patch: usize,
    norm_pix: bool,
    ctx: &StepContext,
) -> Result<image::RgbImage> {
    let [n, _, h, w] = images.dims();
    let k = ctx.picture_samples.min(n).max(1);
    let host = |data: TensorData, name: &str| {
        data.convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| Error::TensorData {
                name: name.to_string(),
                message: format!("{e:?}"),
            })
    };
    let recon = Reconstruction {
        n: k,
        height: h,
        width: w,
        patch,
        images: host(images.narrow(0, 0, k).into_data(), "images")?,
        pred: host(pred.narrow(0, 0, k).into_data(), "pred")?,
        mask: host(mask.narrow(0, 0, k).into_data(), "mask")?,
        norm_pix,
    };
    Ok(recon.render(ctx.normalize)?)
}

#[cfg(test)]
pub(crate) mod tests {
    //! The masking, the unshuffle and the loss against plain-loop definitions.
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    type B = Autodiff<Flex>;

    fn tiny() -> MaeConfig {
        MaeConfig {
            encoder: VitConfig {
                img_size: 8,
                patch_size: 2,
                in_chans: 3,
                embed_dim: 8,
                depth: 1,
                num_heads: 2,
                mlp_ratio: 2.0,
                drop_path_rate: 0.0,
            },
            decoder_embed_dim: 8,
            decoder_depth: 1,
            decoder_num_heads: 2,
            norm_pix_loss: true,
        }
    }

    /// Masks as the pipeline hands them over: `ids_keep` ascending, `ids_restore` the inverse
    /// of `keep ++ masked`.
    pub(crate) fn masks(n: usize, l: usize, k: usize, seed: u64) -> MaskBatch {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (mut mask, mut ids_keep, mut ids_restore) = (vec![], vec![], vec![]);
        for _ in 0..n {
            let mut perm: Vec<u32> = (0..l as u32).collect();
            perm.shuffle(&mut rng);
            let (mut keep, mut masked) = (perm[..k].to_vec(), perm[k..].to_vec());
            keep.sort();
            masked.sort();
            let shuffle: Vec<u32> = keep.iter().chain(&masked).copied().collect();
            let mut restore = vec![0u32; l];
            for (pos, &patch) in shuffle.iter().enumerate() {
                restore[patch as usize] = pos as u32;
            }
            mask.extend((0..l as u32).map(|i| u8::from(!keep.contains(&i))));
            ids_keep.extend(keep);
            ids_restore.extend(restore);
        }
        MaskBatch {
            len: n,
            num_patches: l,
            mask,
            ids_keep,
            ids_restore,
            num_keep: k,
        }
    }

    fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn encoder_sees_exactly_the_kept_patches() {
        let device = Default::default();
        let model = tiny().init::<Flex>(&device);
        let (n, l, k, d) = (3, 16, 4, 8);
        let m = masks(n, l, k, 1);
        let images = Tensor::<Flex, 4>::random([n, 3, 8, 8], Distribution::Default, &device);
        let input = MaeInput::new(images.clone(), &m, &device).unwrap();
        let latent = model.forward_encoder(images.clone(), input.ids_keep);

        // Reference: embed all patches, pick the kept rows by hand, run the same blocks.
        let all = values(model.encoder.embed_patches(images)); // [n, l, d]
        let mut kept = Vec::with_capacity(n * k * d);
        for s in 0..n {
            for j in 0..k {
                let patch = m.ids_keep[s * k + j] as usize;
                kept.extend_from_slice(&all[(s * l + patch) * d..][..d]);
            }
        }
        let kept = Tensor::<Flex, 3>::from_data(TensorData::new(kept, [n, k, d]), &device);
        let expect = model.encoder.forward_tokens(kept);
        assert_eq!(latent.dims(), [n, 1 + k, d]);
        latent
            .into_data()
            .assert_approx_eq::<f32>(&expect.into_data(), Tolerance::default());
    }

    #[test]
    fn unshuffle_puts_every_token_back_at_its_patch() {
        let device = Default::default();
        let (n, l, k, d) = (2, 9, 3, 4);
        let m = masks(n, l, k, 2);
        let tokens: Vec<f32> = (0..n * (1 + k) * d).map(|i| i as f32).collect();
        let mask_token = vec![-1f32, -2., -3., -4.];
        let input =
            MaeInput::new(Tensor::<Flex, 4>::zeros([n, 3, 6, 6], &device), &m, &device).unwrap();
        let out = values(restore_patch_order(
            Tensor::from_data(TensorData::new(tokens.clone(), [n, 1 + k, d]), &device),
            Tensor::from_data(TensorData::new(mask_token.clone(), [1, 1, d]), &device),
            input.ids_restore,
        ));
        assert_eq!(out.len(), n * (1 + l) * d);
        for s in 0..n {
            let row = |t: usize| &out[(s * (1 + l) + t) * d..][..d];
            assert_eq!(
                row(0),
                &tokens[s * (1 + k) * d..][..d],
                "class token stays first"
            );
            for patch in 0..l {
                let r = m.ids_restore[s * l + patch] as usize;
                let expect = if r < k {
                    &tokens[(s * (1 + k) + 1 + r) * d..][..d]
                } else {
                    &mask_token[..]
                };
                assert_eq!(row(1 + patch), expect, "sample {s} patch {patch}");
                assert_eq!(
                    r < k,
                    m.mask[s * l + patch] == 0,
                    "kept exactly where the mask says visible"
                );
            }
            for j in 0..k {
                let patch = m.ids_keep[s * k + j] as usize;
                assert_eq!(row(1 + patch), &tokens[(s * (1 + k) + 1 + j) * d..][..d]);
            }
        }
    }

    /// `forward_loss` against the definition written as loops: patchify (row, col, channel),
    /// per-patch mean and unbiased variance, squared error averaged over pixels, then over
    /// the masked patches.
    #[test]
    fn loss_matches_the_reference_definition() {
        let device = Default::default();
        let (n, c, side, p) = (2, 3, 8, 2);
        let (g, l, pd) = (side / p, (side / p) * (side / p), p * p * c);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let img: Vec<f32> = (0..n * c * side * side)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let pred: Vec<f32> = (0..n * l * pd)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let m = masks(n, l, 4, 4);
        for norm_pix_loss in [false, true] {
            let mut model = tiny().init::<Flex>(&device);
            model.norm_pix_loss = norm_pix_loss;
            let images = Tensor::<Flex, 4>::from_data(
                TensorData::new(img.clone(), [n, c, side, side]),
                &device,
            );
            let input = MaeInput::new(images.clone(), &m, &device).unwrap();
            let loss = model.forward_loss(
                images,
                Tensor::from_data(TensorData::new(pred.clone(), [n, l, pd]), &device),
                input.mask,
            );

            let (mut num, mut den) = (0f64, 0f64);
            for s in 0..n {
                for (gi, gj) in (0..g).flat_map(|i| (0..g).map(move |j| (i, j))) {
                    let patch = gi * g + gj;
                    let mut target = Vec::with_capacity(pd);
                    for (pi, qi, ch) in (0..p)
                        .flat_map(|a| (0..p).flat_map(move |b| (0..c).map(move |ch| (a, b, ch))))
                    {
                        target.push(
                            img[((s * c + ch) * side + gi * p + pi) * side + gj * p + qi] as f64,
                        );
                    }
                    if norm_pix_loss {
                        let mean = target.iter().sum::<f64>() / pd as f64;
                        let var = target.iter().map(|t| (t - mean).powi(2)).sum::<f64>()
                            / (pd - 1) as f64;
                        target
                            .iter_mut()
                            .for_each(|t| *t = (*t - mean) / (var + 1e-6).sqrt());
                    }
                    let err = (0..pd)
                        .map(|e| (pred[(s * l + patch) * pd + e] as f64 - target[e]).powi(2))
                        .sum::<f64>()
                        / pd as f64;
                    let masked = m.mask[s * l + patch] as f64;
                    num += err * masked;
                    den += masked;
                }
            }
            let got = loss.into_scalar() as f64;
            let expect = num / den;
            assert!(
                (got - expect).abs() < 1e-5 * expect.abs().max(1.0),
                "norm_pix_loss={norm_pix_loss}: {got} vs {expect}"
            );
        }
    }

    #[test]
    fn unpatchify_inverts_patchify() {
        let device = Default::default();
        let images = Tensor::<Flex, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
        let back = unpatchify(patchify(images.clone(), 4), 4);
        assert_eq!(values(back), values(images));
    }

    #[test]
    fn forward_backward_smoke() {
        let device = Default::default();
        let model = tiny().init::<B>(&device);
        let (n, l, k) = (2, 16, 4);
        let images = Tensor::<B, 4>::random([n, 3, 8, 8], Distribution::Default, &device);
        let input = MaeInput::new(images, &masks(n, l, k, 5), &device).unwrap();
        let out = model.forward(input);
        assert_eq!(out.pred.dims(), [n, l, 12]);
        assert_eq!(out.mask.dims(), [n, l]);
        let loss = out.loss.clone().into_scalar();
        assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
        let grads = out.loss.backward();
        for (name, g) in [
            ("mask_token", model.mask_token.grad(&grads).map(values)),
            (
                "cls_token",
                model.encoder.cls_token.grad(&grads).map(values),
            ),
            (
                "patch_embed",
                model
                    .encoder
                    .patch_embed
                    .proj
                    .weight
                    .grad(&grads)
                    .map(values),
            ),
            (
                "decoder_pred",
                model.decoder_pred.weight.grad(&grads).map(values),
            ),
        ] {
            let g = g.unwrap_or_else(|| panic!("{name} has no gradient"));
            assert!(
                g.iter().all(|v| v.is_finite()) && g.iter().any(|&v| v != 0.0),
                "{name}: {g:?}"
            );
        }
    }

    #[test]
    fn mismatched_masks_are_an_error() {
        let device = Default::default();
        let images = Tensor::<Flex, 4>::zeros([3, 3, 8, 8], &device);
        let err = MaeInput::new(images, &masks(2, 16, 4, 6), &device).unwrap_err();
        assert!(err.to_string().contains("masks.len"), "{err}");
    }
}
