//! The three update rules of [`super::Optim`], written from the PyTorch reference code, one
//! parameter tensor at a time.
//!
//! With `g` the gradient, `p` the parameter, `lr` and `wd` this step's learning rate and
//! weight decay:
//!
//! - **AdamW** (`torch.optim.AdamW`, `amsgrad=False`): `p *= 1 - lr wd` (decay group only);
//!   `m = beta1 m + (1 - beta1) g`; `v = beta2 v + (1 - beta2) g^2`;
//!   `p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`, `t` counting this
//!   parameter's steps from 1.
//! - **SGD** (`torch.optim.SGD`, dampening 0): `d = g + wd p` (every parameter with
//!   `decay_all`, as the MoCo v2 and SimSiam code pass all parameters to one group; else the
//!   decay group only); `buf = d` on the first step, then `buf = momentum buf + d`;
//!   `p -= lr (d + momentum buf)` with Nesterov, else `p -= lr buf`. No buffer when
//!   `momentum` is 0.
//! - **LARS** (facebookresearch/barlowtwins `main.py`, `class LARS`): for parameters with
//!   more than one dimension, `dp = g + wd p` and `dp *= eta |p| / |dp|` when both norms are
//!   positive (the trust ratio, else 1); 1-D parameters (biases, norm weights) take
//!   `dp = g`, no decay and no adaptation. `mu = momentum mu + dp` (`mu` starts at 0);
//!   `p -= lr mu`.
//!
//! Everything stays on the device: the LARS trust ratio is a `[1]` tensor, never read back.

use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

/// Which update rule [`super::Optim`] applies, with its hyper-parameters except the learning
/// rate and the weight decay's schedule (both given per step).
///
/// In a recipe: `rule = "adamw" | "sgd" | "lars"` beside the variant's keys.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
#[serde(tag = "rule", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimSettings {
    /// Adam with decoupled weight decay on the decay group of [`super::ParamGroups`].
    AdamW {
        /// `(beta1, beta2)`: MAE `(0.9, 0.95)`, DINO `(0.9, 0.999)`. A `beta2` near 1 makes
        /// the second moment slow to warm up (bias correction covers the start).
        betas: (f64, f64),
        /// Denominator epsilon, PyTorch's 1e-8. Larger values damp steps of rarely updated
        /// parameters; too small risks huge steps where `v` is ~0.
        eps: f64,
        /// Base decoupled weight decay (MAE 0.05; DINO's schedule starts at 0.04). The step
        /// takes the scheduled value; this is the value without a schedule.
        weight_decay: f64,
    },
    /// SGD with heavy-ball or Nesterov momentum (MoCo v2: 0.9, wd 1e-4; SimSiam: 0.9, wd 1e-4).
    Sgd {
        /// Momentum factor, 0 to 1 (0 = plain SGD, no buffer).
        momentum: f64,
        /// Nesterov momentum (`d + momentum buf` instead of `buf`).
        nesterov: bool,
        /// Base L2 weight decay added to the gradient.
        weight_decay: f64,
        /// Decay every parameter, biases and norms included (the MoCo v2 / SimSiam code);
        /// `false` decays only the decay group of [`super::ParamGroups`].
        decay_all: bool,
    },
    /// LARS with momentum (Barlow Twins: momentum 0.9, eta 0.001, wd 1.5e-6).
    Lars {
        /// Momentum factor, 0 to 1.
        momentum: f64,
        /// Trust coefficient: the step of a matrix is about `eta |p|` times `lr`. Too large
        /// and the layer-wise steps blow up; 0 freezes the matrices.
        eta: f64,
        /// Base L2 weight decay for matrices (added before the trust ratio).
        weight_decay: f64,
    },
}

impl OptimSettings {
    /// The rule's name as in a recipe (`adamw`, `sgd`, `lars`).
    pub fn rule(&self) -> &'static str {
        match self {
            Self::AdamW { .. } => "adamw",
            Self::Sgd { .. } => "sgd",
            Self::Lars { .. } => "lars",
        }
    }

    /// The base weight decay (the value to pass to `step` without a schedule).
    pub fn weight_decay(&self) -> f64 {
        match *self {
            Self::AdamW { weight_decay, .. }
            | Self::Sgd { weight_decay, .. }
            | Self::Lars { weight_decay, .. } => weight_decay,
        }
    }

    /// Whether the rule keeps a second moment per parameter (AdamW's `v`).
    pub fn has_second_moment(&self) -> bool {
        matches!(self, Self::AdamW { .. })
    }

    /// One update of one parameter tensor (see the module docs for the formulas).
    ///
    /// `in_decay_group` is the parameter's [`super::ParamGroups`] membership (AdamW, SGD);
    /// `state` is `None` on the parameter's first step. Returns the new parameter and state
    /// (no state for SGD without momentum).
    pub(super) fn update<B: Backend, const D: usize>(
        &self,
        step: &StepArgs,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<RuleState<B, D>>,
        in_decay_group: bool,
    ) -> (Tensor<B, D>, Option<RuleState<B, D>>) {
        let StepArgs { lr, weight_decay } = *step;
        match *self {
            Self::AdamW { betas, eps, .. } => {
                let decay = if in_decay_group { weight_decay } else { 0.0 };
                let (param, state) = adamw(param, grad, state, lr, decay, betas, eps);
                (param, Some(state))
            }
            Self::Sgd {
                momentum,
                nesterov,
                decay_all,
                ..
            } => {
                let decay = if decay_all || in_decay_group {
                    weight_decay
                } else {
                    0.0
                };
                sgd(param, grad, state, lr, decay, momentum, nesterov)
            }
            Self::Lars { momentum, eta, .. } => {
                let (param, state) = lars(param, grad, state, lr, weight_decay, momentum, eta);
                (param, Some(state))
            }
        }
    }
}

