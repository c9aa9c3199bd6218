//! Batch normalisation with an explicit train/eval switch (PyTorch `nn.BatchNorm1d/2d`).
//!
//! burn's `BatchNorm` picks batch statistics when the backend is autodiff and running
//! statistics otherwise. Self-supervised methods need both on either backend: an EMA teacher
//! (BYOL, MoCo, DINO with a CNN) runs in *train* mode on a non-autodiff backend, and a
//! linear probe runs a trained student in *eval* mode under autodiff. So every forward here
//! takes a [`NormMode`].
//!
//! Semantics follow PyTorch exactly: in [`NormMode::Train`] the input is normalised with the
//! batch mean and the *biased* batch variance, and the running statistics move towards the
//! batch mean and the *unbiased* batch variance with `momentum` (0.1):
//! `running = (1 - momentum) * running + momentum * batch`. In [`NormMode::Eval`] the running
//! statistics are used and nothing changes.
//!
//! SyncBatchNorm: in a data-parallel run (while the loop has entered
//! [`crate::distributed::GlobalBatch::enter_batch_norm`], `[train] sync_batch_norm`), train
//! mode takes its statistics over the global batch, as PyTorch's `SyncBatchNorm`: each rank
//! sums `[sum x, sum x^2, count]` per channel, one differentiable all-reduce adds them up
//! ([`crate::distributed::GlobalBatch::all_reduce_sum`]), and the mean and biased variance
//! (`E[x^2] - mean^2`) of all ranks' samples normalise the local ones; the running
//! statistics move towards the global mean and unbiased variance. Alone, nothing changes.
//!
//! Parameter names are PyTorch's (`weight`, `bias`, `running_mean`, `running_var`), so a
//! timm state dict maps onto the module paths as they are. The running statistics are
//! burn [`RunningState`]s (like burn's own `BatchNorm`): saved in records, visited as float
//! tensors, but never given gradients, and updated through `&self` during the forward.
//! `num_batches_tracked` is not kept (PyTorch fills it in when it is absent from a state
//! dict, and only uses it when `momentum=None`).
//!
//! Cloning: a cloned module shares its running statistics with the original (burn's
//! `RunningState` is reference counted). To give a teacher its own statistics, build a fresh
//! module and `load_record` the original's record into it.

use burn::module::{Initializer, Module, Param, RunningState};
use burn::tensor::{ElementConversion, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

/// PyTorch's `BatchNorm` epsilon.
pub const BATCH_NORM_EPS: f64 = 1e-5;

/// PyTorch's `BatchNorm` momentum for the running statistics.
pub const BATCH_NORM_MOMENTUM: f64 = 0.1;

/// Which statistics batch normalisation uses (PyTorch `module.train()` / `module.eval()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormMode {
    /// Batch statistics; the running statistics are updated.
    Train,
    /// Running statistics; nothing is updated.
    Eval,
}

/// Shape of a [`BatchNorm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchNormConfig {
    /// Channels `C` (dimension 1 of the input).
    pub num_features: usize,
    /// Added to the variance before the square root (PyTorch 1e-5).
    pub eps: f64,
    /// Weight of the new batch in the running statistics (PyTorch 0.1). 0 freezes them;
    /// 1 keeps only the last batch.
    pub momentum: f64,
    /// Whether there is a learned per-channel scale `weight` and shift `bias` (PyTorch
    /// `affine`). SimSiam's and MoCo v3's last projector layer has none.
    pub affine: bool,
}

impl BatchNormConfig {
    /// PyTorch's defaults: eps 1e-5, momentum 0.1, affine.
    pub fn new(num_features: usize) -> Self {
        Self {
            num_features,
            eps: BATCH_NORM_EPS,
            momentum: BATCH_NORM_MOMENTUM,
            affine: true,
        }
    }

    /// The same without `weight` and `bias` (PyTorch `affine=False`).
    pub fn without_affine(mut self) -> Self {
        self.affine = false;
        self
    }

    /// Weight 1, bias 0, running mean 0, running variance 1 (PyTorch's initial state).
    pub fn init<B: Backend>(&self, device: &B::Device) -> BatchNorm<B> {
        let c = self.num_features;
        BatchNorm {
            weight: self.affine.then(|| Initializer::Ones.init([c], device)),
            bias: self.affine.then(|| Initializer::Zeros.init([c], device)),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
            eps: self.eps,
            momentum: self.momentum,
        }
    }
}

