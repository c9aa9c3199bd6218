//! DINO's self-distillation loss over multi-crop views (Caron et al. 2021, "Algorithm 1"),
//! with the teacher centre's EMA.
//!
//! ```text
//! t_k = softmax((teacher_k - center) / teacher_temp)     k over teacher (global) views
//! s_v = log_softmax(student_v / student_temp)            v over student views (global first)
//! loss = mean over pairs (k, v) with k != v of mean over batch of -sum(t_k * s_v)
//! center = center_momentum * center + (1 - center_momentum) * mean(teacher over views, batch)
//! ```
//!
//! The student's first views must be the same global crops as the teacher's, in the same
//! order: the pair `(k, k)` is the same crop seen by both networks and is left out. The teacher
//! side carries no gradient (stop-gradient), and the centre is returned rather than kept, so
//! the method owning it decides when it is saved. `teacher_temp` is an argument because DINO
//! warms it up over the first epochs; the other two hyper-parameters are [`DinoLoss`].

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// DINO's fixed loss hyper-parameters (the teacher temperature is scheduled, so passed per call).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DinoLoss {
    /// Student softmax temperature (paper: 0.1). Lower sharpens the student's distribution.
    pub student_temp: f64,
    /// EMA momentum of the teacher centre (paper: 0.9). Near 1 the centre barely moves and
    /// cannot stop collapse onto one dimension; near 0 it follows each batch's noise.
    pub center_momentum: f64,
}

impl Default for DinoLoss {
    /// The paper's values: `student_temp = 0.1`, `center_momentum = 0.9`.
    fn default() -> Self {
        Self {
            student_temp: 0.1,
            center_momentum: 0.9,
        }
    }
}

/// The DINO loss and the updated centre (`main_dino.py` `DINOLoss.forward` and
/// `update_center`).
///
/// Returns `(loss, new_center)`: the loss as a `[1]` tensor, averaged over every
/// (teacher view, student view) pair with different indices and over the batch; the centre
/// moved toward the mean teacher output, without gradient.
///
/// # Shapes
/// - `teacher`: `T >= 1` views, each `[b, K]` (logits of the teacher head)
/// - `student`: `S >= 2` views, each `[b, K]`; views `0..T` are the teacher's crops
/// - `center`: `[1, K]`
///
/// # Errors
/// [`Error::Shape`] when a view's shape differs from the first teacher view's, `center` is
/// not `[1, K]`, or there is no pair with different indices.
pub fn dino<B: Backend>(
    loss: &DinoLoss,
    teacher: &[Tensor<B, 2>],
    student: &[Tensor<B, 2>],
    center: Tensor<B, 2>,
    teacher_temp: f64,
) -> Result<(Tensor<B, 1>, Tensor<B, 2>)> {
    dino_global(loss, teacher, student, center, teacher_temp, None)
}