/// The per-step scalars every parameter shares.
#[derive(Debug, Clone, Copy)]
pub(super) struct StepArgs {
    /// This step's learning rate.
    pub(super) lr: f64,
    /// This step's weight decay (scheduled, or the settings' base value).
    pub(super) weight_decay: f64,
}

/// One parameter's optimiser state, in the parameter's shape.
#[derive(Debug, Clone)]
pub(super) struct RuleState<B: Backend, const D: usize> {
    /// Steps taken on this parameter (AdamW's `t` after the step).
    pub(super) step: u64,
    /// AdamW's `m`, SGD's `buf`, LARS's `mu`.
    pub(super) momentum: Tensor<B, D>,
    /// AdamW's `v`.
    pub(super) second_moment: Option<Tensor<B, D>>,
}

/// `torch.optim.AdamW` on one tensor; `decay` is 0 outside the decay group.
fn adamw<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<RuleState<B, D>>,
    lr: f64,
    decay: f64,
    (beta1, beta2): (f64, f64),
    eps: f64,
) -> (Tensor<B, D>, RuleState<B, D>) {
    let param = if lr * decay != 0.0 {
        param.mul_scalar(1.0 - lr * decay)
    } else {
        param
    };
    let grad_sq = grad.clone().square();
    let (step, m, v) = match state {
        Some(RuleState {
            step,
            momentum,
            second_moment,
        }) => {
            let v = second_moment.unwrap_or_else(|| momentum.zeros_like());
            (
                step + 1,
                momentum.mul_scalar(beta1) + grad.mul_scalar(1.0 - beta1),
                v.mul_scalar(beta2) + grad_sq.mul_scalar(1.0 - beta2),
            )
        }
        None => (
            1,
            grad.mul_scalar(1.0 - beta1),
            grad_sq.mul_scalar(1.0 - beta2),
        ),
    };
    let t = i32::try_from(step).unwrap_or(i32::MAX);
    let bias_correction1 = 1.0 - beta1.powi(t);
    let bias_correction2_sqrt = (1.0 - beta2.powi(t)).sqrt();
    let denom = v
        .clone()
        .sqrt()
        .div_scalar(bias_correction2_sqrt)
        .add_scalar(eps);
    let param = param - (m.clone() / denom).mul_scalar(lr / bias_correction1);
    (
        param,
        RuleState {
            step,
            momentum: m,
            second_moment: Some(v),
        },
    )
}

/// `torch.optim.SGD` (dampening 0) on one tensor; `decay` is 0 where it does not apply.
fn sgd<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<RuleState<B, D>>,
    lr: f64,
    decay: f64,
    momentum: f64,
    nesterov: bool,
) -> (Tensor<B, D>, Option<RuleState<B, D>>) {
    let d = if decay != 0.0 {
        grad + param.clone().mul_scalar(decay)
    } else {
        grad
    };
    if momentum == 0.0 {
        return (param - d.mul_scalar(lr), None);
    }
    let (step, buf) = match state {
        Some(s) => (s.step + 1, s.momentum.mul_scalar(momentum) + d.clone()),
        None => (1, d.clone()),
    };
    let update = if nesterov {
        d + buf.clone().mul_scalar(momentum)
    } else {
        buf.clone()
    };
    let state = RuleState {
        step,
        momentum: buf,
        second_moment: None,
    };
    (param - update.mul_scalar(lr), Some(state))
}

/// Barlow Twins' `LARS.step` on one tensor: decay and trust ratio for `D > 1` only.
fn lars<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: Option<RuleState<B, D>>,
    lr: f64,
    weight_decay: f64,
    momentum: f64,
    eta: f64,
) -> (Tensor<B, D>, RuleState<B, D>) {
    let dp = if D > 1 {
        let dp = if weight_decay != 0.0 {
            grad + param.clone().mul_scalar(weight_decay)
        } else {
            grad
        };
        let q = trust_ratio(param.clone(), dp.clone(), eta); // [1]
        dp * q.reshape([1; D])
    } else {
        grad
    };
    let (step, mu) = match state {
        Some(s) => (s.step + 1, s.momentum.mul_scalar(momentum) + dp),
        None => (1, dp),
    };
    let param = param - mu.clone().mul_scalar(lr);
    let state = RuleState {
        step,
        momentum: mu,
        second_moment: None,
    };
    (param, state)
}

/// `eta |p| / |dp|` when both L2 norms are positive, else 1, as a `[1]` tensor.
fn trust_ratio<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    dp: Tensor<B, D>,
    eta: f64,
) -> Tensor<B, 1> {
    let param_norm = param.square().sum().sqrt(); // [1]
    let update_norm = dp.square().sum().sqrt(); // [1]
    let both_positive = param_norm
        .clone()
        .greater_elem(0.0)
        .bool_and(update_norm.clone().greater_elem(0.0));
    // Keep the division finite where the ratio is not used.
    let safe_update_norm = update_norm
        .clone()
        .mask_fill(update_norm.lower_equal_elem(0.0), 1.0);
    let ratio = param_norm.clone().mul_scalar(eta) / safe_update_norm;
    param_norm.ones_like().mask_where(both_positive, ratio)
}
