//! The Vision Transformer backbone shared by every objective (timm `VisionTransformer`,
//! MAE `models_mae.py` encoder).
//!
//! One [`VitConfig`] describes every variant; `vit_tiny/small/base/large_patch16_224` are
//! one-line constructors over it (variants are data, not code). Field names follow timm
//! (`patch_embed.proj`, `blocks.{i}.attn.qkv`, `norm`, ...) so that [`crate::export`] maps
//! them one to one; the only renames are burn's `LayerNorm` `gamma`/`beta` (timm `weight`/`bias`)
//! and burn's `Linear` weight layout `[in, out]` (PyTorch stores `[out, in]`).
//!
//! Position embeddings start as FIXED 2-D sin-cos tables (MAE `get_2d_sincos_pos_embed`),
//! held in a [`Param`] that does not require a gradient: never trained (MAE keeps it fixed),
//! but saved in records, so that a learned table imported from timm (see
//! [`crate::backbone::Backbone::load_timm`]) survives a checkpoint.
//!
//! The patch embedding is a `Linear` over patches flattened in `(channel, row, column)` order,
//! which is exactly a `Conv2d(3, D, P, stride=P)` whose weight `[D, 3, P, P]` is the transposed
//! linear weight reshaped: export stays a reshape and the forward stays one matmul.
//!
//! Precision: every module here takes and returns f32 tensors and holds f32 parameters. The
//! layers with matmuls ([`PatchEmbed`], [`Attention`], [`Mlp`]) carry a [`Precision`] (set for
//! the whole tree by [`Vit::with_precision`], f32 after `init`) and with bf16 run their
//! matmuls in bf16 inside; LayerNorm and the residual stream stay f32 (see [`crate::precision`]).

use burn::module::{Initializer, Module, Param, ParamId};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::precision::{Precision, to_f32};

/// LayerNorm epsilon used by timm's ViT and MAE (`partial(nn.LayerNorm, eps=1e-6)`).
pub const LAYER_NORM_EPS: f64 = 1e-6;

/// Shape of a Vision Transformer. Variants are values of this struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Input image side in pixels (square images). Must be a multiple of `patch_size`.
    pub img_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels (3 for RGB).
    pub in_chans: usize,
    /// Token width `D`. Must be a multiple of 4 (2-D sin-cos embedding) and of `num_heads`.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads per block.
    pub num_heads: usize,
    /// MLP hidden width as a multiple of `embed_dim` (4.0 in every timm ViT).
    pub mlp_ratio: f64,
}

impl VitConfig {
    fn timm(embed_dim: usize, depth: usize, num_heads: usize) -> Self {
        Self {
            img_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
        }
    }

    /// timm `vit_tiny_patch16_224`: 192 wide, 12 deep, 3 heads.
    pub fn vit_tiny_patch16_224() -> Self {
        Self::timm(192, 12, 3)
    }

    /// timm `vit_small_patch16_224`: 384 wide, 12 deep, 6 heads.
    pub fn vit_small_patch16_224() -> Self {
        Self::timm(384, 12, 6)
    }

    /// timm `vit_base_patch16_224`: 768 wide, 12 deep, 12 heads.
    pub fn vit_base_patch16_224() -> Self {
        Self::timm(768, 12, 12)
    }

    /// timm `vit_large_patch16_224`: 1024 wide, 24 deep, 16 heads.
    pub fn vit_large_patch16_224() -> Self {
        Self::timm(1024, 24, 16)
    }

