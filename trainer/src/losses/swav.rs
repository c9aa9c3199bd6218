//! SwAV's swapped prediction over multi-crop views (Caron et al. 2020), with the Sinkhorn-Knopp
//! codes of `main_swav.py` `distributed_sinkhorn` (one process).
//!
//! ```text
//! for each high-resolution view i:
//!     q_i = sinkhorn(exp(scores_i / epsilon))              no gradient; queue rows appended, then dropped
//!     l_i = sum over views v != i of -mean_rows(sum(q_i * log_softmax(scores_v / temperature)))
//! loss = mean over i of l_i / (n_views - 1)
//! ```
//!
//! The inputs are prototype scores: L2-normalised features times L2-normalised prototypes,
//! `[n, K]` per view. The optional queue (features of earlier batches scored against today's
//! prototypes) only enlarges the set Sinkhorn balances over: SwAV turns it on when the batch
//! is small next to `K`, so that equipartition over one batch is not too strong a constraint.

use burn::tensor::activation::log_softmax;
use burn::tensor::{ElementConversion, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// SwAV's loss hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SwavLoss {
    /// Softmax temperature of the predictions (paper: 0.1).
    pub temperature: f64,
    /// Entropic regularisation of the codes (paper: 0.05). Smaller gives harder codes; far
    /// below 0.05, `exp(scores / epsilon)` needs the max subtraction [`sinkhorn`] does.
    pub sinkhorn_epsilon: f64,
    /// Sinkhorn-Knopp iterations (paper: 3). 0 leaves the codes as a plain softmax over
    /// prototypes.
    pub sinkhorn_iterations: usize,
}

impl Default for SwavLoss {
    /// The paper's values: `temperature = 0.1`, `sinkhorn_epsilon = 0.05`,
    /// `sinkhorn_iterations = 3`.
    fn default() -> Self {
        Self {
            temperature: 0.1,
            sinkhorn_epsilon: 0.05,
            sinkhorn_iterations: 3,
        }
    }
}

/// Soft codes of `n` samples over `K` prototypes by Sinkhorn-Knopp, without gradient
/// (`distributed_sinkhorn` on one process).
///
/// `Q = exp(scores / epsilon)` is scaled to sum to 1, then each iteration gives every
/// prototype a total weight of `1/K` and every sample a total of `1/n`; the result is
/// multiplied by `n`. Each row (sample) of the codes therefore sums to exactly 1, and each
/// column (prototype) to `n / K` once the iterations have converged. The global maximum is
/// subtracted before `exp`, which the normalisation cancels exactly; it only keeps small
/// `epsilon` from overflowing.
///
/// # Shapes
/// - `scores`: `[n, K]`
/// - returns `[n, K]`
pub fn sinkhorn<B: Backend>(scores: Tensor<B, 2>, epsilon: f64, iterations: usize) -> Tensor<B, 2> {
    let [n, k] = scores.dims();
    let scores = scores.detach();
    let max = scores.clone().max().reshape([1, 1]);
    let q = ((scores - max) / epsilon).exp(); // [n, K]
    let mut q = q.clone() / q.sum().reshape([1, 1]);
    for _ in 0..iterations {
        // Each prototype (a row of SwAV's K x n matrix) gets total weight 1/K.
        q = q.clone() / q.sum_dim(0) / k as f64; // [n, K]
        // Each sample gets total weight 1/n.
        q = q.clone() / q.sum_dim(1) / n as f64; // [n, K]
    }
    q * n as f64
}

