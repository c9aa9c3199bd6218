//! The predictor-versus-target cosine losses of BYOL (Grill et al. 2020, "Bootstrap Your
//! Own Latent", Algorithm 1) and SimSiam (Chen and He 2021, "Exploring Simple Siamese
//! Representation Learning", Algorithm 1).
//!
//! BYOL, in words: for each view, the online network's prediction `p` of one view regresses
//! the target network's projection `z` of the other: `2 - 2 cos(p, z)` (the squared distance
//! of the normalised vectors), averaged over the batch; the two directions are summed:
//! `mean(2 - 2 cos(p1, z2)) + mean(2 - 2 cos(p2, z1))`. Matches deepmind byol
//! `byol_experiment.py` `regression_loss` (golden `byol`).
//!
//! SimSiam, in words: the negative cosine similarity of each prediction with the other
//! view's projection under stop-gradient, averaged over the batch, the two directions
//! averaged: `-(mean cos(p1, sg(z2)) + mean cos(p2, sg(z1))) / 2`. Matches
//! facebookresearch/simsiam `main_simsiam.py` with `CosineSimilarity(dim=1)` (golden
//! `simsiam`).
//!
//! In both, `z` carries no gradient (BYOL: a target network; SimSiam: stop-gradient): the
//! functions detach it.

use burn::tensor::{Tensor, backend::Backend};

use super::normalize;

/// Row-wise cosine similarity of `p` with the detached `z`.
///
/// # Shapes
/// `p`, `z`: `[n, d]`; returns `[n]`.
fn cosine_to_target<B: Backend>(p: Tensor<B, 2>, z: Tensor<B, 2>) -> Tensor<B, 1> {
    (normalize(p, 1) * normalize(z.detach(), 1))
        .sum_dim(1)
        .squeeze_dim(1)
}

/// The symmetric BYOL loss `mean(2 - 2 cos(p1, z2)) + mean(2 - 2 cos(p2, z1))`.
///
/// `p1`, `p2`: the online predictions of views 1 and 2; `z1`, `z2`: the target projections
/// of views 1 and 2 (detached here).
///
/// # Shapes
/// All `[n, d]`; returns `[1]`.
///
/// # Panics
/// When the shapes differ.
pub fn byol<B: Backend>(
    p1: Tensor<B, 2>,
    p2: Tensor<B, 2>,
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let regression = |p, z| {
        cosine_to_target(p, z)
            .mul_scalar(-2.0)
            .add_scalar(2.0)
            .mean()
    };
    regression(p1, z2) + regression(p2, z1)
}

/// The symmetric SimSiam loss `-(mean cos(p1, sg(z2)) + mean cos(p2, sg(z1))) / 2`.
///
/// `p1`, `p2`: the predictions of views 1 and 2; `z1`, `z2`: the projections of views 1
/// and 2 (stop-gradient: detached here).
///
/// # Shapes
/// All `[n, d]`; returns `[1]`.
///
/// # Panics
/// When the shapes differ.
pub fn simsiam<B: Backend>(
    p1: Tensor<B, 2>,
    p2: Tensor<B, 2>,
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
) -> Tensor<B, 1> {
    (cosine_to_target(p1, z2).mean() + cosine_to_target(p2, z1).mean()).mul_scalar(-0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use crate::losses::check::{B, inputs, loss_and_grads};

    /// `byol` or `simsiam` on the test backend.
    type PairLoss = fn(Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) -> Tensor<B, 1>;

    fn check(case: &str, loss: PairLoss) {
        let golden = Golden::load(case);
        let x = inputs(&golden);
        let value = loss(
            x["p1"].clone(),
            x["p2"].clone(),
            x["z1"].clone(),
            x["z2"].clone(),
        );
        loss_and_grads(&golden, value, &x);
    }

    #[test]
    fn byol_matches_the_paper() {
        check("byol", byol);
    }

    #[test]
    fn simsiam_matches_the_official_code() {
        check("simsiam", simsiam);
    }
}