    /// The variant with this timm name, if it is one of the above.
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "vit_tiny_patch16_224" => Some(Self::vit_tiny_patch16_224()),
            "vit_small_patch16_224" => Some(Self::vit_small_patch16_224()),
            "vit_base_patch16_224" => Some(Self::vit_base_patch16_224()),
            "vit_large_patch16_224" => Some(Self::vit_large_patch16_224()),
            _ => None,
        }
    }

    /// The timm names [`VitConfig::by_name`] knows.
    pub const NAMES: [&'static str; 4] = [
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "vit_large_patch16_224",
    ];

    /// Patches per side.
    pub fn grid_size(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Patches per image `L`.
    pub fn num_patches(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    /// Values in one flattened patch, `P * P * C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.in_chans
    }

    /// Checks the divisibility constraints; returns a message naming the field.
    // `!(x > 0.0)` on purpose: NaN must fail the check too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.patch_size == 0
            || self.img_size == 0
            || !self.img_size.is_multiple_of(self.patch_size)
        {
            return Err((
                "img_size",
                format!(
                    "{} is not a positive multiple of patch_size {}",
                    self.img_size, self.patch_size
                ),
            ));
        }
        check_width("embed_dim", self.embed_dim, self.num_heads)?;
        if self.depth == 0 {
            return Err(("depth", "must be at least 1".into()));
        }
        if !(self.mlp_ratio > 0.0) {
            return Err(("mlp_ratio", format!("{} must be positive", self.mlp_ratio)));
        }
        if self.in_chans == 0 {
            return Err(("in_chans", "must be at least 1".into()));
        }
        Ok(())
    }

    /// Builds the encoder with MAE's initialisation (see [`init_linear`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vit<B> {
        let d = self.embed_dim;
        let patch_dim = self.in_chans * self.patch_size * self.patch_size;
        Vit {
            patch_embed: PatchEmbed {
                // MAE: xavier_uniform on the conv weight viewed as [D, C*P*P].
                proj: init_linear(patch_dim, d, device),
                patch_size: self.patch_size,
                precision: Precision::F32,
            },
            cls_token: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, 1, d], device),
            pos_embed: Param::initialized(
                ParamId::new(),
                sincos_pos_embed_2d(d, self.grid_size(), device),
            ),
            blocks: (0..self.depth)
                .map(|_| init_block(d, self.num_heads, self.mlp_ratio, device))
                .collect(),
            norm: init_layer_norm(d, device),
            embed_dim: d,
        }
    }
}

/// Checks that a token width suits the 2-D sin-cos embedding and the head count.
pub(crate) fn check_width(
    field: &'static str,
    width: usize,
    heads: usize,
) -> Result<(), (&'static str, String)> {
    if width == 0 || !width.is_multiple_of(4) {
        return Err((
            field,
            format!("{width} must be a positive multiple of 4 (2-D sin-cos position embedding)"),
        ));
    }
    if heads == 0 || !width.is_multiple_of(heads) {
        return Err((
            field,
            format!("{width} is not divisible by the number of heads {heads}"),
        ));
    }
    Ok(())
}

/// `Linear(d_in, d_out)` initialised as MAE `_init_weights`: xavier-uniform weight, zero bias.
pub(crate) fn init_linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    let mut linear = LinearConfig::new(d_in, d_out)
        .with_initializer(Initializer::XavierUniform { gain: 1.0 })
        .init(device);
    linear.bias = Some(Initializer::Zeros.init([d_out], device));
    linear
}

/// `LayerNorm(d, eps=1e-6)` with weight 1 and bias 0.
pub(crate) fn init_layer_norm<B: Backend>(d: usize, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(d)
        .with_epsilon(LAYER_NORM_EPS)
        .init(device)
}

pub(crate) fn init_block<B: Backend>(
    d: usize,
    num_heads: usize,
    mlp_ratio: f64,
    device: &B::Device,
) -> Block<B> {
    let hidden = (d as f64 * mlp_ratio) as usize;
    Block {
        norm1: init_layer_norm(d, device),
        attn: Attention {
            qkv: init_linear(d, 3 * d, device),
            proj: init_linear(d, d, device),
            num_heads,
            precision: Precision::F32,
        },
        norm2: init_layer_norm(d, device),
        mlp: Mlp {
            fc1: init_linear(d, hidden, device),
            fc2: init_linear(hidden, d, device),
            precision: Precision::F32,
        },
    }
}

/// Image to patch tokens: flatten each `P x P` patch in `(c, row, col)` order, then project.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// Weight `[C*P*P, D]`; timm's `patch_embed.proj.weight` `[D, C, P, P]` is its transpose.
    pub proj: Linear<B>,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Dtype of the projection's matmul (not saved; set by [`Vit::with_precision`]).
    pub precision: Precision,
}