/// [`sinkhorn`] over the global batch of a data-parallel run (`distributed_sinkhorn` on
/// several processes): the total mass and every prototype's weight are summed over the
/// ranks, each sample's row stays on its rank, and `n` is the global row count. `all_reduce`
/// sums over the ranks (no gradient is involved); `None` alone, which is [`sinkhorn`].
///
/// The constant subtracted before `exp` is 1 rather than the maximum (the scores are
/// cosine similarities, at most 1, so `exp` cannot overflow): one constant for all ranks,
/// which the normalisation cancels exactly.
///
/// # Shapes
/// - `scores`: `[n, K]` (this rank's rows)
/// - returns `[n, K]`
pub fn sinkhorn_global<B: Backend>(
    scores: Tensor<B, 2>,
    epsilon: f64,
    iterations: usize,
    all_reduce: Option<&dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>>,
) -> Tensor<B, 2> {
    let Some(all_reduce) = all_reduce else {
        return sinkhorn(scores, epsilon, iterations);
    };
    let [n, k] = scores.dims();
    let device = scores.device();
    let q = (scores.detach().sub_scalar(1.0) / epsilon).exp(); // [n, K]
    // Column sums and row counts of all ranks in one all-reduce.
    let first = all_reduce(Tensor::cat(
        vec![
            q.clone().sum_dim(0),
            Tensor::full([1, k], n as f64, &device),
        ],
        0,
    )); // [2, K]
    let total = first.clone().slice(0..1).sum().reshape([1, 1]); // [1, 1]
    let rows: f64 = first
        .slice([1..2, 0..1])
        .into_scalar()
        .elem::<f64>()
        .round();
    let mut q = q / total;
    for _ in 0..iterations {
        // Each prototype gets total weight 1/K over all ranks' samples.
        q = q.clone() / all_reduce(q.sum_dim(0)) / k as f64; // [n, K]
        // Each sample gets total weight 1/N.
        q = q.clone() / q.sum_dim(1) / rows; // [n, K]
    }
    q * rows
}

/// The SwAV loss (`main_swav.py` training loop, lightly `SwaVLoss`) as a `[1]` tensor.
///
/// Codes come from the high-resolution views only; every view (high and low) predicts them.
/// With `queue`, view `i`'s queued scores `queue[i]` are appended below its batch for
/// Sinkhorn and their codes dropped.
///
/// # Shapes
/// - `high`: `>= 1` views, each `[n, K]`; `low`: any number of views, each `[n, K]`
/// - `queue`: one `[q, K]` per high-resolution view
///
/// # Errors
/// [`Error::Shape`] when a view differs from `high[0]`'s `[n, K]`, a queue's width is not
/// `K`, the queue count differs from the high-resolution view count, or there is no other
/// view to predict from.
pub fn swav<B: Backend>(
    loss: &SwavLoss,
    high: &[Tensor<B, 2>],
    low: &[Tensor<B, 2>],
    queue: Option<&[Tensor<B, 2>]>,
) -> Result<Tensor<B, 1>> {
    swav_global(loss, high, low, queue, None)
}

/// [`swav`] with the codes balanced over the global batch ([`sinkhorn_global`]; each
/// rank's queue joins its own rows, as in `main_swav.py`). `None` alone, which is [`swav`].
///
/// # Shapes
/// As [`swav`].
///
/// # Errors
/// As [`swav`].
pub fn swav_global<B: Backend>(
    loss: &SwavLoss,
    high: &[Tensor<B, 2>],
    low: &[Tensor<B, 2>],
    queue: Option<&[Tensor<B, 2>]>,
    all_reduce: Option<&dyn Fn(Tensor<B, 2>) -> Tensor<B, 2>>,
) -> Result<Tensor<B, 1>> {
    let n_views = high.len() + low.len();
    if high.is_empty() || n_views < 2 {
        return Err(Error::Shape {
            what: "swav views [high, low] (need a high view and another)",
            expected: vec![1, 1],
            actual: vec![high.len(), low.len()],
        });
    }
    let [n, k] = high[0].dims();
    for view in high.iter().chain(low) {
        check("swav view", vec![n, k], view.dims().to_vec())?;
    }
    if let Some(queue) = queue {
        check("swav queues", vec![high.len()], vec![queue.len()])?;
        for q in queue {
            let [rows, width] = q.dims();
            check("swav queue", vec![rows, k], vec![rows, width])?;
        }
    }

    let log_probs: Vec<Tensor<B, 2>> = high
        .iter()
        .chain(low)
        .map(|scores| log_softmax(scores.clone() / loss.temperature, 1)) // [n, K]
        .collect();
    let mut total = Tensor::<B, 1>::zeros([1], &high[0].device());
    for (i, scores) in high.iter().enumerate() {
        // Codes of view i, balanced together with its queue.
        let scores = match queue {
            Some(queue) => Tensor::cat(vec![scores.clone(), queue[i].clone()], 0),
            None => scores.clone(),
        };
        let codes = sinkhorn_global(
            scores,
            loss.sinkhorn_epsilon,
            loss.sinkhorn_iterations,
            all_reduce,
        )
        .slice([0..n, 0..k]); // [n, K]
        // Every other view predicts them.
        let mut swapped = Tensor::<B, 1>::zeros([1], &total.device());
        for (v, log_p) in log_probs.iter().enumerate() {
            if v != i {
                swapped = swapped - (codes.clone() * log_p.clone()).sum_dim(1).mean();
            }
        }
        total = total + swapped / (n_views - 1) as f64;
    }
    Ok(total / high.len() as f64)
}

