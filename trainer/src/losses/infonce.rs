//! InfoNCE with a momentum encoder's keys: MoCo v2 (Chen et al. 2020, "Improved Baselines
//! with Momentum Contrastive Learning"; He et al. 2020, Algorithm 1) and MoCo v3 (Chen,
//! Xie and He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers",
//! Algorithm 1).
//!
//! MoCo v2, in words: L2-normalise the queries `q`, the keys `k` and the queue of past keys;
//! each query's logits are its similarity with its own key (the positive, label 0) followed
//! by its similarities with every queued key (the negatives), all over `temperature`; the
//! loss is the cross-entropy, averaged over the batch. Matches facebookresearch/moco
//! `builder.py` `MoCo.forward` with `main_moco.py`'s `CrossEntropyLoss` (golden `moco_v2`).
//! The queue itself is a [`super::queue::FeatureQueue`]; the method enqueues the normalised
//! keys after the step.
//!
//! MoCo v3, in words: no queue; the negatives are the other keys of the batch. `ctr(q, k)`
//! is the cross-entropy of `norm(q) norm(k)^T / temperature` with the diagonal as labels,
//! multiplied by `2 * temperature` as the official code does; the loss is
//! `ctr(q1, k2) + ctr(q2, k1)`. Matches facebookresearch/moco-v3 `builder.py`
//! `MoCo.contrastive_loss` and `forward` on one process (golden `moco_v3`); with several
//! ranks [`moco_v3_global`] takes the negatives from every rank's keys, as the official
//! `concat_all_gather` does.
//!
//! Keys and queue come from the momentum encoder and carry no gradient: both losses detach
//! them.

use burn::tensor::{Tensor, backend::Backend};

use super::{log_sum_exp, normalize};

/// The MoCo v2 loss of queries against their keys and a queue of negatives.
///
/// `q`, `k` and the queue's rows are L2-normalised here; `k` and `queue` are detached.
///
/// # Shapes
/// `q`, `k`: `[n, d]`; `queue`: `[capacity, d]`; returns `[1]`.
///
/// # Panics
/// When the widths `d` differ or `q` and `k` differ in length.
pub fn moco_v2<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    queue: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let q = normalize(q, 1); // [n, d]
    let k = normalize(k.detach(), 1); // [n, d]
    let queue = normalize(queue.detach(), 1); // [capacity, d]

    let positives = (q.clone() * k).sum_dim(1).div_scalar(temperature); // [n, 1]
    let negatives = q.matmul(queue.transpose()).div_scalar(temperature); // [n, capacity]
    let logits = Tensor::cat(vec![positives.clone(), negatives], 1); // [n, 1 + capacity]

    (log_sum_exp(logits) - positives.squeeze_dim(1)).mean()
}

/// MoCo v3's `contrastive_loss`: cross-entropy of `norm(q) norm(k)^T / temperature` with
/// label `first_row + i` for row `i`, times `2 * temperature`. `k` (all ranks' keys, this
/// rank's from `first_row`) is detached.
///
/// # Shapes
/// `q`: `[n, d]`; `k`: `[m, d]`, `m >= first_row + n`; returns `[1]`.
fn contrastive<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    temperature: f64,
    first_row: usize,
) -> Tensor<B, 1> {
    let [n, _d] = q.dims();
    let q = normalize(q, 1); // [n, d]
    let k = normalize(k.detach(), 1); // [m, d]
    let own = k.clone().slice(first_row..first_row + n); // [n, d]
    let positives = (q.clone() * own)
        .sum_dim(1)
        .div_scalar(temperature)
        .squeeze_dim(1); // [n]
    let logits = q.matmul(k.transpose()).div_scalar(temperature); // [n, m]
    (log_sum_exp(logits) - positives)
        .mean()
        .mul_scalar(2.0 * temperature)
}

/// The symmetric MoCo v3 loss `ctr(q1, k2) + ctr(q2, k1)` (a sum of the two halves).
///
/// `q1`, `q2` are the base encoder's predictions of the two views, `k1`, `k2` the momentum
/// encoder's projections of the same views (detached here).
///
/// # Shapes
/// `q1`, `q2`, `k1`, `k2`: `[n, d]`; returns `[1]`.
///
/// # Panics
/// When the shapes differ.
pub fn moco_v3<B: Backend>(
    q1: Tensor<B, 2>,
    q2: Tensor<B, 2>,
    k1: Tensor<B, 2>,
    k2: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    moco_v3_global(q1, q2, k1, k2, temperature, 0)
}

/// [`moco_v3`] with the keys of the whole global batch, as the official code's
/// `concat_all_gather`: `k1`, `k2` hold every rank's keys, this rank's from `first_row`, and
/// row `i`'s label is `first_row + i`. The mean is over this rank's queries.
///
/// # Shapes
/// `q1`, `q2`: `[n, d]`; `k1`, `k2`: `[m, d]`; returns `[1]`.
///
/// # Panics
/// When the widths differ or `first_row + n > m`.
pub fn moco_v3_global<B: Backend>(
    q1: Tensor<B, 2>,
    q2: Tensor<B, 2>,
    k1: Tensor<B, 2>,
    k2: Tensor<B, 2>,
    temperature: f64,
    first_row: usize,
) -> Tensor<B, 1> {
    contrastive(q1, k2, temperature, first_row) + contrastive(q2, k1, temperature, first_row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use crate::losses::check::{B, inputs, loss_and_grads};

    #[test]
    fn moco_v2_matches_the_official_code() {
        let golden = Golden::load("moco_v2");
        let x = inputs(&golden);
        assert_eq!(
            golden.shape("in.queue")[0] as f64,
            golden.param("queue_size")
        );
        let loss = moco_v2::<B>(
            x["q"].clone(),
            x["k"].clone(),
            x["queue"].clone(),
            golden.param("temperature"),
        );
        loss_and_grads(&golden, loss, &x);
    }

    #[test]
    fn moco_v3_matches_the_official_code() {
        let golden = Golden::load("moco_v3");
        let x = inputs(&golden);
        let loss = moco_v3::<B>(
            x["q1"].clone(),
            x["q2"].clone(),
            x["k1"].clone(),
            x["k2"].clone(),
            golden.param("temperature"),
        );
        loss_and_grads(&golden, loss, &x);
    }
}
