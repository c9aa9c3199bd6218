//! The self-supervised losses, one file each, as pure functions of tensors.
//!
//! Each function takes the projections (or logits, patches) a method computed and the
//! hyper-parameters the paper names (`temperature`, `lambda`, `center_momentum`), and returns
//! the loss as a `[1]` tensor; state a loss carries between steps (DINO's centre, a queue) is
//! passed in and the updated value returned, so the method that owns it decides when it is
//! saved. The methods in [`crate::objectives`] combine these with their models; each loss is
//! checked against the reference implementations' values in `shared/testdata/ssl-goldens/`.
//!
//! The few pieces of tensor arithmetic that several losses share live here: row
//! L2-normalisation ([`normalize`]), a stable log-sum-exp over rows (the cross-entropy of
//! InfoNCE-style losses is `logsumexp(logits) - logit of the positive`) and the parts of a
//! square matrix (its diagonal, the squares of the rest) that Barlow Twins and VICReg use.
//! Inputs that a loss takes "without gradient" (momentum keys, targets, queues) are detached
//! inside the loss, so a caller cannot forget it.

use burn::tensor::{Bool, Tensor, backend::Backend};

pub mod barlow_twins;
pub mod cosine;
pub mod data2vec;
pub mod dino;
pub mod ibot;
pub mod infonce;
pub mod msn;
pub mod nearest_neighbour;
pub mod ntxent;
pub mod queue;
pub mod simmim;
pub mod swav;
pub mod vicreg;

/// The norm floor of [`normalize`], as in PyTorch's `F.normalize`.
pub const NORMALIZE_EPS: f64 = 1e-12;

/// Divides `x` by its L2 norm along `dim`, floored at [`NORMALIZE_EPS`] (`F.normalize(x, dim=dim)`).
///
/// The floor is applied to the squared norm (`max(|x|^2, eps^2)`), which gives the same
/// values and keeps the gradient of an all-zero row at zero instead of NaN. It needs a
/// float type that holds `1e-24` (f32, bf16; not f16): losses run in f32.
///
/// # Shapes
/// `x`: any; returns the same shape.
pub fn normalize<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let norm = x
        .clone()
        .square()
        .sum_dim(dim)
        .clamp_min(NORMALIZE_EPS * NORMALIZE_EPS)
        .sqrt();
    x / norm
}

/// `log(sum_j exp(x_ij))` for each row `i`, shifted by the row maximum for stability.
///
/// Entries of `-inf` (masked logits) contribute nothing, as long as a row has one finite entry.
///
/// # Shapes
/// `x`: `[n, m]`; returns `[n]`.
pub(crate) fn log_sum_exp<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 1> {
    // The shift cancels in value and gradient, so it carries none.
    let max = x.clone().max_dim(1).detach(); // [n, 1]
    let sum = (x - max.clone()).exp().sum_dim(1); // [n, 1]
    (sum.log() + max).squeeze_dim(1)
}

/// `true` off the diagonal of a `[d, d]` matrix, `false` on it.
fn off_diagonal_mask<B: Backend>(d: usize, device: &B::Device) -> Tensor<B, 2, Bool> {
    Tensor::diag_mask([d, d], 0, device)
}

/// The diagonal of a square matrix.
///
/// # Shapes
/// `c`: `[d, d]`; returns `[d]`.
pub(crate) fn diagonal<B: Backend>(c: Tensor<B, 2>) -> Tensor<B, 1> {
    let [d, _] = c.dims();
    let off = off_diagonal_mask::<B>(d, &c.device());
    c.mask_fill(off, 0.0).sum_dim(1).squeeze_dim(1)
}

/// `sum_{i != j} c_ij^2`: the squared off-diagonal entries of a square matrix, summed.
///
/// # Shapes
/// `c`: `[d, d]`; returns `[1]`.
pub(crate) fn off_diagonal_sum_squares<B: Backend>(c: Tensor<B, 2>) -> Tensor<B, 1> {
    let [d, _] = c.dims();
    let on = off_diagonal_mask::<B>(d, &c.device()).bool_not();
    c.mask_fill(on, 0.0).square().sum()
}

/// What the loss tests share: golden inputs as gradient-tracking leaves, and the check of a
/// loss and of every input's gradient against a golden case.
#[cfg(test)]
pub(crate) mod check {
    use std::collections::BTreeMap;

    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Tensor;

    use crate::goldens::Golden;

    /// The autodiff backend of the tests.
    pub(crate) type B = Autodiff<Flex>;

    /// The case's `in.*` tensors (all `[n, d]`), keyed without the prefix, tracking gradients.
    pub(crate) fn inputs(golden: &Golden) -> BTreeMap<String, Tensor<B, 2>> {
        let device = Default::default();
        golden
            .names("in.")
            .into_iter()
            .map(|name| {
                let x = golden.tensor::<B, 2>(&name, &device).require_grad();
                (name["in.".len()..].to_string(), x)
            })
            .collect()
    }

    /// Compares `loss` with `out.loss`, backpropagates it and compares each input's gradient
    /// with `grad.<input>`; an input the golden has no gradient for must get none (or zero).
    pub(crate) fn loss_and_grads(
        golden: &Golden,
        loss: Tensor<B, 1>,
        inputs: &BTreeMap<String, Tensor<B, 2>>,
    ) {
        golden.assert_close("out.loss", loss.clone());
        let grads = loss.backward();
        let expected = golden.names("grad.");
        for (name, x) in inputs {
            let key = format!("grad.{name}");
            match x.grad(&grads) {
                Some(grad) if expected.contains(&key) => golden.assert_close(&key, grad),
                None if expected.contains(&key) => {
                    panic!("{}: no gradient for `{name}`", golden.case)
                }
                Some(grad) => {
                    let values = grad.into_data().to_vec::<f32>().expect("f32 gradient");
                    assert!(
                        values.iter().all(|&v| v == 0.0),
                        "{}: `{name}` must carry no gradient",
                        golden.case
                    );
                }
                None => {}
            }
        }
        for key in expected {
            assert!(
                inputs.contains_key(&key["grad.".len()..]),
                "{}: golden `{key}` has no input",
                golden.case
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use super::check::B;
    use super::*;

    fn values<K: Backend, const D: usize>(x: Tensor<K, D>) -> Vec<f32> {
        x.into_data().to_vec::<f32>().expect("f32")
    }

    #[test]
    fn normalize_gives_unit_rows_and_keeps_zero_rows_finite() {
        let device = Default::default();
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(vec![3.0f32, 4.0, 0.0, 0.0], [2, 2]),
            &device,
        )
        .require_grad();
        let y = normalize(x.clone(), 1);
        assert_eq!(values(y.clone()), vec![0.6, 0.8, 0.0, 0.0]);
        let grads = y.sum().backward();
        assert!(
            values(x.grad(&grads).expect("grad"))
                .iter()
                .all(|v| v.is_finite())
        );
    }

    #[test]
    fn log_sum_exp_ignores_masked_entries() {
        let device = Default::default();
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(vec![1000.0f32, 1000.0, f32::NEG_INFINITY, 0.0], [2, 2]),
            &device,
        );
        let got = values(log_sum_exp(x));
        assert!((got[0] - (1000.0 + 2f32.ln())).abs() < 1e-3, "{got:?}");
        assert_eq!(got[1], 0.0);
    }

    #[test]
    fn matrix_parts() {
        let device = Default::default();
        let c = Tensor::<B, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]),
            &device,
        );
        assert_eq!(values(diagonal(c.clone())), vec![1.0, 4.0]);
        assert_eq!(values(off_diagonal_sum_squares(c)), vec![13.0]);
    }
}