fn check(what: &'static str, expected: Vec<usize>, actual: Vec<usize>) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::Shape {
            what,
            expected,
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goldens::Golden;
    use burn::backend::{Autodiff, Flex};

    type B = Autodiff<Flex>;

    fn check_case(case: &str) {
        let g = Golden::load(case);
        let device = Default::default();
        let settings = SwavLoss {
            temperature: g.param("temperature"),
            sinkhorn_epsilon: g.param("sinkhorn_epsilon"),
            sinkhorn_iterations: g.param("sinkhorn_iterations") as usize,
        };
        let views = |prefix: &str| -> Vec<Tensor<B, 2>> {
            g.names(prefix)
                .iter()
                .map(|n| g.tensor::<B, 2>(n, &device).require_grad())
                .collect()
        };
        let (high, low) = (views("in.high"), views("in.low"));
        assert_eq!((high.len(), low.len()), (2, 4));
        let queue: Vec<Tensor<B, 2>> = g
            .names("in.queue")
            .iter()
            .map(|n| g.tensor(n, &device))
            .collect();
        let queued = g.params["queue"].as_bool().unwrap();
        assert_eq!(queued, !queue.is_empty());

        let loss = swav(&settings, &high, &low, queued.then_some(&queue[..])).unwrap();
        g.assert_close("out.loss", loss.clone());
        let grads = loss.backward();
        for (name, view) in [("high", &high), ("low", &low)] {
            for (i, v) in view.iter().enumerate() {
                g.assert_close(&format!("grad.{name}{i}"), v.grad(&grads).unwrap());
            }
        }
    }

    #[test]
    fn matches_lightly_without_queue() {
        check_case("swav");
    }

    #[test]
    fn matches_lightly_with_queue() {
        check_case("swav_queue");
    }

    /// Rows (samples) sum to exactly 1 after any number of iterations (the last step of each
    /// is the per-sample normalisation); columns (prototypes) approach `n / K` as the
    /// iterations go on, and reach it once Sinkhorn has converged.
    #[test]
    fn codes_have_swav_marginals() {
        let g = Golden::load("swav");
        let device = Default::default();
        let scores = g.tensor::<Flex, 2>("in.high0", &device);
        let [n, k] = scores.dims();
        let target = n as f32 / k as f32;
        let sums = |t: Tensor<Flex, 2>, dim| -> Vec<f32> {
            t.sum_dim(dim).into_data().to_vec::<f32>().unwrap()
        };
        let mut deviations = Vec::new();
        for iterations in [1, 3, 10, 1000] {
            let codes = sinkhorn(scores.clone(), 0.05, iterations);
            let min = codes.clone().min().into_scalar();
            assert!(min >= 0.0, "negative code {min}");
            for row in sums(codes.clone(), 1) {
                assert!(
                    (row - 1.0).abs() < 1e-5,
                    "{iterations} iterations: row sum {row}"
                );
            }
            let deviation = sums(codes, 0)
                .iter()
                .map(|col| (col - target).abs() / target)
                .fold(0.0_f32, f32::max);
            deviations.push(deviation);
        }
        assert!(
            deviations.windows(2).all(|w| w[1] <= w[0]),
            "{deviations:?}"
        );
        assert!(deviations[3] < 1e-3, "not converged: {deviations:?}");
    }

    #[test]
    fn rejects_missing_queue_and_lone_view() {
        let device = Default::default();
        let high = vec![Tensor::<Flex, 2>::zeros([4, 6], &device); 2];
        let queue = vec![Tensor::<Flex, 2>::zeros([8, 6], &device)];
        let err = swav(&SwavLoss::default(), &high, &[], Some(&queue)).unwrap_err();
        assert!(matches!(
            err,
            Error::Shape {
                what: "swav queues",
                ..
            }
        ));
        let err = swav(&SwavLoss::default(), &high[..1], &[], None).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }));
    }
}
