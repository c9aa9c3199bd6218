//! The VICReg loss (Bardes, Ponce and LeCun 2022, "VICReg: Variance-Invariance-Covariance
//! Regularization for Self-Supervised Learning", Algorithm 1).
//!
//! In words, for the projections `z1`, `z2` of two views:
//! - invariance `s`: the mean squared error between `z1` and `z2`;
//! - variance `v`: for each view, the mean over features of `relu(1 - sqrt(var + eps))`
//!   (unbiased batch variance, `eps = 1e-4`), averaged over the two views;
//! - covariance `c`: for each view, the squared off-diagonal entries of the (unbiased)
//!   covariance matrix summed and divided by the width `D`, summed over the two views;
//! - loss `= invariance * s + variance * v + covariance * c` (the paper's `lambda = 25`,
//!   `mu = 25`, `nu = 1`: [`VicRegWeights::default`]).
//!
//! Matches lightly 1.6.0 `VICRegLoss(25, 25, 1, eps=1e-4)`, which equals
//! facebookresearch/vicreg `main_vicreg.py` `VICReg.forward` on one process (golden `vicreg`).

use burn::tensor::{Tensor, activation::relu, backend::Backend};
use serde::{Deserialize, Serialize};

use super::{diagonal, off_diagonal_sum_squares};

/// The epsilon under the square root of the variance term (`1e-4` in the official code).
pub const VICREG_EPS: f64 = 1e-4;

/// The weights of VICReg's three terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VicRegWeights {
    /// `lambda`, the weight of the invariance (mean squared error) term; paper 25.
    pub invariance: f64,
    /// `mu`, the weight of the variance (hinge on the standard deviation) term; paper 25.
    /// Too small and the embeddings collapse to a point.
    pub variance: f64,
    /// `nu`, the weight of the covariance (decorrelation) term; paper 1.
    pub covariance: f64,
}

impl Default for VicRegWeights {
    /// The paper's `lambda = 25`, `mu = 25`, `nu = 1`.
    fn default() -> Self {
        Self {
            invariance: 25.0,
            variance: 25.0,
            covariance: 1.0,
        }
    }
}

/// The VICReg loss and its three unweighted terms (each `[1]`), for the logs.
#[derive(Debug, Clone)]
pub struct VicRegLoss<B: Backend> {
    /// The weighted sum, to backpropagate.
    pub total: Tensor<B, 1>,
    /// `s`: the mean squared error between the views.
    pub invariance: Tensor<B, 1>,
    /// `v`: the standard-deviation hinge, averaged over the two views.
    pub variance: Tensor<B, 1>,
    /// `c`: the off-diagonal covariance penalty, summed over the two views.
    pub covariance: Tensor<B, 1>,
}

/// `mean_j relu(1 - sqrt(var_j(z) + eps))`, unbiased variance over the batch.
///
/// # Shapes
/// `z`: `[n, d]`; returns `[1]`.
fn variance_term<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 1> {
    let std = z.var(0).add_scalar(VICREG_EPS).sqrt(); // [1, d]
    relu(std.neg().add_scalar(1.0)).mean()
}

/// `sum_{i != j} cov(z)_ij^2 / d`, unbiased covariance over the batch.
///
/// # Shapes
/// `z`: `[n, d]`; returns `[1]`.
fn covariance_term<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 1> {
    let [n, d] = z.dims();
    let centred = z.clone() - z.mean_dim(0); // [n, d]
    let cov = centred
        .clone()
        .transpose()
        .matmul(centred)
        .div_scalar((n - 1) as f64); // [d, d]
    off_diagonal_sum_squares(cov).div_scalar(d as f64)
}

impl<B: Backend> VicRegLoss<B> {
    /// The three terms and their weighted sum.
    fn weighted(
        invariance: Tensor<B, 1>,
        variance: Tensor<B, 1>,
        covariance: Tensor<B, 1>,
        weights: VicRegWeights,
    ) -> Self {
        let total = invariance.clone().mul_scalar(weights.invariance)
            + variance.clone().mul_scalar(weights.variance)
            + covariance.clone().mul_scalar(weights.covariance);
        Self {
            total,
            invariance,
            variance,
            covariance,
        }
    }
}

/// The VICReg loss of two views' projections, with its terms.
///
/// # Shapes
/// `z1`, `z2`: `[n, d]` with `n >= 2` (unbiased statistics); the outputs are `[1]`.
///
/// # Panics
/// When the shapes differ.
pub fn vicreg<B: Backend>(
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
    weights: VicRegWeights,
) -> VicRegLoss<B> {
    let invariance = (z1.clone() - z2.clone()).square().mean();
    let variance = (variance_term(z1.clone()) + variance_term(z2.clone())).mul_scalar(0.5);
    let covariance = covariance_term(z1) + covariance_term(z2);
    VicRegLoss::weighted(invariance, variance, covariance, weights)
}

