//! Stand-in for the ViT token API that branch `h/dino` adds to `vit.rs` ("vit:" commit):
//! mask tokens in place of patch embeddings and the per-block outputs. It exists only so
//! that the masked methods (SimMIM, data2vec) build before that commit lands; the merge
//! deletes this file and the methods take the same names from [`crate::vit`].
//!
//! What it does, in SimMIM's order (`VisionTransformerForSimMIM.forward`): embed the
//! patches, replace the masked ones by the mask token, add the position embedding
//! (resampled when the grid differs from the model's), prepend the class token, run the
//! blocks, apply the final norm. Drop path is not implemented here: pass `None`.

use burn::tensor::{Tensor, backend::Backend};

use crate::vit::Vit;

/// Patches to replace by a learned token before the position embedding.
///
/// # Shapes
/// `mask` `[n, l]` (1 = replace the patch embedding by `token`, 0 = keep), `token` `[1, 1, d]`.
#[derive(Debug, Clone)]
pub struct MaskTokens<B: Backend> {
    /// `[n, l]`, 1 = masked.
    pub mask: Tensor<B, 2>,
    /// `[1, 1, d]`.
    pub token: Tensor<B, 3>,
}

/// Placeholder of `h/dino`'s stochastic depth settings (only `None` is passed here).
#[derive(Debug, Clone, Copy)]
pub struct DropPath;

impl<B: Backend> Vit<B> {
    /// Class and patch tokens after the embedding (mask tokens in place), before the blocks.
    fn masked_embedding(&self, images: Tensor<B, 4>, mask: Option<MaskTokens<B>>) -> Tensor<B, 3> {
        let x = self.patch_embed.forward(images.clone()); // [n, l, d]
        let [n, l, d] = x.dims();
        let x = match mask {
            Some(MaskTokens { mask, token }) => {
                let w = mask.reshape([n, l, 1]); // [n, l, 1]
                x * (w.ones_like() - w.clone()) + token.expand([n, l, d]) * w
            }
            None => x,
        };
        let [_, _, height, width] = images.dims();
        let p = self.patch_embed.patch_size;
        let (gh, gw) = (height / p, width / p);
        let pos = self.pos_embed.val(); // [1, 1 + L, d]
        let [_, tokens, _] = pos.dims();
        let pos = if tokens == 1 + gh * gw && gh == gw {
            pos
        } else {
            crate::pos_embed::resample_abs_pos_embed(pos.clone(), gh, gw, true).unwrap_or(pos)
        };
        let x = x + pos.clone().slice([0..1, 1..l + 1, 0..d]);
        let cls = self.cls_token.val() + pos.slice([0..1, 0..1, 0..d]);
        Tensor::cat(vec![cls.expand([n, 1, d]), x], 1) // [n, 1 + l, d]
    }

    /// Every token after the final norm, masked patches replaced by the mask token.
    ///
    /// # Shapes
    /// `images` `[n, c, H, W]` -> `[n, 1 + l, d]`.
    pub fn forward_all_tokens(
        &self,
        images: Tensor<B, 4>,
        mask: Option<MaskTokens<B>>,
        _drop_path: Option<&DropPath>,
    ) -> Tensor<B, 3> {
        self.forward_with_blocks(images, mask, None).0
    }

    /// As [`Vit::forward_all_tokens`], plus each block's output before the final norm.
    ///
    /// # Shapes
    /// `images` `[n, c, H, W]` -> (`[n, 1 + l, d]`, `depth` x `[n, 1 + l, d]`).
    pub fn forward_with_blocks(
        &self,
        images: Tensor<B, 4>,
        mask: Option<MaskTokens<B>>,
        _drop_path: Option<&DropPath>,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let mut x = self.masked_embedding(images, mask);
        let mut outputs = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            x = block.forward(x);
            outputs.push(x.clone());
        }
        (self.norm.forward(x), outputs)
    }
}
