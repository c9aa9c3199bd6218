//! Per-parameter gradient clipping (DINO `utils.clip_gradients`), the `[optim]
//! clip_grad_mode = "per_parameter"` alternative to the global norm of
//! [`crate::optim::clip_grad_norm`] (PyTorch `clip_grad_norm_`).
//!
//! ```text
//! for each parameter p with a gradient g:
//!     coef = max_norm / (|g|_2 + 1e-6);  if coef < 1: g = g * coef
//! ```
//!
//! Each parameter is clipped on its own, so one exploding layer does not shrink the others'
//! steps. Runs on the device; nothing is read back.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;

/// Scales every parameter's gradient in `grads` whose L2 norm exceeds `max_norm` down to it.
pub fn clip_grad_per_parameter<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) {
    module.visit(&mut ClipEach::<B> {
        grads,
        max_norm,
        _backend: std::marker::PhantomData,
    });
}

struct ClipEach<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    max_norm: f64,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ClipEach<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let norm = grad.clone().square().sum().sqrt(); // [1]
            let coef = (norm + 1e-6)
                .recip()
                .mul_scalar(self.max_norm)
                .clamp_max(1.0)
                .reshape([1; D]);
            self.grads
                .register::<B::InnerBackend, D>(param.id, grad * coef);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Module;
    use burn::nn::Linear;

    type A = Autodiff<Flex>;

    #[derive(Module, Debug)]
    struct Two<B: burn::tensor::backend::Backend> {
        big: Linear<B>,
        small: Linear<B>,
    }

    #[test]
    fn each_parameter_is_clipped_on_its_own() {
        let device = Default::default();
        let net = Two::<A> {
            big: crate::vit::init_linear(3, 2, &device),
            small: crate::vit::init_linear(3, 2, &device),
        };
        let x = Tensor::<A, 2>::ones([4, 3], &device);
        // A large loss on `big`, a tiny one on `small`.
        let loss = net.big.forward(x.clone()).sum() * 100.0 + net.small.forward(x).sum() * 1e-3;
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        let norm = |g: &GradientsParams, id| {
            g.get::<Flex, 2>(id)
                .unwrap()
                .square()
                .sum()
                .sqrt()
                .into_scalar()
        };
        let small_before = norm(&grads, net.small.weight.id);
        clip_grad_per_parameter::<A, _>(&net, &mut grads, 1.0);
        let big = norm(&grads, net.big.weight.id);
        assert!((big - 1.0).abs() < 1e-4, "clipped to the max norm: {big}");
        let small = norm(&grads, net.small.weight.id);
        assert_eq!(small, small_before, "a small gradient is left alone");
    }
}
