//! data2vec's targets and regression loss (Baevski et al. 2022, "data2vec: A General
//! Framework for Self-supervised Learning in Speech, Vision and Language", §3.3 and §3.4),
//! written from the paper's text.
//!
//! ```text
//! a_l    = output of teacher block l at the patch tokens          [n, l, d], l = L-K+1 .. L
//! â_l    = instance_norm(a_l): each channel of each image normalised over the tokens
//!          (no learned parameters)
//! y      = (1/K) sum_l â_l                                          the top K = 6 blocks
//! y      = layer_norm(y) over the channels (no parameters)          when `layer_norm_targets`
//! loss_t = sum_c smooth_l1(f(x)_tc - y_tc; beta) / sqrt(d)         at each masked token t
//! loss   = mean over the masked tokens of loss_t
//! smooth_l1(e; beta) = e^2 / (2 beta) if |e| < beta else |e| - beta / 2   (beta = 0: e^2)
//! ```
//!
//! Normalisation: the paper names instance norm for speech and parameter-free layer norm
//! for vision; the issue and data2vec 2.0's image recipe normalise each block by instance
//! norm and the average by layer norm, which is what the two switches below give. The
//! `1/sqrt(d)` scale is fairseq's default `loss_scale`. There is no reference value to
//! compare with (no golden); the tests check each part on hand-computed cases.

use burn::tensor::{Tensor, backend::Backend};

use crate::error::{Error, Result};

/// Epsilon of the parameter-free normalisations (PyTorch's `instance_norm`, `layer_norm`).
pub const NORM_EPS: f64 = 1e-5;

/// Each channel of each sample normalised over the tokens (biased variance), as PyTorch
/// `F.instance_norm` on the `[n, d, l]` transpose.
///
/// # Shapes
/// `x` `[n, l, d]` -> `[n, l, d]`.
pub fn instance_norm_tokens<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let mean = x.clone().mean_dim(1); // [n, 1, d]
    let centred = x - mean;
    let var = centred.clone().square().mean_dim(1); // [n, 1, d]
    centred / (var + NORM_EPS).sqrt()
}

/// Each token normalised over its channels (biased variance), PyTorch `F.layer_norm`
/// without weight and bias.
///
/// # Shapes
/// `x` `[n, l, d]` -> `[n, l, d]`.
pub fn layer_norm_channels<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let mean = x.clone().mean_dim(2); // [n, l, 1]
    let centred = x - mean;
    let var = centred.clone().square().mean_dim(2); // [n, l, 1]
    centred / (var + NORM_EPS).sqrt()
}

/// The regression targets from the teacher's top blocks, without gradient.
///
/// # Shapes
/// `top_blocks`: `K` x `[n, l, d]` (patch tokens only, class token removed) -> `[n, l, d]`.
///
/// # Errors
/// [`Error::Shape`] when `top_blocks` is empty or the blocks' shapes differ.
pub fn targets<B: Backend>(
    top_blocks: Vec<Tensor<B, 3>>,
    instance_norm_target_layer: bool,
    layer_norm_targets: bool,
) -> Result<Tensor<B, 3>> {
    let k = top_blocks.len();
    let Some(first) = top_blocks.first() else {
        return Err(Error::Shape {
            what: "data2vec target blocks",
            expected: vec![1],
            actual: vec![0],
        });
    };
    let dims = first.dims();
    if let Some(other) = top_blocks.iter().find(|b| b.dims() != dims) {
        return Err(Error::Shape {
            what: "data2vec target block",
            expected: dims.to_vec(),
            actual: other.dims().to_vec(),
        });
    }
    let normed = top_blocks.into_iter().map(|block| {
        let block = block.detach();
        if instance_norm_target_layer {
            instance_norm_tokens(block)
        } else {
            block
        }
    });
    let sum = normed
        .reduce(|a, b| a + b)
        .expect("at least one block, checked above"); // [n, l, d]
    let y = sum / k as f64;
    Ok(if layer_norm_targets {
        layer_norm_channels(y)
    } else {
        y
    })
}

/// Smooth L1 (Huber divided by `beta`), elementwise; `beta = 0` is the squared error as in
/// fairseq's data2vec (`loss_beta == 0` means L2).
pub fn smooth_l1<B: Backend, const D: usize>(error: Tensor<B, D>, beta: f64) -> Tensor<B, D> {
    if beta <= 0.0 {
        return error.square();
    }
    let abs = error.clone().abs();
    let quadratic = error.square() / (2.0 * beta);
    let linear = abs.clone() - beta / 2.0;
    quadratic.mask_where(abs.greater_equal_elem(beta), linear)
}

