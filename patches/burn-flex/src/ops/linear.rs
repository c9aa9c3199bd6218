//! Linear layers over inputs of any rank, as one 2-D matrix product.
//!
//! burn's default `linear` (burn-backend `ops/modules/linear.rs`) treats `x: [b.., n, d_in]`
//! as a batch of matrices: the weight is broadcast to `[1.., d_in, d_out]`, so the forward
//! and the input gradient run one small product per batch entry (each packing the whole
//! weight again), and the weight gradient is one `[d_in, d_out]` product per batch entry,
//! summed afterwards. For a ViT block at batch 64 that writes, then reads back, 64
//! weight-sized matrices per layer (for ViT-Tiny's MLP, 64 x 192 x 768 floats where the
//! gradient is 192 x 768).
//!
//! The leading dimensions of a linear layer's input are rows like any other, so here they
//! are folded into one: `x` is `[rows, d_in]` and every op is one product (or one sum for
//! the bias). Results equal the default's up to float rounding: the weight gradient sums
//! over all rows inside one product instead of per batch entry and then across entries.

use crate::{Flex, FlexTensor};
use burn_backend::{TensorMetadata, ops::FloatTensorOps};
use burn_std::Shape;

/// `x @ weight + bias` for `x: [.., d_in]`, `weight: [d_in, d_out]`, `bias: [d_out]`.
pub(crate) fn linear(x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
    let d_out = weight.shape()[1];
    let out_shape = with_last(&x.shape(), d_out);
    let y = Flex::float_matmul(as_rows(x), weight);
    let y = match bias {
        Some(bias) => Flex::float_add(y, Flex::float_reshape(bias, Shape::new([1, d_out]))),
        None => y,
    };
    Flex::float_reshape(y, out_shape)
}

/// The gradient of `x`: `grad @ weightᵀ`, shaped as `x` (`grad: [.., d_out]`).
pub(crate) fn linear_x_backward(weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
    let d_in = weight.shape()[0];
    let x_shape = with_last(&grad.shape(), d_in);
    let dx = Flex::float_matmul(as_rows(grad), Flex::float_swap_dims(weight, 0, 1));
    Flex::float_reshape(dx, x_shape)
}

/// The gradient of the weight: `xᵀ @ grad` over every row, `[d_in, d_out]`.
pub(crate) fn linear_weight_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
    Flex::float_matmul(Flex::float_swap_dims(as_rows(x), 0, 1), as_rows(grad))
}

/// The gradient of the bias: `grad` summed over every row, `[d_out]`.
pub(crate) fn linear_bias_backward(grad: FlexTensor) -> FlexTensor {
    let shape = grad.shape();
    let d_out = shape[shape.num_dims() - 1];
    Flex::float_reshape(Flex::float_sum_dim(as_rows(grad), 0), Shape::new([d_out]))
}

/// `t: [a, b, .., last]` as `[a * b * .., last]` (a view when `t` is contiguous).
fn as_rows(t: FlexTensor) -> FlexTensor {
    let shape = t.shape();
    let rank = shape.num_dims();
    if rank == 2 {
        return t;
    }
    let rows = shape.iter().take(rank - 1).product::<usize>();
    let last = shape[rank - 1];
    Flex::float_reshape(t, Shape::new([rows, last]))
}

