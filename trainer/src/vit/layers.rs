//! The ViT's layers: patch embedding, attention, MLP and the pre-norm block, with MAE's
//! initialisation helpers. Field names are timm's (`qkv`, `proj`, `fc1`, `fc2`, `norm1`, ...).

use burn::module::{Initializer, Module};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Tensor, backend::Backend};

use super::LAYER_NORM_EPS;
use crate::precision::{Precision, to_f32};

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

/// A block of width `d` with MAE's initialisation.
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
        let p = self.precision;
        let (q, k, v) = (
            self.head_part(&x, 0),
            self.head_part(&x, 1),
            self.head_part(&x, 2),
        );
        let out = p.attention(q, k, v); // [b, h, l, dh]
        to_f32(p.linear(&self.proj, out.swap_dims(1, 2).reshape([b, l, d])))
    }

    /// q (`part` 0), k (1) or v (2) split into heads, from the `qkv` layer's columns
    /// `part · D..(part + 1) · D` (`(q|k|v, head, head_dim)`, timm's order).
    ///
    /// # Shapes
    /// `x` `[b, l, d]` -> `[b, h, l, dh]`.
    fn head_part(&self, x: &Tensor<B, 3>, part: usize) -> Tensor<B, 4> {
        let [b, l, d] = x.dims();
        let h = self.num_heads;
        self.precision
            .linear_columns(&self.qkv, x.clone(), part * d, d)
            .reshape([b, l, h, d / h])
            .swap_dims(1, 2)
    }

    /// The attention weights `softmax(q kᵀ / sqrt(d_head))`, in f32 (what DINO draws).
    ///
    /// # Shapes
    /// `x` `[b, l, d]` -> `[b, heads, l, l]`, each row summing to 1.
    pub fn weights(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let dh = x.dims()[2] / self.num_heads;
        let (q, k) = (self.head_part(&x, 0), self.head_part(&x, 1));
        let scores = to_f32(q).matmul(to_f32(k).swap_dims(2, 3)); // [b, h, l, l]
        softmax(scores * (dh as f64).powf(-0.5), 3)
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

    /// The block with each residual branch multiplied per sample by a scale (stochastic
    /// depth: 0 drops the branch, `1 / keep_prob` keeps it; see [`super::DropPath`]).
    ///
    /// # Shapes
    /// `x` `[b, l, d]`, `attn_scale` and `mlp_scale` `[b, 1, 1]` -> `[b, l, d]`.
    pub fn forward_scaled(
        &self,
        x: Tensor<B, 3>,
        attn_scale: Tensor<B, 3>,
        mlp_scale: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x)) * attn_scale;
        x.clone() + self.mlp.forward(self.norm2.forward(x)) * mlp_scale
    }

    /// Sets the matmul precision of the attention and the MLP.
    pub fn set_precision(&mut self, precision: Precision) {
        self.attn.precision = precision;
        self.mlp.precision = precision;
    }
}
