//! [`GroupedAdamW`]: burn's AdamW twice, once per parameter group (the MAE optimiser
//! before [`super::Optim`]; kept until the training loop moves over).
//!
//! burn 0.21's optimisers have no parameter groups: one `AdamW` applies one weight decay to
//! every parameter it receives gradients for. [`GroupedAdamW`] holds two burn `AdamW`
//! optimisers (decay and no decay) over disjoint parameter sets: it splits each step's
//! [`GradientsParams`] by [`ParamId`] and steps both. A parameter without a gradient is left
//! untouched by an optimiser, so each one only ever updates (and keeps moment state for)
//! its own group.
//!
//! Epsilon: burn's `AdamWConfig` defaults to 1e-5; PyTorch (and so MAE's reported runs) use
//! 1e-8. We default to 1e-8 so that results transfer; it is a config key.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Tensor, backend::AutodiffBackend};
use serde::{Deserialize, Serialize};

use super::ParamGroups;

/// AdamW's hyper-parameters except the learning rate (which the schedule gives per step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    /// `(beta1, beta2)`; MAE uses `(0.9, 0.95)`.
    pub betas: (f32, f32),
    /// Denominator epsilon (PyTorch 1e-8).
    pub eps: f32,
    /// Decoupled weight decay for the decayed group (MAE 0.05).
    pub weight_decay: f32,
}

/// Moves the gradients of the no-decay parameters out of `grads` into a second set.
struct GradSplitter<'a> {
    groups: &'a ParamGroups,
    grads: &'a mut GradientsParams,
    no_decay: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradSplitter<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.groups.is_no_decay(param.id)
            && let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id)
        {
            self.no_decay.register::<B::InnerBackend, D>(param.id, grad);
        }
    }
}

/// The optimiser state of a [`GroupedAdamW`], one burn record per group.
pub struct GroupedAdamWRecord<M: AutodiffModule<B>, B: AutodiffBackend> {
    /// State of the decayed group's AdamW.
    pub decay: <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record,
    /// State of the no-decay group's AdamW.
    pub no_decay: <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record,
}

/// AdamW with a decayed and a non-decayed parameter group (see the module docs).
#[derive(Clone)]
pub struct GroupedAdamW<M: AutodiffModule<B>, B: AutodiffBackend> {
    decay: OptimizerAdaptor<AdamW, M, B>,
    no_decay: OptimizerAdaptor<AdamW, M, B>,
    groups: ParamGroups,
    settings: AdamWSettings,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> std::fmt::Debug for GroupedAdamW<M, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let decayed = self.groups.params.iter().filter(|p| p.decay).count();
        f.debug_struct("GroupedAdamW")
            .field("settings", &self.settings)
            .field("decayed_params", &decayed)
            .field("no_decay_params", &(self.groups.params.len() - decayed))
            .finish()
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> GroupedAdamW<M, B> {
    /// Groups `model`'s parameters and builds one AdamW per group.
    pub fn new(settings: AdamWSettings, model: &M) -> Self {
        let adamw = |weight_decay: f32| {
            AdamWConfig::new()
                .with_beta_1(settings.betas.0)
                .with_beta_2(settings.betas.1)
                .with_epsilon(settings.eps)
                .with_weight_decay(weight_decay)
                .init::<B, M>()
        };
        Self {
            decay: adamw(settings.weight_decay),
            no_decay: adamw(0.0),
            groups: ParamGroups::new(model),
            settings,
        }
    }

    /// The parameter split.
    pub fn groups(&self) -> &ParamGroups {
        &self.groups
    }

    /// The hyper-parameters.
    pub fn settings(&self) -> AdamWSettings {
        self.settings
    }

    /// One AdamW step with learning rate `lr` on both groups; returns the updated model.
    pub fn step(&mut self, lr: f64, model: M, mut grads: GradientsParams) -> M {
        let mut splitter = GradSplitter {
            groups: &self.groups,
            grads: &mut grads,
            no_decay: GradientsParams::new(),
        };
        model.visit(&mut splitter);
        let no_decay = splitter.no_decay;
        let model = self.decay.step(lr, model, grads);
        self.no_decay.step(lr, model, no_decay)
    }

    /// The moment estimates and step counts of both groups.
    pub fn to_record(&self) -> GroupedAdamWRecord<M, B> {
        GroupedAdamWRecord {
            decay: self.decay.to_record(),
            no_decay: self.no_decay.to_record(),
        }
    }

    /// Restores the state saved by [`GroupedAdamW::to_record`].
    pub fn load_record(mut self, record: GroupedAdamWRecord<M, B>) -> Self {
        self.decay = self.decay.load_record(record.decay);
        self.no_decay = self.no_decay.load_record(record.no_decay);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::tests::{toy, values};
    use burn::backend::Flex;

    /// With zero gradients Adam's update is zero, so the only change is the decoupled decay
    /// `w <- w (1 - lr wd)`: it must show on the matrix and nowhere else.
    #[test]
    fn zero_gradient_step_decays_only_the_decay_group() {
        let device = Default::default();
        let model = toy(&device);
        let settings = AdamWSettings {
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let mut optim = GroupedAdamW::new(settings, &model);
        let before = (
            values(model.linear.weight.val()),
            values(model.cls_token.val()),
            values(model.norm.gamma.val()),
        );

        let mut grads = GradientsParams::new();
        grads.register::<Flex, 2>(model.linear.weight.id, Tensor::zeros([3, 2], &device));
        grads.register::<Flex, 1>(
            model.linear.bias.as_ref().unwrap().id,
            Tensor::zeros([2], &device),
        );
        grads.register::<Flex, 3>(model.cls_token.id, Tensor::zeros([1, 1, 2], &device));
        grads.register::<Flex, 1>(model.norm.gamma.id, Tensor::zeros([2], &device));
        let model = optim.step(0.1, model, grads);

        for (a, b) in values(model.linear.weight.val()).iter().zip(&before.0) {
            assert!(
                (a - b * 0.95).abs() < 1e-7,
                "decayed by lr*wd = 0.05: {a} vs {b}"
            );
        }
        assert_eq!(
            values(model.cls_token.val()),
            before.1,
            "class token not decayed"
        );
        assert_eq!(
            values(model.norm.gamma.val()),
            before.2,
            "norm weight not decayed"
        );
        assert_eq!(
            values(model.linear.bias.as_ref().unwrap().val()),
            vec![0.0, 0.0]
        );
    }
}
