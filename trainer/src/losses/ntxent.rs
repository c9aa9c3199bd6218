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

use burn::tensor::{Bool, Tensor, TensorData, backend::Backend};

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
    nt_xent_global(z0, z1, temperature, &|z| z, 0)
}

/// [`nt_xent`] of this rank's rows against the negatives of the whole global batch (data
/// parallel, as SimCLR's TPU code gathers them): `gather` makes every rank's `[n, d]` rows
/// into `[m, d]` (the identity alone), in which this rank's rows start at `first_row`.
/// The mean is over this rank's `2n` rows; averaged over the ranks it is the loss of one
/// process with the whole batch (see [`crate::distributed::GlobalBatch`] for the
/// gradient). With `gather` the identity and `first_row` 0 this is [`nt_xent`].
///
/// # Shapes
/// `z0`, `z1`: `[n, d]`; `gather`: `[n, d]` -> `[m, d]`; returns `[1]`.
///
/// # Panics
/// When `z0` and `z1` differ in shape, or `first_row + n > m`.
pub fn nt_xent_global<B: Backend>(
    z0: Tensor<B, 2>,
    z1: Tensor<B, 2>,
    temperature: f64,
    gather: &dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>,
    first_row: usize,
) -> Tensor<B, 1> {
    let [n, _d] = z0.dims();
    let device = z0.device();
    let z0 = normalize(z0, 1); // [n, d]
    let z1 = normalize(z1, 1); // [n, d]

    // The positive of row i (either view) is z0_i . z1_i / T.
    let positives = (z0.clone() * z1.clone()).sum_dim(1).div_scalar(temperature); // [n, 1]
    let positives = Tensor::cat(vec![positives.clone(), positives], 0).squeeze_dim(1); // [2n]

    let z = Tensor::cat(vec![z0, z1], 0); // [2n, d]
    // Columns: view 0 of every image of the global batch, then view 1.
    let columns = gather(z.clone().slice(0..n)); // [m, d]
    let [m, _] = columns.dims();
    let columns = Tensor::cat(vec![columns, gather(z.clone().slice(n..2 * n))], 0); // [2m, d]
    // Row i's own column: first_row + i for view 0, m + first_row + i for view 1.
    let itself = if m == n && first_row == 0 {
        Tensor::<B, 2, Bool>::diag_mask([2 * n, 2 * n], 0, &device).bool_not()
    } else {
        let mut mask = vec![false; 2 * n * 2 * m];
        for i in 0..n {
            mask[i * 2 * m + first_row + i] = true;
            mask[(n + i) * 2 * m + m + first_row + i] = true;
        }
        Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [2 * n, 2 * m]), &device)
    };
    let logits = z
        .matmul(columns.transpose())
        .div_scalar(temperature)
        .mask_fill(itself, f32::NEG_INFINITY); // [2n, 2m]

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

    /// Two "ranks" of one process: each rank's rows against the gathered columns (the other
    /// rank's detached), averaged, give the loss of the whole batch. (The gradients need
    /// the real gather's backward: `tests/distributed.rs`.)
    #[test]
    fn rank_halves_against_the_gathered_batch_average_to_the_whole_loss() {
        let golden = Golden::load("simclr_ntxent_t0.5");
        let x = inputs(&golden);
        let t = golden.param("temperature");
        let (z0, z1): (Tensor<B, 2>, Tensor<B, 2>) = (x["z0"].clone(), x["z1"].clone());
        let [n, _] = z0.dims();
        assert!(n % 2 == 0 && n >= 4, "the golden has {n} rows");
        let h = n / 2;
        let whole = nt_xent(z0.clone(), z1.clone(), t).into_scalar();
        // Rank r's gather: its own rows (with gradient) in its slot, the other rank's
        // normalised rows (detached: the other process's) elsewhere.
        let halves = |r: usize| {
            let (a0, a1) = (z0.clone(), z1.clone());
            let own0 = a0.clone().slice(r * h..(r + 1) * h);
            let own1 = a1.clone().slice(r * h..(r + 1) * h);
            let all = Tensor::cat(vec![normalize(a0, 1), normalize(a1, 1)], 0).detach();
            // nt_xent_global gathers view 0, then view 1.
            let calls = std::cell::Cell::new(0);
            let gather = |z: Tensor<B, 2>| {
                let base = calls.replace(calls.get() + 1) * n;
                let mut parts = Vec::new();
                if r > 0 {
                    parts.push(all.clone().slice(base..base + h));
                }
                parts.push(z);
                if r == 0 {
                    parts.push(all.clone().slice(base + h..base + n));
                }
                Tensor::cat(parts, 0)
            };
            nt_xent_global(own0, own1, t, &gather, r * h).into_scalar()
        };
        let mean = (halves(0) + halves(1)) / 2.0;
        assert!((mean - whole).abs() < 1e-5, "{mean} vs {whole}");
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
