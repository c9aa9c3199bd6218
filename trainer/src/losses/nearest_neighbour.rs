//! Nearest-neighbour positives: NNCLR (Dwibedi et al. 2021, "With a Little Help from My
//! Friends: Nearest-Neighbor Contrastive Learning of Visual Representations", Algorithm 1).
//!
//! In words: each projection `z` is replaced by its nearest neighbour (highest cosine
//! similarity) in a support set of past projections, and NT-Xent contrasts that neighbour
//! with the prediction `p` of the other view, symmetrised:
//! `0.5 * (nt_xent(nn(z0), p1) + nt_xent(nn(z1), p0))`. The support set carries no
//! gradient, so neither do `z0` and `z1`: only the predictions learn.
//!
//! Matches lightly 1.6.0 `NNMemoryBankModule` (cosine argmax, the support row itself
//! returned) with `NTXentLoss(temperature)` as in lightly's NNCLR example (golden `nnclr`).
//! The support set is a [`super::queue::FeatureQueue`]; the method enqueues `z` after the step.

use burn::tensor::{Int, Tensor, backend::Backend};

use super::normalize;
use super::ntxent::nt_xent_global;

/// Each row of `z`'s nearest neighbour by cosine similarity among the rows of `support`,
/// and its index there. Neither carries a gradient.
///
/// The neighbours are the support rows as stored (not normalised); ties go to the lower
/// index (argmax).
///
/// # Shapes
/// `z`: `[n, d]`, `support`: `[m, d]`; returns `[n, d]` and `[n]`.
///
/// # Panics
/// When the widths differ or `support` is empty.
pub fn nearest_neighbours<B: Backend>(
    z: Tensor<B, 2>,
    support: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    let [n, _d] = z.dims();
    let support = support.detach();
    let similarity = normalize(z.detach(), 1).matmul(normalize(support.clone(), 1).transpose()); // [n, m]
    let indices = similarity.argmax(1).reshape([n]); // [n]
    (support.select(0, indices.clone()), indices)
}

/// The NNCLR loss `0.5 * (nt_xent(nn(z0), p1) + nt_xent(nn(z1), p0))`.
///
/// `p0`, `p1`: the predictions of views 0 and 1; `z0`, `z1`: their projections, looked up
/// in `support` (no gradient).
///
/// # Shapes
/// `p0`, `p1`, `z0`, `z1`: `[n, d]`; `support`: `[m, d]`; returns `[1]`.
///
/// # Panics
/// When the shapes differ or `support` is empty.
pub fn nnclr<B: Backend>(
    p0: Tensor<B, 2>,
    p1: Tensor<B, 2>,
    z0: Tensor<B, 2>,
    z1: Tensor<B, 2>,
    support: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    nnclr_global(p0, p1, z0, z1, support, temperature, &|z| z, 0)
}

/// [`nnclr`] with the NT-Xent negatives of the whole global batch
/// ([`super::ntxent::nt_xent_global`]: `gather` makes every rank's rows, this rank's from
/// `first_row`). The identity and 0 alone, which is [`nnclr`].
///
/// # Shapes
/// `p0`, `p1`, `z0`, `z1`: `[n, d]`; `support`: `[m, d]`; returns `[1]`.
#[allow(clippy::too_many_arguments)]
pub fn nnclr_global<B: Backend>(
    p0: Tensor<B, 2>,
    p1: Tensor<B, 2>,
    z0: Tensor<B, 2>,
    z1: Tensor<B, 2>,
    support: Tensor<B, 2>,
    temperature: f64,
    gather: &dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>,
    first_row: usize,
) -> Tensor<B, 1> {
    let (nn0, _) = nearest_neighbours(z0, support.clone());
    let (nn1, _) = nearest_neighbours(z1, support);
    (nt_xent_global(nn0, p1, temperature, gather, first_row)
        + nt_xent_global(nn1, p0, temperature, gather, first_row))
    .mul_scalar(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use crate::losses::check::{B, inputs, loss_and_grads};

    #[test]
    fn matches_lightly() {
        let golden = Golden::load("nnclr");
        let x = inputs(&golden);
        for (z, index) in [("z0", "out.nn_index0"), ("z1", "out.nn_index1")] {
            let (neighbours, indices) = nearest_neighbours(x[z].clone(), x["support"].clone());
            let indices = indices
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .expect("i64");
            assert_eq!(indices, golden.ints(index), "{index}");
            let indices = golden.int_tensor::<B, 1>(index, &Default::default());
            let expected = x["support"].clone().select(0, indices);
            assert_eq!(neighbours.into_data(), expected.into_data());
        }
        let loss = nnclr::<B>(
            x["p0"].clone(),
            x["p1"].clone(),
            x["z0"].clone(),
            x["z1"].clone(),
            x["support"].clone(),
            golden.param("temperature"),
        );
        loss_and_grads(&golden, loss, &x);
    }
}