/// `shape` with its last dimension replaced by `last`.
fn with_last(shape: &Shape, last: usize) -> Shape {
    let mut dims: alloc::vec::Vec<usize> = shape.iter().copied().collect();
    if let Some(d) = dims.last_mut() {
        *d = last;
    }
    Shape::from(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use burn_backend::{TensorData, ops::ModuleOps};

    use crate::ops::test_values as values;

    fn tensor(dims: &[usize], seed: u64) -> FlexTensor {
        let n = dims.iter().product();
        FlexTensor::from_data(TensorData::new(values(n, seed), dims.to_vec()))
    }

    fn data(t: FlexTensor) -> (Vec<usize>, Vec<f32>) {
        let d = t.into_data();
        (d.shape.to_vec(), d.to_vec().unwrap())
    }

    /// Row `r` of `t` seen as `[rows, last]`.
    fn row(t: &[f32], last: usize, r: usize) -> &[f32] {
        &t[r * last..(r + 1) * last]
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// Each op (through `ModuleOps`, as autodiff calls it) against the definition (f64
    /// loops over rows), for inputs of rank 2 to 4 and an empty batch, with and without a
    /// bias, and for an input that is a transposed (non-contiguous) view.
    #[test]
    fn every_op_equals_the_definition_for_any_rank() {
        let (d_in, d_out) = (7, 5);
        for (case, dims) in [&[6, 7][..], &[3, 4, 7], &[2, 3, 2, 7], &[0, 3, 7]]
            .into_iter()
            .enumerate()
        {
            let seed = case as u64 * 10;
            let rows: usize = dims[..dims.len() - 1].iter().product();
            let x = tensor(dims, seed + 1);
            let w = tensor(&[d_in, d_out], seed + 2);
            let b = tensor(&[d_out], seed + 3);
            let mut g_dims = dims.to_vec();
            *g_dims.last_mut().unwrap() = d_out;
            let g = tensor(&g_dims, seed + 4);
            let (_, xv) = data(x.clone());
            let (_, wv) = data(w.clone());
            let (_, bv) = data(b.clone());
            let (_, gv) = data(g.clone());

            let mut y = Vec::new();
            let mut dx = Vec::new();
            for r in 0..rows {
                for o in 0..d_out {
                    let dot: f64 = (0..d_in)
                        .map(|i| row(&xv, d_in, r)[i] as f64 * wv[i * d_out + o] as f64)
                        .sum();
                    y.push(dot + bv[o] as f64);
                }
                for i in 0..d_in {
                    dx.push(
                        (0..d_out)
                            .map(|o| row(&gv, d_out, r)[o] as f64 * wv[i * d_out + o] as f64)
                            .sum(),
                    );
                }
            }
            let dw: Vec<f64> = (0..d_in * d_out)
                .map(|k| {
                    let (i, o) = (k / d_out, k % d_out);
                    (0..rows)
                        .map(|r| row(&xv, d_in, r)[i] as f64 * row(&gv, d_out, r)[o] as f64)
                        .sum()
                })
                .collect();
            let db: Vec<f64> = (0..d_out)
                .map(|o| (0..rows).map(|r| row(&gv, d_out, r)[o] as f64).sum())
                .collect();

            let (shape, got) = data(Flex::linear(x.clone(), w.clone(), Some(b.clone())));
            assert_eq!(shape, g_dims, "{dims:?}: output shape");
            assert_close(&got, &y, "y");
            let no_bias: Vec<f64> = y
                .iter()
                .enumerate()
                .map(|(k, v)| v - bv[k % d_out] as f64)
                .collect();
            assert_close(
                &data(Flex::linear(x.clone(), w.clone(), None)).1,
                &no_bias,
                "y",
            );
            let (shape, got) = data(Flex::linear_x_backward(w.clone(), g.clone()));
            assert_eq!(shape, dims, "{dims:?}: dx shape");
            assert_close(&got, &dx, "dx");
            let (shape, got) = data(Flex::linear_weight_backward(x.clone(), g.clone()));
            assert_eq!(shape, [d_in, d_out], "{dims:?}: dw shape");
            assert_close(&got, &dw, "dw");
            let (shape, got) = data(Flex::linear_bias_backward(g.clone()));
            assert_eq!(shape, [d_out], "{dims:?}: db shape");
            assert_close(&got, &db, "db");

            // The same input as a transposed view of its transpose: not contiguous.
            if dims.len() >= 3 && rows > 0 {
                let r = dims.len();
                let t = Flex::float_swap_dims(x.clone(), r - 3, r - 2);
                let t = Flex::float_swap_dims(FlexTensor::from_data(t.into_data()), r - 3, r - 2);
                assert!(!t.is_contiguous());
                let (_, got) = data(Flex::linear(t.clone(), w.clone(), Some(b.clone())));
                assert_close(&got, &y, "y of a strided input");
                let (_, got) = data(Flex::linear_weight_backward(t, g.clone()));
                assert_close(&got, &dw, "dw of a strided input");
            }
        }
    }
}
