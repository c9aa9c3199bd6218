//! NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020,
//! "A Simple Framework for Contrastive Learning of Visual Representations", eq. 1).
//!
//! In words: L2-normalise the `2N` projections of the two views; take all `2N x 2N` cosine
//! similarities divided by `temperature`; for each row, the positive is the other view of
//! the same image and the negatives are the other `2N - 2` rows (the row itself is left
//! out); the loss is the cross-entropy of picking the positive, averaged over the `2N` rows.
//!
//! Matches lightly 1.6.0 `NTXentLoss(temperature, memory_bank_size=0)` on one process
//! (goldens `simclr_ntxent_t0.1`, `simclr_ntxent_t0.5`). The row's own similarity is masked
//! with `-inf` rather than cut out, which leaves the softmax over the others unchanged.

use burn::tensor::{Bool, Tensor, backend::Backend};

use super::{log_sum_exp, normalize};

/// The SimCLR NT-Xent loss of two views' projections (mean over the `2N` rows).
///
/// Symmetric in its arguments: swapping `z0` and `z1` permutes the rows only.
///
/// # Shapes
/// `z0`, `z1`: `[n, d]`, row `i` of each from the same image; returns `[1]`.
///
/// # Panics
/// When `z0` and `z1` differ in shape.
pub fn nt_xent<B: Backend>(z0: Tensor<B, 2>, z1: Tensor<B, 2>, temperature: f64) -> Tensor<B, 1> {
    let [n, _d] = z0.dims();
    let device = z0.device();
    let z0 = normalize(z0, 1); // [n, d]
    let z1 = normalize(z1, 1); // [n, d]

    // The positive of row i (either view) is z0_i . z1_i / T.
    let positives = (z0.clone() * z1.clone()).sum_dim(1).div_scalar(temperature); // [n, 1]
    let positives = Tensor::cat(vec![positives.clone(), positives], 0).squeeze_dim(1); // [2n]

    let z = Tensor::cat(vec![z0, z1], 0); // [2n, d]
    let itself = Tensor::<B, 2, Bool>::diag_mask([2 * n, 2 * n], 0, &device).bool_not();
    let logits = z
        .clone()
        .matmul(z.transpose())
        .div_scalar(temperature)
        .mask_fill(itself, f32::NEG_INFINITY); // [2n, 2n]

    (log_sum_exp(logits) - positives).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use crate::losses::check::{B, inputs, loss_and_grads};

    fn check(case: &str) {
        let golden = Golden::load(case);
        let x = inputs(&golden);
        let loss = nt_xent::<B>(
            x["z0"].clone(),
            x["z1"].clone(),
            golden.param("temperature"),
        );
        loss_and_grads(&golden, loss, &x);
    }

    #[test]
    fn simclr_t01_matches_lightly() {
        check("simclr_ntxent_t0.1");
    }

    #[test]
    fn simclr_t05_matches_lightly() {
        check("simclr_ntxent_t0.5");
    }

    #[test]
    fn identical_views_far_apart_give_a_small_loss() {
        let device = Default::default();
        let z = Tensor::<B, 2>::eye(4, &device);
        let loss = nt_xent(z.clone(), z, 0.1).into_scalar();
        // Each row: positive logit 10, negatives 0 (6 of them): log(1 + 6 e^-10).
        assert!(
            (loss - (1.0 + 6.0 * (-10f32).exp()).ln()).abs() < 1e-6,
            "{loss}"
        );
    }
}