impl<B: Backend> PatchEmbed<B> {
    /// # Shapes
    /// `images` `[n, c, h*p, w*p]` (f32) -> `[n, h*w, d]` (f32), patches in row-major grid order.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let [n, c, height, width] = images.dims();
        let p = self.patch_size;
        let (h, w) = (height / p, width / p);
        let patches = images
            .reshape([n, c, h, p, w, p])
            .permute([0, 2, 4, 1, 3, 5]) // [n, h, w, c, p, p]
            .reshape([n, h * w, c * p * p]);
        to_f32(self.precision.linear(&self.proj, patches)) // [n, l, d]
    }
}

/// Multi-head self-attention with a fused `qkv` projection (timm `Attention`, `qkv_bias=True`).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[D, 3D]`; output columns are `(q|k|v, head, head_dim)` as timm's reshape expects.
    pub qkv: Linear<B>,
    /// Output projection `[D, D]`.
    pub proj: Linear<B>,
    /// Number of heads.
    pub num_heads: usize,
    /// Dtype of the projections and of `q·kᵀ`, `softmax·v` (the softmax is f32 either way).
    pub precision: Precision,
}

impl<B: Backend> Attention<B> {
    /// # Shapes
    /// `x` `[b, l, d]` (f32) -> `[b, l, d]` (f32).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, l, d] = x.dims();
        let h = self.num_heads;
        let p = self.precision;
        let qkv = p.linear(&self.qkv, x).reshape([b, l, 3, h, d / h]);
        // [b, l, 1, h, dh] -> [b, h, l, dh]
        let part = |i: usize| {
            qkv.clone()
                .narrow(2, i, 1)
                .reshape([b, l, h, d / h])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let out = p.attention(q, k, v); // [b, h, l, dh]
        to_f32(p.linear(&self.proj, out.swap_dims(1, 2).reshape([b, l, d])))
    }
}

/// Two-layer MLP with exact (erf) GELU, as `nn.GELU()`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[D, hidden]`.
    pub fc1: Linear<B>,
    /// `[hidden, D]`.
    pub fc2: Linear<B>,
    /// Dtype of both linears and of the GELU between them.
    pub precision: Precision,
}

impl<B: Backend> Mlp<B> {
    /// # Shapes
    /// `x` `[b, l, d]` (f32) -> `[b, l, d]` (f32).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let p = self.precision;
        to_f32(p.linear(&self.fc2, gelu(p.linear(&self.fc1, x))))
    }
}

/// Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// Norm before the MLP.
    pub norm2: LayerNorm<B>,
    /// Feed-forward.
    pub mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    /// # Shapes
    /// `x` `[b, l, d]` -> `[b, l, d]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x));
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }

    /// Sets the matmul precision of the attention and the MLP.
    pub fn set_precision(&mut self, precision: Precision) {
        self.attn.precision = precision;
        self.mlp.precision = precision;
    }
}

/// The ViT encoder: patch embedding, class token, fixed position embedding, blocks, norm.
#[derive(Module, Debug)]
pub struct Vit<B: Backend> {
    /// Patch projection.
    pub patch_embed: PatchEmbed<B>,
    /// Learned class token `[1, 1, D]`.
    pub cls_token: Param<Tensor<B, 3>>,
    /// Position table `[1, 1 + L, D]`: the 2-D sin-cos table after `init` (row 0, the class
    /// token's, all zeros) or an imported one. Requires no gradient, so it is never trained;
    /// saved in records.
    pub pos_embed: Param<Tensor<B, 3>>,
    /// Transformer blocks.
    pub blocks: Vec<Block<B>>,
    /// Final LayerNorm.
    pub norm: LayerNorm<B>,
    /// Token width `D`.
    pub embed_dim: usize,
}