/// Batch normalisation over dimension 1 of `[n, c]` or `[n, c, h, w]` inputs.
#[derive(Module, Debug)]
pub struct BatchNorm<B: Backend> {
    /// Per-channel scale `gamma` `[C]` (absent without affine).
    pub weight: Option<Param<Tensor<B, 1>>>,
    /// Per-channel shift `beta` `[C]` (absent without affine).
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Running mean `[C]`, used in eval mode.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (unbiased) variance `[C]`, used in eval mode.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// Variance epsilon.
    pub eps: f64,
    /// Running-statistics momentum.
    pub momentum: f64,
}

impl<B: Backend> BatchNorm<B> {
    /// Normalises each channel; in [`NormMode::Train`] also updates the running statistics.
    ///
    /// With a single value per channel (`[1, c]` in train mode) PyTorch refuses; here the
    /// output is `bias` and the running variance moves towards 0 (the biased variance).
    ///
    /// # Shapes
    /// `x` `[n, c, ...]` (`D >= 2`) -> `[n, c, ...]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, mode: NormMode) -> Tensor<B, D> {
        let dims = x.dims();
        let c = dims[1];
        let mut stat_shape = [1; D]; // [1, c, 1, 1]
        stat_shape[1] = c;
        let global = match mode {
            NormMode::Train => crate::distributed::batch_norm_ranks(),
            NormMode::Eval => None,
        };
        let (centered, var) = match (mode, global) {
            (NormMode::Train, Some(global)) => {
                let (mean, var, count) = global_statistics(x.clone(), &global);
                let (mean, var) = (mean.reshape(stat_shape), var.reshape(stat_shape));
                self.update_running(mean.clone(), var.clone(), count);
                (x - mean, var)
            }
            (NormMode::Train, None) => {
                let mean = mean_but_channels(x.clone()); // [1, c, 1, 1]
                let centered = x - mean.clone();
                let var = mean_but_channels(centered.clone().square()); // biased
                let count = dims.iter().product::<usize>() / c.max(1);
                self.update_running(mean, var.clone(), count);
                (centered, var)
            }
            (NormMode::Eval, _) => {
                let device = x.device();
                let mean = self.running_mean.value_sync().to_device(&device);
                let var = self.running_var.value_sync().to_device(&device);
                (x - mean.reshape(stat_shape), var.reshape(stat_shape))
            }
        };
        let mut scale = var.add_scalar(self.eps).sqrt().recip(); // [1, c, 1, 1]
        if let Some(weight) = &self.weight {
            scale = scale * weight.val().reshape(stat_shape);
        }
        let y = centered * scale;
        match &self.bias {
            Some(bias) => y + bias.val().reshape(stat_shape),
            None => y,
        }
    }

    /// `running = (1 - momentum) running + momentum batch`, with the unbiased variance.
    fn update_running<const D: usize>(&self, mean: Tensor<B, D>, var: Tensor<B, D>, count: usize) {
        let [c] = self.running_mean.value().dims();
        let device = mean.device();
        let m = self.momentum;
        let unbiased = if count > 1 {
            count as f64 / (count - 1) as f64
        } else {
            1.0
        };
        let batch_mean = mean.detach().reshape([c]);
        let batch_var = var.detach().reshape([c]).mul_scalar(unbiased);
        let old_mean = self.running_mean.value_sync().to_device(&device);
        let old_var = self.running_var.value_sync().to_device(&device);
        self.running_mean
            .update((old_mean.mul_scalar(1.0 - m) + batch_mean.mul_scalar(m)).detach());
        self.running_var
            .update((old_var.mul_scalar(1.0 - m) + batch_var.mul_scalar(m)).detach());
        // Commit now: `Module::visit` (export, parameter listing) reads the committed value
        // only, and a later update on this thread would otherwise be averaged with this one.
        let _ = self.running_mean.value_sync();
        let _ = self.running_var.value_sync();
    }
}

/// Mean, biased variance (both `[c]`) and sample count per channel of every rank's `x`
/// together, through one all-reduce of `[sum x, sum x^2, count]` (differentiable).
///
/// # Shapes
/// `x`: `[n, c, ...]`; returns `[c]`, `[c]` and a count.
fn global_statistics<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    global: &crate::distributed::GlobalBatch,
) -> (Tensor<B, 1>, Tensor<B, 1>, usize) {
    let dims = x.dims();
    let c = dims[1];
    let local_count = dims.iter().product::<usize>() / c.max(1);
    let sum_but_channels =
        |t: Tensor<B, D>| (0..D).filter(|&d| d != 1).fold(t, |t, d| t.sum_dim(d));
    let sum = sum_but_channels(x.clone()).reshape([1, c]); // [1, c]
    let squares = sum_but_channels(x.square()).reshape([1, c]); // [1, c]
    let count = Tensor::full([1, c], local_count as f64, &sum.device()); // [1, c]
    let total = global.all_reduce_sum(Tensor::cat(vec![sum, squares, count], 0)); // [3, c]
    let n = total.clone().slice(2..3).reshape([c]); // [c]
    // Every channel has the same count; exact in f32 up to 2^24 samples per channel.
    let count = n.clone().slice(0..1).into_scalar().elem::<f64>().round() as usize;
    let mean = total.clone().slice(0..1).reshape([c]) / n.clone(); // [c]
    let var = (total.slice(1..2).reshape([c]) / n - mean.clone().square()).clamp_min(0.0); // [c]
    (mean, var, count)
}

