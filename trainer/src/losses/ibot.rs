//! iBOT's patch term, masked image modelling by self-distillation (Zhou et al. 2022), with its
//! own teacher centre.
//!
//! ```text
//! for each masked token j of image b (rows in row-major (batch, h, w) order):
//!     ce_j = -sum(softmax((teacher_j - center) / teacher_temp) * log_softmax(student_j / student_temp))
//! loss   = sum_j ce_j / count_b / batch          count_b = masked tokens of image b
//! center = center_momentum * center + (1 - center_momentum) * mean_j(teacher_j)
//! ```
//!
//! Weighting by `1 / count_b` makes each image count once whatever its mask ratio. The
//! teacher side carries no gradient; the centre (distinct from DINO's class-token centre) is
//! returned, not kept. The per-token weights are built on the device from the mask (a
//! cumulative sum of the per-image counts), so no value is read back to the host.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The patch term's fixed hyper-parameters (the teacher temperature is scheduled, so passed
/// per call).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IbotPatchLoss {
    /// Student softmax temperature (paper: 0.1).
    pub student_temp: f64,
    /// EMA momentum of the patch centre (paper: 0.9); see [`super::dino::DinoLoss`].
    pub center_momentum: f64,
}

impl Default for IbotPatchLoss {
    /// The paper's values: `student_temp = 0.1`, `center_momentum = 0.9`.
    fn default() -> Self {
        Self {
            student_temp: 0.1,
            center_momentum: 0.9,
        }
    }
}

/// The iBOT patch loss and the updated patch centre (`iBOTLoss` patch term).
///
/// Returns `(loss, new_center)`: the loss as a `[1]` tensor and the centre moved toward the
/// mean teacher token, without gradient.
///
/// # Shapes
/// - `teacher`, `student`: `[m, K]`, the heads' logits for the masked tokens only, in
///   row-major `(batch, h, w)` order
/// - `mask`: `[batch, h, w]`, 1 = masked (predicted), 0 = visible; `m` must equal its sum
///   (not checked: that would read the mask back from the device)
/// - `center`: `[1, K]`
///
/// # Errors
/// [`Error::Shape`] when `student` or `center` does not match `teacher`'s `[m, K]`.
pub fn ibot_patch<B: Backend>(
    loss: &IbotPatchLoss,
    teacher: Tensor<B, 2>,
    student: Tensor<B, 2>,
    mask: Tensor<B, 3>,
    center: Tensor<B, 2>,
    teacher_temp: f64,
) -> Result<(Tensor<B, 1>, Tensor<B, 2>)> {
    let [m, k] = teacher.dims();
    let [batch, _h, _w] = mask.dims();
    for (what, expected, actual) in [
        ("ibot student", [m, k], student.dims()),
        ("ibot center", [1, k], center.dims()),
    ] {
        if expected != actual {
            return Err(Error::Shape {
                what,
                expected: expected.to_vec(),
                actual: actual.to_vec(),
            });
        }
    }
    let device = teacher.device();
    let teacher = teacher.detach();
    let center = center.detach();

    // Per-token cross-entropy.
    let t_probs = softmax((teacher.clone() - center.clone()) / teacher_temp, 1); // [m, K]
    let s_log_probs = log_softmax(student / loss.student_temp, 1); // [m, K]
    let ce = -(t_probs * s_log_probs).sum_dim(1); // [m, 1]

    // Token j belongs to image b when starts[b] <= j < ends[b] (rows are batch-major).
    let counts = mask.detach().sum_dims_squeeze::<1, _>(&[1, 2]); // [batch]
    let ends = counts.clone().cumsum(0); // [batch]
    let starts = ends.clone() - counts.clone(); // [batch]
    let rows = Tensor::<B, 1, Int>::arange(0..m as i64, &device)
        .float()
        .reshape([m, 1])
        .expand([m, batch]); // [m, batch]
    let of_image = rows
        .clone()
        .greater_equal(starts.reshape([1, batch]).expand([m, batch]))
        .bool_and(rows.lower(ends.reshape([1, batch]).expand([m, batch])))
        .float(); // [m, batch], one 1 per row
    let weight = of_image.matmul(counts.clamp_min(1.0).recip().reshape([batch, 1])); // [m, 1]
    let total = (ce * weight).sum() / batch as f64; // [1]

    // Centre EMA over the masked teacher tokens.
    let batch_center = teacher.mean_dim(0); // [1, K]
    let new_center = center * loss.center_momentum + batch_center * (1.0 - loss.center_momentum);
    Ok((total, new_center))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    #[test]
    fn matches_lightly_loss_center_and_gradient() {
        let g = Golden::load("ibot_patch");
        let device = Default::default();
        let settings = IbotPatchLoss {
            student_temp: g.param("student_temp"),
            center_momentum: g.param("center_momentum"),
        };
        let teacher = g.tensor::<B, 2>("in.teacher", &device);
        let student = g.tensor::<B, 2>("in.student", &device).require_grad();
        let mask = g.int_tensor::<B, 3>("out.mask", &device).float(); // 1 = masked
        let [m, k] = teacher.dims();
        assert_eq!(g.ints("out.mask").iter().sum::<i64>(), m as i64);

        let (loss, new_center) = ibot_patch(
            &settings,
            teacher,
            student.clone(),
            mask,
            Tensor::zeros([1, k], &device),
            g.param("teacher_temp"),
        )
        .unwrap();
        g.assert_close("out.loss", loss.clone());
        g.assert_close("out.center_after", new_center.reshape([k]));
        let grads = loss.backward();
        g.assert_close("grad.student", student.grad(&grads).unwrap());
    }

    #[test]
    fn rejects_mismatched_student() {
        let device = Default::default();
        let err = ibot_patch(
            &IbotPatchLoss::default(),
            Tensor::<Flex, 2>::zeros([5, 8], &device),
            Tensor::zeros([5, 9], &device),
            Tensor::ones([1, 1, 5], &device),
            Tensor::zeros([1, 8], &device),
            0.04,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Shape {
                what: "ibot student",
                ..
            }
        ));
    }
}
