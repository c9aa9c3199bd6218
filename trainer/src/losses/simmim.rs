//! SimMIM's reconstruction loss (Xie et al. 2022, `models/simmim.py` `SimMIM.forward`): L1
//! between the image and its reconstruction on the masked patches' pixels only.
//!
//! ```text
//! mask_px = mask repeated patch_size times along rows and columns    [B, 1, H, W]
//! loss    = sum(|x - x_rec| * mask_px) / (sum(mask_px) + 1e-5) / channels
//! ```
//!
//! The pixel count excludes channels, hence the division by `channels`: the loss is the mean
//! absolute error per masked pixel value. The `1e-5` keeps an all-visible mask at 0, not NaN.
//! The target `x` carries no gradient.

use burn::tensor::{Tensor, backend::Backend};

use crate::error::{Error, Result};

/// Added to the masked pixel count, as the reference does.
const COUNT_EPS: f64 = 1e-5;

/// The SimMIM L1 loss as a `[1]` tensor.
///
/// # Shapes
/// - `x`, `x_rec`: `[B, C, H, W]`, the (normalised) image and the decoder's reconstruction
/// - `mask`: `[B, H/p, W/p]`, 1 = masked (hidden from the encoder, reconstructed), 0 = visible
///
/// # Errors
/// [`Error::Shape`] when `x_rec` differs from `x` or `mask` is not `[B, H/p, W/p]`.
pub fn simmim<B: Backend>(
    x: Tensor<B, 4>,
    x_rec: Tensor<B, 4>,
    mask: Tensor<B, 3>,
    patch_size: usize,
) -> Result<Tensor<B, 1>> {
    let [b, c, h, w] = x.dims();
    let grid = [b, h / patch_size.max(1), w / patch_size.max(1)];
    let shape_err = |what, expected: &[usize], actual: &[usize]| Error::Shape {
        what,
        expected: expected.to_vec(),
        actual: actual.to_vec(),
    };
    if x_rec.dims() != [b, c, h, w] {
        return Err(shape_err("simmim x_rec", &[b, c, h, w], &x_rec.dims()));
    }
    if patch_size == 0 || h % patch_size != 0 || w % patch_size != 0 || mask.dims() != grid {
        return Err(shape_err("simmim mask", &grid, &mask.dims()));
    }
    let [_, gh, gw] = grid;

    // Patch mask to pixels: each cell repeated patch_size times down and across.
    let mask = mask
        .detach()
        .reshape([b, gh, 1, gw, 1])
        .expand([b, gh, patch_size, gw, patch_size])
        .reshape([b, 1, h, w]); // [B, 1, H, W]
    let l1 = (x.detach() - x_rec).abs(); // [B, C, H, W]
    let masked_sum = (l1 * mask.clone()).sum(); // [1]
    Ok(masked_sum / (mask.sum() + COUNT_EPS) / c as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    #[test]
    fn matches_reference_loss_and_gradient() {
        let g = Golden::load("simmim");
        let device = Default::default();
        let x = g.tensor::<B, 4>("in.x", &device);
        let x_rec = g.tensor::<B, 4>("in.x_rec", &device).require_grad();
        let mask = g.int_tensor::<B, 3>("out.mask", &device).float(); // 1 = masked

        let loss = simmim(x, x_rec.clone(), mask, g.param("patch") as usize).unwrap();
        g.assert_close("out.loss", loss.clone());
        let grads = loss.backward();
        g.assert_close("grad.x_rec", x_rec.grad(&grads).unwrap());
    }

    #[test]
    fn rejects_mask_of_wrong_grid() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::zeros([2, 3, 32, 32], &device);
        let err = simmim(x.clone(), x, Tensor::zeros([2, 8, 8], &device), 8).unwrap_err();
        assert!(matches!(
            err,
            Error::Shape {
                what: "simmim mask",
                ..
            }
        ));
    }
}