/// Mean over every dimension but 1, keeping them: `[n, c, h, w]` -> `[1, c, 1, 1]`.
fn mean_but_channels<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    (0..D).filter(|&d| d != 1).fold(x, |t, d| t.mean_dim(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{TensorData, Tolerance};

    type B = Flex;

    fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    fn assert_near(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    /// One channel over two samples: values 1, 3 (mean 2, biased var 1, unbiased 2), and a
    /// second channel 0, 0 (var 0).
    fn batch() -> Tensor<B, 2> {
        let device = Default::default();
        Tensor::from_data(TensorData::new(vec![1f32, 0., 3., 0.], [2, 2]), &device)
    }

    #[test]
    fn train_mode_uses_the_biased_batch_variance_and_updates_with_the_unbiased_one() {
        let device = Default::default();
        let bn = BatchNormConfig::new(2).init::<B>(&device);
        let y = bn.forward(batch(), NormMode::Train);
        let s = 1.0 / (1.0f32 + 1e-5).sqrt();
        assert_near(&host(y), &[-s, 0., s, 0.]);
        // mean: 0.9 * 0 + 0.1 * [2, 0]; var: 0.9 * 1 + 0.1 * [2, 0].
        assert_near(&host(bn.running_mean.value()), &[0.2, 0.0]);
        assert_near(&host(bn.running_var.value()), &[1.1, 0.9]);
        // A second step compounds.
        bn.forward(batch(), NormMode::Train);
        assert_near(&host(bn.running_mean.value()), &[0.38, 0.0]);
        assert_near(&host(bn.running_var.value()), &[1.19, 0.81]);
    }

    #[test]
    fn eval_mode_uses_running_statistics_and_changes_nothing() {
        let device = Default::default();
        let mut bn = BatchNormConfig::new(2).init::<B>(&device);
        bn.weight = Some(Param::from_data([2f32, 1.], &device));
        bn.bias = Some(Param::from_data([0.5f32, -1.], &device));
        bn.running_mean = RunningState::new(Tensor::from_data([1f32, 0.], &device));
        bn.running_var = RunningState::new(Tensor::from_data([4f32, 1.], &device));
        let y = bn.forward(batch(), NormMode::Eval);
        let (a, b) = (1.0 / (4.0f32 + 1e-5).sqrt(), 1.0 / (1.0f32 + 1e-5).sqrt());
        // (x - mean) / sqrt(var + eps) * weight + bias
        let expect = [
            (1. - 1.) * a * 2. + 0.5,
            -1.,
            (3. - 1.) * a * 2. + 0.5,
            -1. + 0. * b,
        ];
        assert_near(&host(y), &expect);
        assert_near(&host(bn.running_mean.value()), &[1., 0.]);
        assert_near(&host(bn.running_var.value()), &[4., 1.]);
    }

    #[test]
    fn four_d_statistics_are_per_channel_over_batch_and_space() {
        let device = Default::default();
        let bn = BatchNormConfig::new(3).without_affine().init::<B>(&device);
        assert!(bn.weight.is_none() && bn.bias.is_none());
        let x = Tensor::<B, 4>::random(
            [4, 3, 5, 6],
            burn::tensor::Distribution::Normal(1.0, 2.0),
            &device,
        );
        let y = bn.forward(x.clone(), NormMode::Train);
        // Normalised output: per-channel mean 0 and biased variance 1 (up to eps).
        let mean = host(mean_but_channels(y.clone()));
        assert_near(&mean, &[0.0; 3]);
        let var = host(mean_but_channels(y.square()));
        for v in var {
            assert!((v - 1.0).abs() < 1e-3, "{v}");
        }
        // Running mean = 0.1 * batch mean; running var = 0.9 + 0.1 * unbiased variance.
        let xm = mean_but_channels(x.clone());
        let n = (4 * 5 * 6) as f32;
        let unbiased = mean_but_channels((x - xm.clone()).square()).mul_scalar(n / (n - 1.0));
        bn.running_mean.value().into_data().assert_approx_eq::<f32>(
            &xm.mul_scalar(0.1).reshape([3]).into_data(),
            Tolerance::default(),
        );
        bn.running_var.value().into_data().assert_approx_eq::<f32>(
            &unbiased
                .mul_scalar(0.1)
                .add_scalar(0.9)
                .reshape([3])
                .into_data(),
            Tolerance::default(),
        );
    }

    /// The input, scale and shift gradients of train mode against BatchNorm's closed-form
    /// backward (`dx = (γ/σ)·(dy − mean(dy) − x̂·mean(dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`, sums
    /// and means per channel over batch and space), in f64 on the host. Every mean over a
    /// dimension and every broadcast of the module goes through autodiff here, so this also
    /// checks the patched `mean_dim`/`sum_dim` backward (patches/README.md, burn-autodiff).
    #[test]
    fn train_mode_gradients_equal_the_closed_form() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let [n, c, h, w] = [4, 3, 5, 6];
        let mut bn = BatchNormConfig::new(c).init::<A>(&device);
        bn.weight = Some(Param::from_data([1.5f32, -0.5, 2.0], &device));
        bn.bias = Some(Param::from_data([0.1f32, 0.2, -0.3], &device));
        let normal = burn::tensor::Distribution::Normal(1.0, 2.0);
        let x = Tensor::<A, 4>::random([n, c, h, w], normal, &device).require_grad();
        let dy = Tensor::<A, 4>::random([n, c, h, w], normal, &device);
        let host = |t: &Tensor<A, 4>| t.clone().into_data().to_vec::<f32>().unwrap();
        let (x_host, dy_host) = (host(&x), host(&dy));
        let grads = (bn.forward(x.clone(), NormMode::Train) * dy)
            .sum()
            .backward();
        let dx = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let param_grad = |p: &Option<Param<Tensor<A, 1>>>| {
            p.as_ref()
                .unwrap()
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let (dgamma, dbeta) = (param_grad(&bn.weight), param_grad(&bn.bias));
        let gamma = [1.5f64, -0.5, 2.0];
        let m = (n * h * w) as f64;
        let at = |b: usize, ch: usize, i: usize| (b * c + ch) * h * w + i;
        for ch in 0..c {
            let idx: Vec<usize> = (0..n)
                .flat_map(|b| (0..h * w).map(move |i| at(b, ch, i)))
                .collect();
            let mean = idx.iter().map(|&k| x_host[k] as f64).sum::<f64>() / m;
            let var = idx
                .iter()
                .map(|&k| (x_host[k] as f64 - mean).powi(2))
                .sum::<f64>()
                / m;
            let rstd = 1.0 / (var + BATCH_NORM_EPS).sqrt();
            let xhat = |k: usize| (x_host[k] as f64 - mean) * rstd;
            let dy_mean = idx.iter().map(|&k| dy_host[k] as f64).sum::<f64>() / m;
            let dy_xhat = idx
                .iter()
                .map(|&k| dy_host[k] as f64 * xhat(k))
                .sum::<f64>()
                / m;
            // Within 1e-4 relative (the sums run over 120 values of a few units each).
            let close =
                |got: f32, want: f64| (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs());
            assert!(close(dgamma[ch], dy_xhat * m), "dgamma[{ch}]");
            assert!(close(dbeta[ch], dy_mean * m), "dbeta[{ch}]");
            for &k in &idx {
                let want = gamma[ch] * rstd * (dy_host[k] as f64 - dy_mean - xhat(k) * dy_xhat);
                assert!(close(dx[k], want), "dx[{k}]: {} vs {want}", dx[k]);
            }
        }
    }

    #[test]
    fn running_statistics_are_saved_but_get_no_gradient() {
        type A = Autodiff<Flex>;
        let device = Default::default();
        let bn = BatchNormConfig::new(2).init::<A>(&device);
        let x = Tensor::<A, 2>::from_data(TensorData::new(vec![1f32, 0., 3., 2.], [2, 2]), &device)
            .require_grad();
        let y = bn.forward(x.clone(), NormMode::Train);
        let grads = (y * Tensor::from_data([[1f32, 2.], [3., 5.]], &device))
            .sum()
            .backward();
        assert!(x.grad(&grads).is_some());
        assert!(bn.weight.as_ref().unwrap().grad(&grads).is_some());
        // 4 visited tensors of 2 values: weight, bias, running mean and variance.
        assert_eq!(bn.num_params(), 8);
        let record = bn.clone().into_record();
        let fresh = BatchNormConfig::new(2)
            .init::<A>(&device)
            .load_record(record);
        assert_near(
            &fresh
                .running_mean
                .value()
                .inner()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            &[0.2, 0.1],
        );
    }
}