/// [`dino`] in a data-parallel run: the centre moves toward the mean teacher output of the
/// global batch, as the official `update_center` all-reduces it. `all_reduce` sums over the
/// ranks ([`crate::objectives::StepContext::all_reduce_sum`]; no gradient is involved);
/// `None` alone, which is [`dino`]. The loss is this rank's.
///
/// # Shapes
/// As [`dino`].
///
/// # Errors
/// As [`dino`].
pub fn dino_global<B: Backend>(
    loss: &DinoLoss,
    teacher: &[Tensor<B, 2>],
    student: &[Tensor<B, 2>],
    center: Tensor<B, 2>,
    teacher_temp: f64,
    all_reduce: Option<&dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>>,
) -> Result<(Tensor<B, 1>, Tensor<B, 2>)> {
    let (n_teacher, n_student) = (teacher.len(), student.len());
    let n_pairs = n_teacher * n_student - n_teacher.min(n_student);
    if n_teacher == 0 || n_pairs == 0 {
        return Err(Error::Shape {
            what: "dino views [teacher, student] (need a pair of different crops)",
            expected: vec![1, 2],
            actual: vec![n_teacher, n_student],
        });
    }
    let [b, k] = teacher[0].dims();
    for (what, views) in [
        ("dino teacher view", teacher),
        ("dino student view", student),
    ] {
        for view in views {
            check(what, [b, k], view.dims())?;
        }
    }
    check("dino center", [1, k], center.dims())?;
    let device = center.device();
    let center = center.detach();

    // Teacher: centred and sharpened, no gradient.
    let teacher = Tensor::cat(teacher.to_vec(), 0).detach(); // [T*b, K]
    let t_probs = softmax((teacher.clone() - center.clone()) / teacher_temp, 1); // [T*b, K]
    let student = Tensor::cat(student.to_vec(), 0); // [S*b, K]
    let s_log_probs = log_softmax(student / loss.student_temp, 1); // [S*b, K]

    // Cross-entropy of every (teacher, student) view pair at once: [T, b*K] x [b*K, S].
    let t_probs = t_probs.reshape([n_teacher, b * k]);
    let s_log_probs = s_log_probs.reshape([n_student, b * k]);
    let pair_ce = -t_probs.matmul(s_log_probs.transpose()); // [T, S], summed over batch
    let off_diagonal: Vec<f32> = (0..n_teacher)
        .flat_map(|t| (0..n_student).map(move |s| if t == s { 0.0 } else { 1.0 }))
        .collect();
    let off_diagonal = Tensor::from_data(
        TensorData::new(off_diagonal, [n_teacher, n_student]),
        &device,
    );
    let total = (pair_ce * off_diagonal).sum() / (n_pairs * b) as f64; // [1]

    // Centre EMA over every teacher output of the batch.
    let batch_center = match all_reduce {
        None => teacher.mean_dim(0), // [1, K]
        Some(all_reduce) => {
            let [rows, _] = teacher.dims();
            let count = Tensor::full([1, k], rows as f64, &device); // [1, K]
            let sums = all_reduce(Tensor::cat(vec![teacher.sum_dim(0), count], 0)); // [2, K]
            sums.clone().slice(0..1) / sums.slice(1..2) // [1, K]
        }
    };
    let new_center = center * loss.center_momentum + batch_center * (1.0 - loss.center_momentum);
    Ok((total, new_center))
}

fn check(what: &'static str, expected: [usize; 2], actual: [usize; 2]) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::Shape {
            what,
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    #[test]
    fn matches_lightly_loss_center_and_gradients() {
        let g = Golden::load("dino");
        let device = Default::default();
        let settings = DinoLoss {
            student_temp: g.param("student_temp"),
            center_momentum: g.param("center_momentum"),
        };
        let teacher: Vec<Tensor<B, 2>> = g
            .names("in.teacher")
            .iter()
            .map(|n| g.tensor(n, &device))
            .collect();
        let student: Vec<Tensor<B, 2>> = g
            .names("in.student")
            .iter()
            .map(|n| g.tensor::<B, 2>(n, &device).require_grad())
            .collect();
        assert_eq!((teacher.len(), student.len()), (2, 6));
        let k = teacher[0].dims()[1];
        let center = g
            .tensor::<B, 3>("out.center_before", &device)
            .reshape([1, k]);

        let (loss, new_center) = dino(
            &settings,
            &teacher,
            &student,
            center,
            g.param("teacher_temp"),
        )
        .unwrap();
        g.assert_close("out.loss", loss.clone());
        g.assert_close("out.center_after", new_center.reshape([1, 1, k]));
        let grads = loss.backward();
        for (i, s) in student.iter().enumerate() {
            g.assert_close(&format!("grad.student{i}"), s.grad(&grads).unwrap());
        }
    }

    #[test]
    fn rejects_mismatched_views() {
        let device = Default::default();
        let t = vec![Tensor::<Flex, 2>::zeros([4, 8], &device)];
        let s = vec![
            Tensor::<Flex, 2>::zeros([4, 8], &device),
            Tensor::<Flex, 2>::zeros([4, 7], &device),
        ];
        let center = Tensor::zeros([1, 8], &device);
        let err = dino(&DinoLoss::default(), &t, &s, center.clone(), 0.04).unwrap_err();
        assert!(matches!(err, Error::Shape { actual, .. } if actual == [4, 7]));
        let err = dino(&DinoLoss::default(), &t, &s[..1], center, 0.04).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }));
    }
}
