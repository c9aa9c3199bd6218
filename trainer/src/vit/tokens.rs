//! The token-level ViT API of the multi-crop and masked methods (DINO, iBOT, SimMIM,
//! data2vec, MSN): every token for images of any size that is a multiple of the patch,
//! learnable mask tokens, stochastic depth, per-block outputs and the last attention map.
//!
//! ```text
//! images [n, c, H, W] ─► patch_embed ─► [n, l, d] ─(mask: 1 ─► token)─► + pos_embed resampled
//!   to (H/p, W/p) ─► cat class token ─► blocks (drop path) ─► norm ─► [n, 1 + l, d]
//! ```
//!
//! The position table is resampled only when the grid differs from the model's, with timm's
//! `resample_abs_pos_embed` (bicubic, antialiased: timm's default and what its ViT does with
//! `dynamic_img_size`; [`crate::pos_embed`] is checked against timm). DINO's own code
//! resizes with plain bicubic and a `+0.1` scale offset; the two differ only in the filter.

use burn::module::{Initializer, Param};
use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::{DropPath, Vit};
use crate::pos_embed::resample_abs_pos_embed;

/// Mask tokens for masked image modelling: where `mask` is 1 the patch embedding is replaced
/// by `token` before the position embedding is added (iBOT, SimMIM, data2vec).
///
/// # Shapes
/// `mask` `[n, l]` (1 = masked, replaced; 0 = visible), `token` `[1, 1, d]`.
#[derive(Debug, Clone)]
pub struct MaskTokens<B: Backend> {
    /// 1 = masked (the patch is replaced by `token`), 0 = visible. # Shapes `[n, l]`.
    pub mask: Tensor<B, 2>,
    /// The learnable mask token. # Shapes `[1, 1, d]`.
    pub token: Tensor<B, 3>,
}

impl<B: Backend> MaskTokens<B> {
    /// A learnable mask token of width `d`, drawn from N(0, 0.02^2) (SimMIM's and data2vec's
    /// initialisation).
    ///
    /// # Shapes
    /// returns `[1, 1, d]`.
    pub fn init_token(d: usize, device: &B::Device) -> Param<Tensor<B, 3>> {
        Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        }
        .init([1, 1, d], device)
    }
}

impl<B: Backend> Vit<B> {
    /// The last layer's patch tokens (class token dropped) with the `mask`ed patches replaced
    /// by `token` at the input: what SimMIM's and data2vec's heads read.
    ///
    /// # Shapes
    /// `images` `[n, c, H, W]`, `mask` `[n, l]` (1 = masked), `token` `[1, 1, d]` ->
    /// `[n, l, d]`.
    pub fn forward_masked_patches(
        &self,
        images: Tensor<B, 4>,
        mask: Tensor<B, 2>,
        token: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let z = self.forward_all_tokens(images, Some(MaskTokens { mask, token }), None); // [n, 1 + l, d]
        let [n, t, d] = z.dims();
        z.slice([0..n, 1..t, 0..d]) // [n, l, d]
    }

    /// The position table for a `grid_h x grid_w` patch grid, class-token row first: the
    /// model's own when the grid is its own, else resampled (see the module docs).
    ///
    /// # Shapes
    /// returns `[1, 1 + grid_h * grid_w, d]`.
    ///
    /// # Panics
    /// If a side is 0.
    pub fn pos_embed_for(&self, grid_h: usize, grid_w: usize) -> Tensor<B, 3> {
        resample_abs_pos_embed(self.pos_embed.val(), grid_h, grid_w, true)
            .unwrap_or_else(|e| panic!("position table for a {grid_h}x{grid_w} grid: {e}"))
    }

    /// Patch tokens (mask tokens swapped in) plus the class token, with position embeddings.
    ///
    /// # Shapes
    /// `images` `[n, c, H, W]` -> `[n, 1 + (H/p)(W/p), d]`.
    pub(super) fn embed_all(
        &self,
        images: Tensor<B, 4>,
        mask: Option<MaskTokens<B>>,
    ) -> Tensor<B, 3> {
        let [n, _, height, width] = images.dims();
        let p = self.patch_embed.patch_size;
        assert!(
            height >= p && width >= p && height.is_multiple_of(p) && width.is_multiple_of(p),
            "a {height}x{width} image is not a positive multiple of the patch size {p}"
        );
        let mut x = self.patch_embed.forward(images); // [n, l, d]
        let [_, l, d] = x.dims();
        if let Some(MaskTokens { mask, token }) = mask {
            let w = mask.reshape([n, l, 1]).expand([n, l, d]); // 1 = masked
            x = x * (w.clone().neg() + 1.0) + token.expand([n, l, d]) * w; // [n, l, d]
        }
        let pos = self.pos_embed_for(height / p, width / p); // [1, 1 + l, d]
        let x = x + pos.clone().slice([0..1, 1..l + 1, 0..d]);
        let cls = self.cls_token.val() + pos.slice([0..1, 0..1, 0..d]); // [1, 1, d]
        Tensor::cat(vec![cls.expand([n, 1, d]), x], 1) // [n, 1 + l, d]
    }

