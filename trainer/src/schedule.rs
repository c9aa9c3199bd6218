//! Schedules as pure functions of the optimiser step: the learning rate ([`WarmupCosine`])
//! and the cosine curves of teacher momentum and weight decay ([`CosineSchedule`]).
//!
//! [`WarmupCosine`]: MAE `util/lr_sched.py::adjust_learning_rate`, evaluated per optimiser step (MAE calls it
//! per iteration with a fractional epoch, which is the same curve in steps). burn's
//! `ComposedLrScheduler` runs its parts at the same time rather than one after another,
//! so warmup-then-cosine is this small pure function of the step: nothing to save but the
//! step itself, and a resumed run continues on the same curve.

use serde::{Deserialize, Serialize};

/// A half cosine from `start` at step 0 to `end` at `total_steps`, `end` after that: DINO
/// `utils.cosine_scheduler` without warmup, evaluated per step.
///
/// Used for the teacher momentum (BYOL, DINO: 0.996 → 1; BYOL writes it
/// `tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`, the same curve) and the weight decay
/// (DINO 0.04 → 0.4). `start > end` decays, `start < end` rises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    /// The value at step 0.
    pub start: f64,
    /// The value at `total_steps` and after.
    pub end: f64,
    /// Optimiser steps of the curve (0 = `end` throughout).
    pub total_steps: u64,
}

impl CosineSchedule {
    /// A schedule that stays at `value`.
    pub fn constant(value: f64) -> Self {
        Self {
            start: value,
            end: value,
            total_steps: 0,
        }
    }

    /// The value at optimiser step `step` (0-based):
    /// `end + (start - end) * 0.5 * (1 + cos(pi * step / total_steps))`.
    pub fn value(&self, step: u64) -> f64 {
        if step >= self.total_steps {
            return self.end;
        }
        let progress = step as f64 / self.total_steps as f64;
        self.end + (self.start - self.end) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Linear warmup from 0 to `peak_lr` over `warmup_steps`, then cosine to `min_lr` at
/// `total_steps`; `min_lr` after that.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    /// Learning rate at the end of warmup (the absolute lr: base lr x batch / 256).
    pub peak_lr: f64,
    /// Floor of the cosine.
    pub min_lr: f64,
    /// Optimiser steps of linear warmup (0 = start at `peak_lr`).
    pub warmup_steps: u64,
    /// Optimiser steps of the whole run.
    pub total_steps: u64,
}

impl WarmupCosine {
    /// The learning rate of optimiser step `step` (0-based).
    ///
    /// `step < warmup`: `peak * step / warmup` (0 at step 0, as MAE).
    /// Then `min + (peak - min) * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps);
        if decay_steps == 0 || step >= self.total_steps {
            return if decay_steps == 0 {
                self.peak_lr
            } else {
                self.min_lr
            };
        }
        let progress = (step - self.warmup_steps) as f64 / decay_steps as f64;
        self.min_lr
            + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MAE formula written with epochs, as in `lr_sched.py`, with `steps_per_epoch`
    /// iterations per epoch.
    fn mae_reference(step: u64, steps_per_epoch: u64, s: &WarmupCosine) -> f64 {
        let epoch = step as f64 / steps_per_epoch as f64;
        let warmup_epochs = s.warmup_steps as f64 / steps_per_epoch as f64;
        let epochs = s.total_steps as f64 / steps_per_epoch as f64;
        if epoch < warmup_epochs {
            s.peak_lr * epoch / warmup_epochs
        } else {
            s.min_lr
                + (s.peak_lr - s.min_lr)
                    * 0.5
                    * (1.0
                        + (std::f64::consts::PI * (epoch - warmup_epochs)
                            / (epochs - warmup_epochs))
                            .cos())
        }
    }

    #[test]
    fn matches_the_mae_formula_at_every_step() {
        let s = WarmupCosine {
            peak_lr: 2.4e-3,
            min_lr: 1e-6,
            warmup_steps: 40,
            total_steps: 800,
        };
        for step in 0..800 {
            let (a, b) = (s.lr(step), mae_reference(step, 10, &s));
            assert!((a - b).abs() < 1e-12, "step {step}: {a} vs {b}");
        }
    }

    #[test]
    fn landmarks() {
        let s = WarmupCosine {
            peak_lr: 1.0,
            min_lr: 0.1,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(10), 1.0);
        assert!((s.lr(60) - 0.55).abs() < 1e-12, "half way down the cosine");
        assert_eq!(s.lr(110), 0.1);
        assert_eq!(s.lr(10_000), 0.1);
        let flat = WarmupCosine {
            peak_lr: 1.0,
            min_lr: 0.0,
            warmup_steps: 0,
            total_steps: 0,
        };
        assert_eq!(flat.lr(3), 1.0);
    }

    /// BYOL section 3.2: `tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2`.
    #[test]
    fn teacher_momentum_is_byols_formula() {
        let (tau_base, total) = (0.996, 1000);
        let s = CosineSchedule {
            start: tau_base,
            end: 1.0,
            total_steps: total,
        };
        for k in 0..=total {
            let byol = 1.0
                - (1.0 - tau_base) * ((std::f64::consts::PI * k as f64 / total as f64).cos() + 1.0)
                    / 2.0;
            assert!((s.value(k) - byol).abs() < 1e-12, "step {k}");
        }
        assert_eq!(s.value(0), tau_base);
        assert_eq!(s.value(total), 1.0);
        assert_eq!(s.value(total + 5), 1.0);
    }

    /// DINO `cosine_scheduler(0.04, 0.4, epochs, niter_per_ep)`:
    /// `final + 0.5 (base - final) (1 + cos(pi i / len))`, rising here.
    #[test]
    fn weight_decay_rises_like_dino() {
        let s = CosineSchedule {
            start: 0.04,
            end: 0.4,
            total_steps: 100,
        };
        assert!((s.value(0) - 0.04).abs() < 1e-15);
        assert!((s.value(50) - 0.22).abs() < 1e-12, "midpoint");
        assert!((s.value(25) - (0.4 - 0.36 * 0.5 * (1.0 + 0.5f64.sqrt()))).abs() < 1e-12);
        let values: Vec<f64> = (0..=100).map(|k| s.value(k)).collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "monotone");
        assert_eq!(s.value(100), 0.4);
        assert_eq!(CosineSchedule::constant(0.05).value(7), 0.05);
    }
}