impl<B: Backend> Vit<B> {
    /// The shape this ViT was built with (read off its parameters), for the modules built
    /// around it (MAE's decoder).
    pub fn shape(&self) -> VitConfig {
        let [_, tokens, embed_dim] = self.pos_embed.dims();
        let grid = ((tokens - 1) as f64).sqrt().round() as usize;
        let patch_size = self.patch_embed.patch_size;
        let [patch_dim, _] = self.patch_embed.proj.weight.dims();
        let (depth, num_heads, mlp_ratio) = match self.blocks.first() {
            Some(block) => {
                let [_, hidden] = block.mlp.fc1.weight.dims();
                (
                    self.blocks.len(),
                    block.attn.num_heads,
                    hidden as f64 / embed_dim as f64,
                )
            }
            None => (0, 1, 4.0),
        };
        VitConfig {
            img_size: grid * patch_size,
            patch_size,
            in_chans: patch_dim / (patch_size * patch_size),
            embed_dim,
            depth,
            num_heads,
            mlp_ratio,
        }
    }

    /// The same encoder with every matmul in `precision` (parameters stay as they are: f32).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.patch_embed.precision = precision;
        for block in &mut self.blocks {
            block.set_precision(precision);
        }
        self
    }

    /// The matmul precision set by [`Vit::with_precision`].
    pub fn precision(&self) -> Precision {
        self.patch_embed.precision
    }

    /// Patch tokens with their position embedding, before any masking.
    ///
    /// # Shapes
    /// `images` `[n, c, H, W]` -> `[n, l, d]`.
    pub fn embed_patches(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let x = self.patch_embed.forward(images); // [n, l, d]
        let [_, l, d] = x.dims();
        x + self.pos_embed.val().slice([0..1, 1..l + 1, 0..d])
    }

    /// Prepends the class token (with its position embedding) and runs blocks and norm.
    ///
    /// # Shapes
    /// `tokens` `[n, k, d]` -> `[n, 1 + k, d]`.
    pub fn forward_tokens(&self, tokens: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, _, d] = tokens.dims();
        let cls = self.cls_token.val() + self.pos_embed.val().slice([0..1, 0..1, 0..d]);
        let mut x = Tensor::cat(vec![cls.expand([n, 1, d]), tokens], 1); // [n, 1 + k, d]
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.norm.forward(x)
    }

    /// All patches: the plain ViT forward (timm `forward_features`).
    ///
    /// # Shapes
    /// `images` `[n, c, H, W]` -> `[n, 1 + l, d]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        self.forward_tokens(self.embed_patches(images))
    }

    /// Only the patches listed in `ids_keep` (MAE encoder). Their order is the order of
    /// `ids_keep` within each sample.
    ///
    /// # Shapes
    /// `images` `[n, c, H, W]`, `ids_keep` `[n, k]` (patch indices in `0..l`) -> `[n, 1 + k, d]`.
    pub fn forward_kept(&self, images: Tensor<B, 4>, ids_keep: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = self.embed_patches(images); // [n, l, d]
        let [n, _, d] = x.dims();
        let [_, k] = ids_keep.dims();
        let index = ids_keep.reshape([n, k, 1]).expand([n, k, d]);
        self.forward_tokens(x.gather(1, index)) // [n, 1 + k, d]
    }
}

/// MAE `get_2d_sincos_pos_embed(dim, grid, cls_token=True)` as a `[1, 1 + grid^2, dim]` tensor.
///
/// For the patch in row `i`, column `j` (index `i * grid + j`), with `q = dim / 4` and
/// `w_k = 1 / 10000^(k / q)`: columns `[0, q)` are `sin(j w_k)`, `[q, 2q)` `cos(j w_k)`,
/// `[2q, 3q)` `sin(i w_k)`, `[3q, 4q)` `cos(i w_k)` (MAE's meshgrid puts the column
/// coordinate first). Row 0 (class token) is zeros. Computed in f64 like numpy.
pub fn sincos_pos_embed_2d<B: Backend>(
    dim: usize,
    grid: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let table = sincos_pos_embed_2d_values(dim, grid);
    Tensor::from_data(TensorData::new(table, [1, 1 + grid * grid, dim]), device)
}

