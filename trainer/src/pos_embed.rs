//! Resampling a ViT's absolute position embedding to another patch grid, for multi-crop
//! training (DINO's 96-pixel local crops on a 224-pixel model) and fine-tuning at another
//! resolution.
//!
//! [`resample_abs_pos_embed`] equals timm 1.0.31 `resample_abs_pos_embed(num_prefix_tokens=1,
//! interpolation='bicubic')`: the class-token row is kept and the `g x g` grid of the rest is
//! resized as an image with torch `F.interpolate(mode='bicubic', align_corners=False,
//! antialias=...)`. The two torch modes are different filters, and each is done the way that
//! matches it:
//!
//! - **`antialias = false`**: burn's [`interpolate`] with [`InterpolateMode::Bicubic`] and
//!   `align_corners = false`. It is torch's `upsample_bicubic2d` (checked against the golden
//!   values, and by reading the Flex and CubeCL kernels): source coordinate
//!   `(i + 0.5) * in / out - 0.5`, Keys' cubic with `A = -0.75`, four taps with indices
//!   clamped to the border. Autodiff has its backward.
//! - **`antialias = true`**: burn has no antialiased mode, so this is written here as torch's
//!   `_upsample_bicubic2d_aa` (the Pillow filter): for output `i` the centre is
//!   `(i + 0.5) * scale` with `scale = in / out`; the cubic uses `A = -0.5` (Pillow's, not
//!   torch's plain `-0.75`), its support is widened to `2 * max(scale, 1)` and its argument
//!   divided by `scale` when downsampling; taps outside the grid are dropped and the weights
//!   renormalised to sum to 1 (no border clamping). The filter is separable, so each axis
//!   is a `[new, old]` weight matrix built on the host and applied with a matmul: exact,
//!   differentiable and backend-independent.
//!
//! Only square source grids are handled (timm infers the old size as `sqrt(tokens - 1)` too).

use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::error::{Error, Result};

/// Cubic-convolution coefficient of Pillow's bicubic filter, used by torch's antialiased mode.
const AA_CUBIC_A: f64 = -0.5;

/// Half-width of the cubic kernel in source pixels at scale 1.
const CUBIC_SUPPORT: f64 = 2.0;

/// The position embedding `[1, 1 + g*g, d]` (class token first) resampled to a `new_h x new_w`
/// grid, as timm `resample_abs_pos_embed(num_prefix_tokens=1, interpolation='bicubic',
/// antialias=antialias)`.
///
/// Grid tokens are row-major (`row * width + column`) on both sides. As in timm, a square
/// target of the source size returns `pos` unchanged.
///
/// # Shapes
/// - `pos`: `[1, 1 + g*g, d]`
/// - returns `[1, 1 + new_h*new_w, d]`
///
/// # Errors
/// [`Error::Shape`] when `pos` is not `[1, 1 + g*g, d]` for some `g >= 1`, or the new grid
/// is empty.
pub fn resample_abs_pos_embed<B: Backend>(
    pos: Tensor<B, 3>,
    new_h: usize,
    new_w: usize,
    antialias: bool,
) -> Result<Tensor<B, 3>> {
    let [one, tokens, d] = pos.dims();
    let g = tokens.saturating_sub(1).isqrt();
    if one != 1 || g == 0 || g * g + 1 != tokens {
        return Err(Error::Shape {
            what: "position embedding [1, 1 + g*g, d]",
            expected: vec![1, 1 + g.max(1) * g.max(1), d],
            actual: vec![one, tokens, d],
        });
    }
    if new_h == 0 || new_w == 0 {
        return Err(Error::Shape {
            what: "resampled position grid",
            expected: vec![new_h.max(1), new_w.max(1)],
            actual: vec![new_h, new_w],
        });
    }
    if new_h == g && new_w == g {
        return Ok(pos);
    }

    let prefix = pos.clone().slice([0..1, 0..1, 0..d]); // [1, 1, d]
    let grid = pos.slice([0..1, 1..tokens, 0..d]); // [1, g*g, d]
    let grid = if antialias {
        resample_antialiased(grid.reshape([g, g, d]), new_h, new_w).reshape([1, new_h * new_w, d])
    } else {
        let image = grid.reshape([1, g, g, d]).permute([0, 3, 1, 2]); // [1, d, g, g]
        let options = InterpolateOptions::new(InterpolateMode::Bicubic).with_align_corners(false);
        interpolate(image, [new_h, new_w], options) // [1, d, new_h, new_w]
            .permute([0, 2, 3, 1])
            .reshape([1, new_h * new_w, d])
    }; // [1, new_h*new_w, d]
    Ok(Tensor::cat(vec![prefix, grid], 1)) // [1, 1 + new_h*new_w, d]
}