/// [`vicreg`] over the global batch of a data-parallel run, as the official code computes
/// it on all ranks' gathered embeddings: the variance and covariance terms use every
/// rank's rows (one all-reduce of `[sum z1, sum z2, count]`, one of the centred Gram
/// matrices `(z - mean)^T (z - mean)` of both views), so every rank gets the same value;
/// the invariance term is this rank's mean, which averages over the ranks to the global
/// one. `all_reduce` is a differentiable sum over the ranks; `None` alone, which is
/// [`vicreg`] itself.
///
/// # Shapes
/// `z1`, `z2`: `[n, d]`; every term `[1]`.
pub fn vicreg_global<B: Backend>(
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
    weights: VicRegWeights,
    all_reduce: Option<&dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>>,
) -> VicRegLoss<B> {
    let Some(all_reduce) = all_reduce else {
        return vicreg(z1, z2, weights);
    };
    let [n, d] = z1.dims();
    let device = z1.device();
    let invariance = (z1.clone() - z2.clone()).square().mean();
    let sums = all_reduce(Tensor::cat(
        vec![
            z1.clone().sum_dim(0),
            z2.clone().sum_dim(0),
            Tensor::full([1, d], n as f64, &device),
        ],
        0,
    )); // [3, d]
    let count = sums.clone().slice(2..3); // [1, d], every entry the global N
    let centred =
        |z: Tensor<B, 2>, row: usize| z - sums.clone().slice(row..row + 1) / count.clone();
    let (c1, c2) = (centred(z1, 0), centred(z2, 1)); // [n, d] each
    let grams = all_reduce(Tensor::cat(
        vec![
            c1.clone().transpose().matmul(c1),
            c2.clone().transpose().matmul(c2),
        ],
        0,
    )); // [2d, d]
    let unbiased = count.sub_scalar(1.0).transpose(); // [1, d] -> [d, 1]
    let terms = |cov: Tensor<B, 2>| {
        let std = diagonal(cov.clone()).add_scalar(VICREG_EPS).sqrt(); // [d]
        let variance = relu(std.neg().add_scalar(1.0)).mean();
        let covariance = off_diagonal_sum_squares(cov).div_scalar(d as f64);
        (variance, covariance)
    };
    let (v1, k1) = terms(grams.clone().slice(0..d) / unbiased.clone()); // [d, d]
    let (v2, k2) = terms(grams.slice(d..2 * d) / unbiased);
    let variance = (v1 + v2).mul_scalar(0.5);
    let covariance = k1 + k2;
    VicRegLoss::weighted(invariance, variance, covariance, weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use crate::losses::check::{B, inputs, loss_and_grads};

    #[test]
    fn matches_lightly_and_the_official_code() {
        let golden = Golden::load("vicreg");
        assert_eq!(golden.param("eps"), VICREG_EPS);
        let weights = VicRegWeights {
            invariance: golden.param("sim_coeff"),
            variance: golden.param("std_coeff"),
            covariance: golden.param("cov_coeff"),
        };
        assert_eq!(weights, VicRegWeights::default());
        let x = inputs(&golden);
        let loss = vicreg::<B>(x["z1"].clone(), x["z2"].clone(), weights);
        let parts = loss.invariance.into_scalar() * 25.0
            + loss.variance.into_scalar() * 25.0
            + loss.covariance.into_scalar();
        let total = loss.total.clone().into_scalar();
        assert!(
            (parts - total).abs() <= 1e-5 * total.abs(),
            "{parts} vs {total}"
        );
        loss_and_grads(&golden, loss.total, &x);
    }

    /// With a sum over one "rank" (the identity) the global form computes the same terms
    /// through its own arithmetic (global mean, summed Gram matrices).
    #[test]
    fn the_global_form_alone_is_the_loss() {
        let golden = Golden::load("vicreg");
        let x = inputs(&golden);
        let (z1, z2) = (x["z1"].clone(), x["z2"].clone());
        let w = VicRegWeights::default();
        let one = vicreg::<B>(z1.clone(), z2.clone(), w);
        let identity = |t: Tensor<B, 2>| t;
        let global = vicreg_global::<B>(z1, z2, w, Some(&identity));
        for (a, b) in [
            (one.invariance, global.invariance),
            (one.variance, global.variance),
            (one.covariance, global.covariance),
            (one.total, global.total),
        ] {
            let (a, b) = (a.into_scalar(), b.into_scalar());
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
}