/// The values of [`sincos_pos_embed_2d`], row-major `[1 + grid^2, dim]`.
pub fn sincos_pos_embed_2d_values(dim: usize, grid: usize) -> Vec<f32> {
    let q = dim / 4;
    let mut table = vec![0f32; (1 + grid * grid) * dim];
    for i in 0..grid {
        for j in 0..grid {
            let row = &mut table[(1 + i * grid + j) * dim..][..dim];
            for k in 0..q {
                let omega = 1.0 / 10000f64.powf(k as f64 / q as f64);
                let (a, b) = (j as f64 * omega, i as f64 * omega);
                row[k] = a.sin() as f32;
                row[q + k] = a.cos() as f32;
                row[2 * q + k] = b.sin() as f32;
                row[3 * q + k] = b.cos() as f32;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;

    type B = Autodiff<Flex>;

    fn tiny() -> VitConfig {
        VitConfig {
            img_size: 8,
            patch_size: 4,
            in_chans: 3,
            embed_dim: 16,
            depth: 2,
            num_heads: 2,
            mlp_ratio: 4.0,
        }
    }

    #[test]
    fn timm_variants_have_timm_shapes() {
        let base = VitConfig::by_name("vit_base_patch16_224").unwrap();
        assert_eq!((base.embed_dim, base.depth, base.num_heads), (768, 12, 12));
        assert_eq!(base.num_patches(), 196);
        let large = VitConfig::vit_large_patch16_224();
        assert_eq!(
            (large.embed_dim, large.depth, large.num_heads),
            (1024, 24, 16)
        );
        assert!(VitConfig::by_name("vit_huge").is_none());
        for name in VitConfig::NAMES {
            assert!(VitConfig::by_name(name).unwrap().check().is_ok());
        }
    }

    #[test]
    fn sincos_table_matches_mae_layout() {
        let (dim, grid) = (8, 3);
        let t = sincos_pos_embed_2d_values(dim, grid);
        assert!(
            t[..dim].iter().all(|&v| v == 0.0),
            "class token row is zero"
        );
        // Patch at row i=2, column j=1; q = 2, omega = [1, 1/100].
        let row = &t[(1 + 2 * grid + 1) * dim..][..dim];
        let expect = [
            1f64.sin(),
            (0.01f64).sin(),
            1f64.cos(),
            (0.01f64).cos(),
            2f64.sin(),
            (0.02f64).sin(),
            2f64.cos(),
            (0.02f64).cos(),
        ];
        for (a, b) in row.iter().zip(expect) {
            assert!((*a as f64 - b).abs() < 1e-6, "{row:?} vs {expect:?}");
        }
    }

    #[test]
    fn patch_embed_equals_a_strided_convolution() {
        let device = Default::default();
        let cfg = tiny();
        let vit = cfg.init::<Flex>(&device);
        let images = Tensor::<Flex, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
        let tokens = vit.patch_embed.forward(images.clone());
        // The same weights as a conv [D, C, P, P].
        let weight = vit
            .patch_embed
            .proj
            .weight
            .val()
            .transpose()
            .reshape([16, 3, 4, 4]);
        let bias = vit.patch_embed.proj.bias.as_ref().unwrap().val();
        let conv = burn::tensor::module::conv2d(
            images,
            weight,
            Some(bias),
            burn::tensor::ops::ConvOptions::new([4, 4], [0, 0], [1, 1], 1),
        ); // [2, 16, 2, 2]
        let conv = conv.reshape([2, 16, 4]).swap_dims(1, 2);
        tokens
            .into_data()
            .assert_approx_eq::<f32>(&conv.into_data(), burn::tensor::Tolerance::default());
    }

    #[test]
    fn forward_and_backward_are_finite() {
        let device = Default::default();
        let vit = tiny().init::<B>(&device);
        let images = Tensor::<B, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
        let out = vit.forward(images);
        assert_eq!(out.dims(), [2, 5, 16]);
        let grads = out.powi_scalar(2).mean().backward();
        let g = vit.blocks[0]
            .attn
            .qkv
            .weight
            .grad(&grads)
            .expect("qkv has a gradient");
        assert!(g.into_data().iter::<f32>().all(f32::is_finite));
    }
}