/// Antialiased bicubic resize of a `[h, w, d]` grid, one axis at a time.
///
/// # Shapes
/// - `grid`: `[h, w, d]`
/// - returns `[new_h, new_w, d]`
fn resample_antialiased<B: Backend>(
    grid: Tensor<B, 3>,
    new_h: usize,
    new_w: usize,
) -> Tensor<B, 3> {
    let [h, w, d] = grid.dims();
    let device = grid.device();
    let matrix = |old, new| {
        Tensor::<B, 2>::from_data(TensorData::new(aa_weights(old, new), [new, old]), &device)
    };
    // Rows: [new_h, h] x [h, w*d].
    let grid = matrix(h, new_h).matmul(grid.reshape([h, w * d])); // [new_h, w*d]
    // Columns: bring w to the front, [new_w, w] x [w, new_h*d], and back.
    let grid = grid
        .reshape([new_h, w, d])
        .swap_dims(0, 1)
        .reshape([w, new_h * d]); // [w, new_h*d]
    let grid = matrix(w, new_w).matmul(grid); // [new_w, new_h*d]
    grid.reshape([new_w, new_h, d]).swap_dims(0, 1) // [new_h, new_w, d]
}

/// Pillow's cubic filter (`A = -0.5`) at distance `x`.
fn aa_cubic(x: f64) -> f64 {
    let (a, x) = (AA_CUBIC_A, x.abs());
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// The `[new, old]` weights of torch's antialiased bicubic along one axis
/// (`align_corners = false`), row-major; each row sums to 1.
fn aa_weights(old: usize, new: usize) -> Vec<f32> {
    let scale = old as f64 / new as f64;
    let (support, inv_scale) = if scale >= 1.0 {
        (CUBIC_SUPPORT * scale, 1.0 / scale)
    } else {
        (CUBIC_SUPPORT, 1.0)
    };
    let mut weights = vec![0.0_f32; new * old];
    for (i, row) in weights.chunks_exact_mut(old).enumerate() {
        let center = scale * (i as f64 + 0.5);
        // torch truncates toward zero here, then clamps to the grid.
        let first = ((center - support + 0.5) as i64).max(0) as usize;
        let end = ((center + support + 0.5) as i64).clamp(0, old as i64) as usize;
        let taps: Vec<f64> = (first..end)
            .map(|j| aa_cubic((j as f64 - center + 0.5) * inv_scale))
            .collect();
        let total: f64 = taps.iter().sum();
        if total != 0.0 {
            for (j, tap) in (first..end).zip(taps) {
                row[j] = (tap / total) as f32;
            }
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    #[test]
    fn matches_timm_bicubic_with_and_without_antialias() {
        let g = Golden::load("pos_embed_resample");
        let device = Default::default();
        let pos = g.tensor::<Flex, 3>("in.pos_embed", &device);
        for (h, w) in [(16, 16), (4, 7), (6, 6)] {
            for antialias in [false, true] {
                let name = format!(
                    "out.grid_{h}x{w}{}",
                    if antialias { "_antialias" } else { "" }
                );
                let out = resample_abs_pos_embed(pos.clone(), h, w, antialias).unwrap();
                g.assert_close(&name, out);
            }
        }
    }

    #[test]
    fn same_square_grid_is_identity_and_weights_are_partitions_of_unity() {
        let device = Default::default();
        let pos = Tensor::<Flex, 3>::random(
            [1, 1 + 5 * 5, 8],
            burn::tensor::Distribution::Default,
            &device,
        );
        let same = resample_abs_pos_embed(pos.clone(), 5, 5, true).unwrap();
        same.into_data().assert_eq(&pos.into_data(), true);
        for (old, new) in [(14, 4), (14, 7), (14, 16), (3, 40)] {
            for row in aa_weights(old, new).chunks_exact(old) {
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-6, "{old}->{new}: row sums to {sum}");
            }
        }
    }

    #[test]
    fn both_modes_are_differentiable() {
        let device = Default::default();
        let pos = Tensor::<B, 3>::ones([1, 1 + 4 * 4, 3], &device).require_grad();
        for antialias in [false, true] {
            let out = resample_abs_pos_embed(pos.clone(), 2, 3, antialias).unwrap();
            assert_eq!(out.dims(), [1, 1 + 2 * 3, 3]);
            let grads = out.sum().backward();
            let grad = pos.grad(&grads).unwrap();
            assert_eq!(grad.dims(), [1, 17, 3]);
            // Every output is a weighted average (weights sum to 1): total gradient = outputs.
            let total = grad.sum().into_scalar();
            assert!(
                (total - 21.0).abs() < 1e-4,
                "antialias {antialias}: {total}"
            );
        }
    }

    #[test]
    fn rejects_non_square_source() {
        let device = Default::default();
        let pos = Tensor::<Flex, 3>::zeros([1, 1 + 12, 4], &device);
        let err = resample_abs_pos_embed(pos, 4, 4, false).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }));
    }
}
