//! The Barlow Twins loss (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
//! Redundancy Reduction", Algorithm 1).
//!
//! In words: standardise each feature of each view over the batch (a BatchNorm without
//! affine parameters: batch mean, biased batch variance, eps `1e-5`); the cross-correlation
//! matrix is `c = bn(z1)^T bn(z2) / N`; the loss pulls its diagonal to one and pushes the
//! rest to zero: `sum_i (1 - c_ii)^2 + lambda * sum_{i != j} c_ij^2`.
//!
//! Matches facebookresearch/barlowtwins `main.py` `BarlowTwins.forward` on one process
//! (`lambda = 0.0051`, golden `barlow_twins`). lightly 1.6.0 `BarlowTwinsLoss` normalises the
//! same way (per view, biased variance, eps `1e-5`; checked on golden `barlow_twins_lightly`)
//! and differs only in its default `lambda = 5e-3`, so it needs no variant here.

use burn::tensor::{Tensor, backend::Backend};

use super::{diagonal, off_diagonal_sum_squares};

/// The epsilon of the feature standardisation (PyTorch `BatchNorm1d` default).
pub const BATCH_NORM_EPS: f64 = 1e-5;

/// Standardises each column over the batch: `(z - mean) / sqrt(var + eps)`, biased variance.
///
/// # Shapes
/// `z`: `[n, d]`; returns `[n, d]`.
fn batch_norm<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 2> {
    let (var, mean) = z.clone().var_mean_bias(0); // [1, d] each
    (z - mean) / var.add_scalar(BATCH_NORM_EPS).sqrt()
}

/// The Barlow Twins loss and the cross-correlation matrix `c` it is computed from (for logs).
///
/// `lambda` weighs the redundancy (off-diagonal) term: the paper's `0.0051`.
///
/// # Shapes
/// `z1`, `z2`: `[n, d]` projections of the two views; returns the loss `[1]` and `c` `[d, d]`.
///
/// # Panics
/// When the shapes differ.
pub fn barlow_twins<B: Backend>(
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
    lambda: f64,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let [n, _d] = z1.dims();
    let c = batch_norm(z1)
        .transpose()
        .matmul(batch_norm(z2))
        .div_scalar(n as f64); // [d, d]
    let on_diagonal = diagonal(c.clone()).sub_scalar(1.0).square().sum();
    let off_diagonal = off_diagonal_sum_squares(c.clone());
    (on_diagonal + off_diagonal.mul_scalar(lambda), c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use crate::losses::check::{B, inputs, loss_and_grads};

    fn check(case: &str) -> (Golden, Tensor<B, 2>) {
        let golden = Golden::load(case);
        let x = inputs(&golden);
        let (loss, c) = barlow_twins::<B>(x["z1"].clone(), x["z2"].clone(), golden.param("lambda"));
        loss_and_grads(&golden, loss, &x);
        (golden, c)
    }

    #[test]
    fn matches_the_official_code() {
        let (golden, c) = check("barlow_twins");
        golden.assert_close("out.cross_correlation", c);
    }

    #[test]
    fn matches_lightly() {
        check("barlow_twins_lightly");
    }
}
