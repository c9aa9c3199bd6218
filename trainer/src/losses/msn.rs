//! MSN's loss, Masked Siamese Networks (Assran et al. 2022, `src/losses.py` `init_msn_loss`):
//! masked anchor views matched to the target view's sharpened prototype assignment, plus
//! mean-entropy maximisation (me-max).
//!
//! ```text
//! probs(x) = softmax(norm(x) norm(prototypes)^T / temperature)
//! target   = sharpen(probs(targets), target_sharpen_temperature)   no gradient, once per view
//! loss     = mean over anchors of -sum(target * log probs(anchors))
//!          + me_max_weight * (log K - entropy(mean over anchors of probs(anchors)))
//! ```
//!
//! `sharpen(p, T) = p^(1/T)` renormalised per row. The gradient reaches the anchors and the
//! prototypes through the anchor side only. Sinkhorn on the targets (lightly's
//! `sinkhorn_iterations > 0`) is not done here: MSN trains without it.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::normalize;
use crate::error::{Error, Result};

/// MSN's loss hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MsnLoss {
    /// Softmax temperature of the prototype assignments (paper: 0.1).
    pub temperature: f64,
    /// Sharpening temperature of the targets (paper: 0.25); 1 leaves them as they are,
    /// toward 0 they become one-hot.
    pub target_sharpen_temperature: f64,
    /// Weight of the me-max regulariser (paper: 1.0). 0 removes it, and with it the only
    /// force against every anchor choosing the same prototype.
    pub me_max_weight: f64,
}

impl Default for MsnLoss {
    /// The paper's values: `temperature = 0.1`, `target_sharpen_temperature = 0.25`,
    /// `me_max_weight = 1.0`.
    fn default() -> Self {
        Self {
            temperature: 0.1,
            target_sharpen_temperature: 0.25,
            me_max_weight: 1.0,
        }
    }
}

/// The MSN loss as a `[1]` tensor.
///
/// # Shapes
/// - `anchors`: `[V*B, d]`, view-major (row `v*B + b` is view `v` of image `b`)
/// - `targets`: `[B, d]`, the target encoder's output for each image's unmasked view
/// - `prototypes`: `[K, d]`
///
/// # Errors
/// [`Error::Shape`] when the widths differ or the anchor count is not a multiple of `B`.
pub fn msn<B: Backend>(
    loss: &MsnLoss,
    anchors: Tensor<B, 2>,
    targets: Tensor<B, 2>,
    prototypes: Tensor<B, 2>,
) -> Result<Tensor<B, 1>> {
    let [n_anchors, d] = anchors.dims();
    let [batch, target_d] = targets.dims();
    let [k, proto_d] = prototypes.dims();
    if target_d != d {
        return Err(Error::Shape {
            what: "msn targets",
            expected: vec![batch, d],
            actual: vec![batch, target_d],
        });
    }
    if batch == 0 || n_anchors % batch != 0 {
        return Err(Error::Shape {
            what: "msn anchors (rows: views x target rows)",
            expected: vec![batch * n_anchors.div_ceil(batch.max(1)), d],
            actual: vec![n_anchors, d],
        });
    }
    if proto_d != d {
        return Err(Error::Shape {
            what: "msn prototypes",
            expected: vec![k, d],
            actual: vec![k, proto_d],
        });
    }
    let views = n_anchors / batch;
    let prototypes = normalize(prototypes, 1); // [K, d]

    // Targets: sharpened assignments, no gradient, one copy per anchor view.
    let target_logits =
        normalize(targets.detach(), 1).matmul(prototypes.clone().detach().transpose());
    let target_probs = softmax(target_logits / loss.temperature, 1); // [B, K]
    let sharpened = target_probs.powf_scalar(1.0 / loss.target_sharpen_temperature);
    let sharpened = sharpened.clone() / sharpened.sum_dim(1); // [B, K]
    let targets = sharpened.repeat_dim(0, views); // [V*B, K]

    // Anchors: cross-entropy against the targets.
    let anchor_logits = normalize(anchors, 1).matmul(prototypes.transpose()) / loss.temperature;
    let log_probs = log_softmax(anchor_logits, 1); // [V*B, K]
    let ce = -(targets * log_probs.clone()).sum_dim(1).mean(); // [1]

    // me-max: log K - entropy of the mean anchor assignment.
    let mean_probs = log_probs.exp().mean_dim(0); // [1, K]
    let neg_entropy = (mean_probs.clone() * mean_probs.log()).sum(); // [1]
    let me_max = neg_entropy + (k as f64).ln();
    Ok(ce + me_max * loss.me_max_weight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    #[test]
    fn matches_lightly_loss_and_gradients() {
        let g = Golden::load("msn");
        let device = Default::default();
        assert_eq!(g.param("sinkhorn_iterations"), 0.0);
        let settings = MsnLoss {
            temperature: g.param("temperature"),
            target_sharpen_temperature: g.param("target_sharpen_temperature"),
            me_max_weight: g.param("me_max_weight"),
        };
        let anchors = g.tensor::<B, 2>("in.anchors", &device).require_grad();
        let prototypes = g.tensor::<B, 2>("in.prototypes", &device).require_grad();
        let targets = g.tensor::<B, 2>("in.targets", &device);

        let loss = msn(&settings, anchors.clone(), targets, prototypes.clone()).unwrap();
        g.assert_close("out.loss", loss.clone());
        let grads = loss.backward();
        g.assert_close("grad.anchors", anchors.grad(&grads).unwrap());
        g.assert_close("grad.prototypes", prototypes.grad(&grads).unwrap());
    }

    #[test]
    fn rejects_ragged_views() {
        let device = Default::default();
        let err = msn(
            &MsnLoss::default(),
            Tensor::<Flex, 2>::zeros([7, 4], &device),
            Tensor::zeros([2, 4], &device),
            Tensor::zeros([3, 4], &device),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }));
    }
}