    /// The blocks over `x`, with drop path when the model has a rate and `drop_path` is
    /// given; `keep` collects every block's output.
    ///
    /// # Shapes
    /// `x` `[n, t, d]` -> `[n, t, d]` (before the final norm).
    fn run_blocks(
        &self,
        mut x: Tensor<B, 3>,
        drop_path: Option<&DropPath>,
        mut keep: Option<&mut Vec<Tensor<B, 3>>>,
    ) -> Tensor<B, 3> {
        let [n, _, _] = x.dims();
        let depth = self.blocks.len();
        let drop_path = drop_path.filter(|_| self.drop_path_rate > 0.0);
        if let Some(dp) = drop_path {
            assert!(
                dp.depth() == depth && dp.batch() == n,
                "drop-path draws for {} blocks x {} samples, the forward has {depth} x {n}",
                dp.depth(),
                dp.batch()
            );
        }
        let device = x.device();
        let scale = |dp: &DropPath, block: usize, branch: usize| {
            let rate = DropPath::block_rate(self.drop_path_rate, depth, block);
            let values = dp.scales(block, branch, rate);
            Tensor::<B, 3>::from_data(TensorData::new(values, [n, 1, 1]), &device)
        };
        for (i, block) in self.blocks.iter().enumerate() {
            x = match drop_path {
                Some(dp) if DropPath::block_rate(self.drop_path_rate, depth, i) > 0.0 => {
                    block.forward_scaled(x, scale(dp, i, 0), scale(dp, i, 1))
                }
                _ => block.forward(x),
            };
            if let Some(outputs) = keep.as_deref_mut() {
                outputs.push(x.clone());
            }
        }
        x
    }

    /// All tokens after the final norm, class token first, for images of any size that is a
    /// multiple of the patch size: the position embedding is resampled bicubically from the
    /// model's grid ([`Vit::pos_embed_for`]) when the grid differs. Drop path (stochastic
    /// depth) applies when the model was built with `drop_path_rate > 0` and `drop_path`
    /// gives the per-sample keep draws.
    ///
    /// # Shapes
    /// `images` `[n, c, H, W]`, `mask` `[n, (H/p)(W/p)]` -> `[n, 1 + (H/p)(W/p), d]`.
    ///
    /// # Panics
    /// If `H` or `W` is not a positive multiple of the patch size, or `drop_path` was drawn
    /// for another depth or batch.
    pub fn forward_all_tokens(
        &self,
        images: Tensor<B, 4>,
        mask: Option<MaskTokens<B>>,
        drop_path: Option<&DropPath>,
    ) -> Tensor<B, 3> {
        let x = self.embed_all(images, mask); // [n, 1 + l, d]
        self.norm.forward(self.run_blocks(x, drop_path, None))
    }

    /// [`Vit::forward_all_tokens`], also returning each block's output before the final norm
    /// (data2vec's targets), first block first.
    ///
    /// # Shapes
    /// `images` `[n, c, H, W]` -> (`[n, 1 + l, d]`, `depth` x `[n, 1 + l, d]`).
    ///
    /// # Panics
    /// As [`Vit::forward_all_tokens`].
    pub fn forward_with_blocks(
        &self,
        images: Tensor<B, 4>,
        mask: Option<MaskTokens<B>>,
        drop_path: Option<&DropPath>,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let x = self.embed_all(images, mask); // [n, 1 + l, d]
        let mut outputs = Vec::with_capacity(self.blocks.len());
        let x = self.run_blocks(x, drop_path, Some(&mut outputs));
        (self.norm.forward(x), outputs)
    }

    /// The last block's attention, softmaxed (what `tessera attention` draws; DINO
    /// `get_last_selfattention`), for images of any multiple of the patch size.
    ///
    /// # Shapes
    /// `images` `[n, c, H, W]` -> `[n, heads, 1 + l, 1 + l]`, rows summing to 1.
    ///
    /// # Panics
    /// As [`Vit::forward_all_tokens`]; also for a ViT without blocks.
    pub fn last_attention(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut x = self.embed_all(images, None); // [n, 1 + l, d]
        let (last, rest) = self
            .blocks
            .split_last()
            .expect("a ViT has at least one block");
        for block in rest {
            x = block.forward(x);
        }
        last.attn.weights(last.norm1.forward(x)) // [n, heads, 1 + l, 1 + l]
    }
}
