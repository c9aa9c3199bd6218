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
//!
//! Parts: [`VitConfig`] and [`Vit`] here; the layers in `layers.rs`; the sin-cos table in
//! `sincos.rs`; the token API of the multi-crop and masked methods in `tokens.rs`
//! ([`Vit::forward_all_tokens`] at any multiple of the patch size, [`MaskTokens`],
//! [`Vit::forward_with_blocks`], [`Vit::last_attention`]); stochastic depth in
//! `drop_path.rs` ([`DropPath`]).

use burn::module::{Initializer, Module, Param, ParamId};
use burn::nn::LayerNorm;
use burn::tensor::{Int, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::precision::Precision;

mod drop_path;
mod layers;
mod sincos;
#[cfg(test)]
mod tests;
mod tokens;

pub use drop_path::DropPath;
pub use layers::{Attention, Block, Mlp, PatchEmbed};
pub(crate) use layers::{check_width, init_block, init_layer_norm, init_linear};
pub use sincos::{sincos_pos_embed_2d, sincos_pos_embed_2d_values};
pub use tokens::MaskTokens;

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
    /// Stochastic depth (timm `drop_path_rate`): the rate of dropping a residual branch
    /// rises linearly over the blocks from 0 to this. Default 0 (none; MAE); DINO ViT-S 0.1.
    /// Applies only where a forward is given a [`DropPath`]. Must be in `[0, 1)`.
    #[serde(default)]
    pub drop_path_rate: f64,
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
            drop_path_rate: 0.0,
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
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return Err((
                "drop_path_rate",
                format!("{} must be in [0, 1)", self.drop_path_rate),
            ));
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
            drop_path_rate: self.drop_path_rate,
        }
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
    /// Stochastic-depth rate of the last block (see [`VitConfig::drop_path_rate`]); not saved.
    pub drop_path_rate: f64,
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
            drop_path_rate: self.drop_path_rate,
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
        self.forward_tokens(gather_tokens(x, ids_keep)) // [n, 1 + k, d]
    }
}

/// The tokens `index[i]` of each sample `i`, in that order: `x.gather(1, index)` with the
/// index repeated over the channels, done as a `select` of rows of `x` seen as `[n · l, d]`.
/// Each token is then one row copy forward and one row sum backward, where burn-flex's
/// `gather` computes a source index per element and its backward scatters per element.
///
/// # Shapes
/// `x` `[n, l, d]`, `index` `[n, k]` (token indices in `0..l`) -> `[n, k, d]`.
pub fn gather_tokens<B: Backend>(x: Tensor<B, 3>, index: Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let [n, l, d] = x.dims();
    let [_, k] = index.dims();
    let first_row = Tensor::<B, 1, Int>::arange(0..n as i64, &index.device())
        .mul_scalar(l as i64)
        .reshape([n, 1]);
    let rows = (index + first_row).reshape([n * k]);
    x.reshape([n * l, d]).select(0, rows).reshape([n, k, d])
}
