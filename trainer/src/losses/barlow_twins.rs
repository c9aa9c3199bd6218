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

/// [`barlow_twins`] over the global batch of a data-parallel run, as one process with all
/// ranks' rows would compute it: the standardisation uses every rank's mean and variance
/// (one all-reduce of `[sum z, sum z^2, count]` per view) and `c` sums every rank's
/// `bn(z1)^T bn(z2)` before dividing by the global `N` (a second all-reduce). Every rank
/// gets the same loss. `all_reduce` is a differentiable sum over the ranks
/// ([`crate::objectives::StepContext::all_reduce_sum`]); `None` alone, which is
/// [`barlow_twins`] itself.
///
/// # Shapes
/// `z1`, `z2`: `[n, d]`; returns the loss `[1]` and `c` `[d, d]`.
pub fn barlow_twins_global<B: Backend>(
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
    lambda: f64,
    all_reduce: Option<&dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>>,
) -> (Tensor<B, 1>, Tensor<B, 2>) {
    let Some(all_reduce) = all_reduce else {
        return barlow_twins(z1, z2, lambda);
    };
    let [n, d] = z1.dims();
    let device = z1.device();
    let stats = Tensor::cat(
        vec![
            z1.clone().sum_dim(0),
            z1.clone().square().sum_dim(0),
            z2.clone().sum_dim(0),
            z2.clone().square().sum_dim(0),
            Tensor::full([1, d], n as f64, &device),
        ],
        0,
    ); // [5, d]
    let stats = all_reduce(stats); // [5, d]
    let count = stats.clone().slice(4..5); // [1, d], every entry the global N
    let standardise = |z: Tensor<B, 2>, row: usize| {
        let mean = stats.clone().slice(row..row + 1) / count.clone(); // [1, d]
        let var = (stats.clone().slice(row + 1..row + 2) / count.clone() - mean.clone().square())
            .clamp_min(0.0); // [1, d], biased
        (z - mean) / var.add_scalar(BATCH_NORM_EPS).sqrt() // [n, d]
    };
    let c = all_reduce(standardise(z1, 0).transpose().matmul(standardise(z2, 2))) // [d, d]
        / count.clone().transpose(); // row i over N: [d, 1] broadcast
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

    /// With a sum over one "rank" (the identity) the global form computes the same loss
    /// through its own arithmetic (`E[z^2] - mean^2`, a summed `c`).
    #[test]
    fn the_global_form_alone_is_the_loss() {
        let golden = Golden::load("barlow_twins");
        let x = inputs(&golden);
        let (z1, z2) = (x["z1"].clone(), x["z2"].clone());
        let lambda = golden.param("lambda");
        let one = barlow_twins::<B>(z1.clone(), z2.clone(), lambda)
            .0
            .into_scalar();
        let identity = |t: Tensor<B, 2>| t;
        let global = barlow_twins_global::<B>(z1, z2, lambda, Some(&identity))
            .0
            .into_scalar();
        assert!(
            (one - global).abs() <= 1e-4 * one.abs().max(1.0),
            "{one} vs {global}"
        );
    }
}