/// The data2vec loss: smooth L1 summed over channels, scaled by `scale` (default
/// `1/sqrt(d)`), averaged over the masked tokens. The targets carry no gradient.
///
/// # Shapes
/// `pred`, `target` `[n, l, d]`, `mask` `[n, l]` (1 = masked, regressed) -> `[1]`.
///
/// # Errors
/// [`Error::Shape`] when the shapes disagree.
pub fn regression_loss<B: Backend>(
    pred: Tensor<B, 3>,
    target: Tensor<B, 3>,
    mask: Tensor<B, 2>,
    beta: f64,
    scale: Option<f64>,
) -> Result<Tensor<B, 1>> {
    let [n, l, d] = pred.dims();
    if target.dims() != [n, l, d] {
        return Err(Error::Shape {
            what: "data2vec target",
            expected: vec![n, l, d],
            actual: target.dims().to_vec(),
        });
    }
    if mask.dims() != [n, l] {
        return Err(Error::Shape {
            what: "data2vec mask",
            expected: vec![n, l],
            actual: mask.dims().to_vec(),
        });
    }
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    let per_token = smooth_l1(pred - target.detach(), beta)
        .sum_dim(2)
        .reshape([n, l]); // [n, l]
    let mask = mask.detach();
    // An all-visible batch gives 0, not NaN (fairseq divides by the masked count too).
    let count = mask.clone().sum().clamp_min(1.0); // [1]
    Ok((per_token * mask).sum() * scale / count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    type A = Autodiff<Flex>;

    fn t3(values: Vec<f32>, shape: [usize; 3]) -> Tensor<Flex, 3> {
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    fn close(got: Vec<f32>, want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    /// One image, 2 tokens, 2 channels: channel 0 is (1, 3) -> mean 2, var 1 -> (-1, 1)
    /// over sqrt(1 + eps); channel 1 is (5, 5) -> (0, 0).
    #[test]
    fn instance_norm_is_over_tokens_per_channel() {
        let x = t3(vec![1., 5., 3., 5.], [1, 2, 2]);
        let s = 1.0 / (1.0 + NORM_EPS).sqrt();
        close(
            instance_norm_tokens(x).into_data().to_vec().unwrap(),
            &[-s, 0., s, 0.],
        );
    }

    /// One token (2, 4, 6): mean 4, biased var 8/3.
    #[test]
    fn layer_norm_is_over_channels_per_token() {
        let x = t3(vec![2., 4., 6.], [1, 1, 3]);
        let s = 1.0 / (8.0 / 3.0 + NORM_EPS).sqrt();
        close(
            layer_norm_channels(x).into_data().to_vec().unwrap(),
            &[-2. * s, 0., 2. * s],
        );
    }

    /// Two blocks, each instance-normalised, then averaged: block a = tokens (1, 3) and
    /// block b = tokens (10, 30) normalise to the same (-1, 1), so the average is (-1, 1);
    /// without instance norm the average is (5.5, 16.5); with a final layer norm over a
    /// single channel every value is 0.
    #[test]
    fn targets_average_the_normalised_blocks() {
        let a = t3(vec![1., 3.], [1, 2, 1]);
        let b = t3(vec![10., 30.], [1, 2, 1]);
        let s = 1.0 / (1.0 + NORM_EPS).sqrt();
        let s_b = 1.0 / (100.0 + NORM_EPS).sqrt() * 10.0;
        let y = targets(vec![a.clone(), b.clone()], true, false).unwrap();
        close(
            y.into_data().to_vec().unwrap(),
            &[-(s + s_b) / 2., (s + s_b) / 2.],
        );
        let y = targets(vec![a.clone(), b.clone()], false, false).unwrap();
        close(y.into_data().to_vec().unwrap(), &[5.5, 16.5]);
        let y = targets(vec![a, b], true, true).unwrap();
        close(y.into_data().to_vec().unwrap(), &[0., 0.]);
        assert!(targets::<Flex>(vec![], true, true).is_err());
    }

    #[test]
    fn smooth_l1_is_quadratic_inside_beta_and_linear_outside() {
        let e = Tensor::<Flex, 1>::from_data(
            TensorData::from([0.5f32, -1.0, 3.0, -2.0]),
            &Default::default(),
        );
        // beta 2: 0.25/4, 1/4, 3 - 1, 2 - 1 (|e| = beta is on the linear side, equal either way).
        close(
            smooth_l1(e.clone(), 2.0).into_data().to_vec().unwrap(),
            &[0.0625, 0.25, 2.0, 1.0],
        );
        close(
            smooth_l1(e, 0.0).into_data().to_vec().unwrap(),
            &[0.25, 1.0, 9.0, 4.0],
        );
    }

    /// Two tokens of width 4, the second masked: only its error counts, summed over the
    /// channels, divided by sqrt(4) = 2 and by one masked token; gradient only there.
    #[test]
    fn loss_counts_masked_tokens_only() {
        let device = Default::default();
        let pred = Tensor::<A, 3>::from_data(
            TensorData::new(vec![9f32, 9., 9., 9., 1., 0., 0., 3.], [1, 2, 4]),
            &device,
        )
        .require_grad();
        let target = Tensor::<A, 3>::zeros([1, 2, 4], &device);
        let mask = Tensor::<A, 2>::from_data(TensorData::from([[0f32, 1.]]), &device);
        let loss = regression_loss(pred.clone(), target, mask, 2.0, None).unwrap();
        // token 2: 1/4 + 0 + 0 + (3 - 1) = 2.25; / 2 = 1.125.
        close(loss.clone().into_data().to_vec().unwrap(), &[1.125]);
        let grad: Vec<f32> = pred
            .grad(&loss.backward())
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        // d/de: e/beta inside (1/2), sign outside (1); times 1/2.
        close(grad, &[0., 0., 0., 0., 0.25, 0., 0., 0.5]);
    }
}
