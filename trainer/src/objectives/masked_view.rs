//! What the masked-image methods (SimMIM, data2vec, MSN) share: finding the masked views
//! in a recipe and checking them against the ViT, taking a view and its mask out of a
//! batch, and the ViT forward over kept patches at any view size.
//!
//! Mask polarity everywhere: **1 = masked** (replaced by the mask token, or removed, and
//! predicted), 0 = visible, on the row-major patch grid of the view.

use burn::tensor::{Int, Tensor, backend::Backend};
use tessera_pipeline::masks::MaskSpec;

use super::ResolveContext;
use crate::backbone::BackboneConfig;
use crate::error::{Error, Result};
use crate::feeder::{DeviceBatch, DeviceMask};
use crate::vit::{Vit, VitConfig};

/// The ViT the recipe's `[model]` describes, or an error naming `method`.
pub fn vit_config<'a>(ctx: &ResolveContext<'a>, method: &str) -> Result<&'a VitConfig> {
    match ctx.backbone {
        BackboneConfig::Vit(vit) => Ok(vit),
        other => Err(Error::config(
            "model",
            "arch",
            format!(
                "{method} needs a ViT encoder (`vit_*`), not `{}`",
                other.arch_name().unwrap_or("this backbone")
            ),
        )),
    }
}

/// The side in pixels of one cell of the mask's output grid (the model patch it masks).
pub fn mask_patch(spec: &MaskSpec) -> usize {
    match spec {
        MaskSpec::Random { patch_size, .. } | MaskSpec::Block { patch_size, .. } => {
            *patch_size as usize
        }
        MaskSpec::Simmim {
            model_patch_size, ..
        } => *model_patch_size as usize,
    }
}

/// A masked view of the recipe, checked against the ViT.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedView {
    /// Index of the view in the batch.
    pub index: usize,
    /// Side of the view in pixels.
    pub size: usize,
    /// The mask.
    pub mask: MaskSpec,
}

/// Every view of the recipe with its mask (`None` for unmasked views), in batch order.
pub fn views(ctx: &ResolveContext<'_>) -> Vec<(usize, Option<MaskSpec>)> {
    let recipe = ctx.recipe;
    recipe
        .view_instances()
        .iter()
        .map(|v| {
            let spec = &recipe.views[v.spec];
            (spec.size as usize, spec.mask.clone())
        })
        .collect()
}

/// Checks that the mask of view `index` masks the ViT's own patches.
pub fn check_mask_grid(view: &MaskedView, vit: &VitConfig) -> Result<()> {
    let patch = mask_patch(&view.mask);
    if patch != vit.patch_size {
        return Err(Error::config(
            "model",
            "patch_size",
            format!(
                "{} differs from the mask's patch size {patch} (view {}): the mask must be \
                 drawn on the encoder's patch grid",
                vit.patch_size, view.index
            ),
        ));
    }
    Ok(())
}

/// The recipe's single view, which must carry a mask of one of `kinds` (the `kind` names
/// of `[views.mask]`), on the ViT's patch grid.
pub fn single_masked_view(
    ctx: &ResolveContext<'_>,
    method: &str,
    kinds: &[&str],
) -> Result<MaskedView> {
    let vit = vit_config(ctx, method)?;
    ctx.require_views(method, 1)?;
    let (size, mask) = views(ctx).swap_remove(0);
    let Some(mask) = mask.filter(|m| kinds.contains(&kind(m))) else {
        return Err(Error::config(
            "views",
            "mask",
            format!(
                "{method} needs its view masked: add [views.mask] with kind = {}",
                kinds
                    .iter()
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        ));
    };
    let view = MaskedView {
        index: 0,
        size,
        mask,
    };
    check_mask_grid(&view, vit)?;
    Ok(view)
}

/// The `kind` name of a mask, as recipes write it.
pub fn kind(spec: &MaskSpec) -> &'static str {
    match spec {
        MaskSpec::Random { .. } => "random",
        MaskSpec::Block { .. } => "block",
        MaskSpec::Simmim { .. } => "simmim",
    }
}

/// Refuses recipe keys that are derived from the views (`set` says which were given).
pub fn reject_derived(keys: &[(&str, bool)]) -> Result<()> {
    match keys.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(Error::config(
            "objective",
            *key,
            "is derived from the views ([[views]], [views.mask]); not a recipe key",
        )),
        None => Ok(()),
    }
}

/// View `index` of the batch and its mask.
pub fn take_masked<B: Backend>(
    batch: &mut DeviceBatch<B>,
    index: usize,
) -> Result<(Tensor<B, 4>, DeviceMask<B>)> {
    let views = batch.views.len();
    let mask = batch.masks.get_mut(index).and_then(Option::take);
    match (batch.views.get(index), mask) {
        (Some(images), Some(mask)) => Ok((images.clone(), mask)),
        _ => Err(Error::Shape {
            what: "masked view",
            expected: vec![index + 1],
            actual: vec![views],
        }),
    }
}

/// The patch mask as the loss's grid.
///
/// # Shapes
/// `mask` `[n, l]` -> `[n, h / p, w / p]` for views `[n, c, h, w]` and patch side `p`.
pub fn mask_grid<B: Backend>(mask: Tensor<B, 2>, h: usize, w: usize, p: usize) -> Tensor<B, 3> {
    let [n, _] = mask.dims(); // [n, l]
    mask.reshape([n, h / p, w / p])
}

/// The class token after the final norm of the encoder run over the kept patches only
/// (MSN's patch dropping, MAE's encoder), at any view size: the position embedding is
/// resampled (bicubic, antialiased: timm's `resample_abs_pos_embed`, as `h/dino`'s `Vit::pos_embed_for`) when the view's grid is not the model's.
///
/// # Shapes
/// `images` `[n, c, h, w]`, `ids_keep` `[n, k]` (patch indices in `0..l`) -> `[n, d]`.
pub fn forward_kept_cls<B: Backend>(
    vit: &Vit<B>,
    images: Tensor<B, 4>,
    ids_keep: Tensor<B, 2, Int>,
) -> Result<Tensor<B, 2>> {
    let [n, _, h, w] = images.dims();
    let p = vit.patch_embed.patch_size;
    let [_, tokens, d] = vit.pos_embed.dims();
    let tokens = if (h / p) * (w / p) + 1 == tokens && h == w {
        vit.forward_kept(images, ids_keep) // [n, 1 + k, d]
    } else {
        let x = vit.patch_embed.forward(images); // [n, l, d]
        let [_, l, _] = x.dims();
        let pos =
            crate::pos_embed::resample_abs_pos_embed(vit.pos_embed.val(), h / p, w / p, true)?;
        let x = x + pos.slice([0..1, 1..l + 1, 0..d]); // [n, l, d]
        vit.forward_tokens(crate::vit::gather_tokens(x, ids_keep)) // [n, 1 + k, d]
    };
    Ok(tokens.narrow(1, 0, 1).reshape([n, d]))
}
