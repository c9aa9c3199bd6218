//! Multi-crop forward for backbones that pool (ResNet, RegNetY): one backbone pass per
//! resolution, as SwAV's `forward` and DINO's `MultiCropWrapper` do.
//!
//! A multi-crop batch is one tensor per view (`2 x 224 + 6 x 96` for SwAV). Views of one
//! size that sit next to each other are concatenated along the batch and go through the
//! backbone together; the pooled features of every group are concatenated back in view
//! order. BatchNorm in training mode therefore normalises each resolution over all of its
//! views at once, as in the reference code (each group is one `forward` call there too).
//!
//! ```text
//! views [g1, g2, l1, .., l6] ─► groups [g1 ++ g2] (224 px), [l1 ++ .. ++ l6] (96 px)
//!   ─► backbone once per group ─► [2n, F] ++ [6n, F] ─► [8n, F], rows of view v at v n .. (v + 1) n
//! ```
//!
//! The ViT side, with masks and patch tokens, is `multicrop::encode_views`; the grouping
//! (`multicrop::resolution_groups`) is shared. Heads: callers run them on the result.

use burn::tensor::{Tensor, backend::Backend};

use super::multicrop::resolution_groups;
use crate::error::{Error, Result};

/// Runs `forward` once per resolution group on the concatenated views of the group and
/// returns every view's output, concatenated in view order.
///
/// # Shapes
/// - `views`: `V` tensors `[n, c, h_v, w_v]` (one `n` for all)
/// - `forward`: `[m n, c, h, w]` -> `[m n, F]`
/// - returns `[V n, F]`: view `v`'s rows are `v n .. (v + 1) n`
///
/// # Errors
/// [`Error::Shape`] when there are no views or the views differ in batch size or channels.
pub fn forward_by_resolution<B: Backend>(
    views: Vec<Tensor<B, 4>>,
    mut forward: impl FnMut(Tensor<B, 4>) -> Tensor<B, 2>,
) -> Result<Tensor<B, 2>> {
    let Some(first) = views.first() else {
        return Err(Error::Shape {
            what: "multi-crop views (none)",
            expected: vec![1],
            actual: vec![0],
        });
    };
    let [n, c, _, _] = first.dims();
    let mut sizes = Vec::with_capacity(views.len());
    for view in &views {
        let [n_v, c_v, h, w] = view.dims();
        if (n_v, c_v) != (n, c) {
            return Err(Error::Shape {
                what: "multi-crop view [n, c] (every view as the first)",
                expected: vec![n, c],
                actual: vec![n_v, c_v],
            });
        }
        sizes.push([h, w]);
    }
    let groups = resolution_groups(&sizes);
    let mut views = views.into_iter();
    let outputs: Vec<Tensor<B, 2>> = groups
        .iter()
        .map(|group| {
            let members: Vec<Tensor<B, 4>> = views.by_ref().take(group.len()).collect();
            forward(Tensor::cat(members, 0)) // [m n, F]
        })
        .collect();
    Ok(Tensor::cat(outputs, 0)) // [V n, F]
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    use super::*;
    use crate::backbone::{BackboneConfig, NormMode, ResNetConfig};

    type B = Flex;

    /// The grouped pass gives each view the features it gets alone (running statistics, so
    /// that BatchNorm does not depend on the batch), and calls the backbone once per size.
    #[test]
    fn grouped_forward_equals_one_view_at_a_time() {
        let device = Default::default();
        let backbone =
            BackboneConfig::ResNet(ResNetConfig::resnet18().with_cifar_stem()).init::<B>(&device);
        let views: Vec<Tensor<B, 4>> = [16, 16, 8, 8, 8]
            .iter()
            .map(|&side| Tensor::random([3, 3, side, side], Distribution::Default, &device))
            .collect();
        let mut calls = Vec::new();
        let grouped = forward_by_resolution(views.clone(), |x| {
            calls.push(x.dims());
            backbone.forward_features(x, NormMode::Eval)
        })
        .expect("same n and c");
        assert_eq!(calls, vec![[6, 3, 16, 16], [9, 3, 8, 8]]);
        let single: Vec<Tensor<B, 2>> = views
            .into_iter()
            .map(|v| backbone.forward_features(v, NormMode::Eval))
            .collect();
        let single = Tensor::cat(single, 0); // [15, 512]
        assert_eq!(grouped.dims(), [15, 512]);
        let diff = (grouped - single).abs().max().into_scalar();
        assert!(diff < 1e-4, "max difference {diff}");
    }

    #[test]
    fn rejects_mismatched_views() {
        let device = Default::default();
        let a = Tensor::<B, 4>::zeros([2, 3, 8, 8], &device);
        let b = Tensor::<B, 4>::zeros([3, 3, 8, 8], &device);
        let err = forward_by_resolution(vec![a, b], |x| x.flatten(1, 3)).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
        let err = forward_by_resolution::<B>(vec![], |x| x.flatten(1, 3)).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
    }
}
