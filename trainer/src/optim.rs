//! AdamW with parameter groups, and global-norm gradient clipping.
//!
//! burn 0.21's optimisers have no parameter groups: one `AdamW` applies one weight decay to
//! every parameter it receives gradients for. [`GroupedAdamW`] holds two burn `AdamW`
//! optimisers (decay and no decay) over disjoint parameter sets: it splits each step's
//! [`GradientsParams`] by [`ParamId`] and steps both. A parameter without a gradient is left
//! untouched by an optimiser, so each one only ever updates (and keeps moment state for)
//! its own group. The split follows timm `param_groups_weight_decay`: no decay for
//! parameters with at most one dimension (biases, LayerNorm weights) and for the names in
//! [`NO_WEIGHT_DECAY`] (class and mask tokens; position embeddings are fixed buffers here,
//! listed for completeness). Note that the official MAE code decays the tokens
//! (its `add_weight_decay` has an empty skip list); we follow timm and the task's spec.
//!
//! Epsilon: burn's `AdamWConfig` defaults to 1e-5; PyTorch (and so MAE's reported runs) use
//! 1e-8. We default to 1e-8 so that results transfer; it is a config key.
//!
//! Clipping: burn's `GradientClippingConfig::Norm` clips each parameter's gradient by its
//! own norm (see `burn-optim/src/grad_clipping/base.rs::clip_by_norm`, called per tensor from
//! the adaptor's mapper). PyTorch's `clip_grad_norm_` (used by MAE/DINO) scales all
//! gradients by one factor from the global norm. [`clip_grad_norm`] does the latter, on the
//! device without a host sync, and returns the global norm for the logs.
//!
//! Precision: the optimiser always sees f32 parameters and gradients, also in bf16 runs
//! (master weights; see [`crate::precision`]).

use std::collections::HashSet;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Tensor, backend::AutodiffBackend};
use serde::{Deserialize, Serialize};

/// Parameter names (last path component) that never get weight decay, whatever their rank.
pub const NO_WEIGHT_DECAY: &[&str] = &["cls_token", "mask_token", "pos_embed", "decoder_pos_embed"];

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

/// One trainable parameter and its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamEntry {
    /// Dotted path in the module tree (`encoder.blocks.0.attn.qkv.weight`).
    pub name: String,
    /// burn's id, the key of gradients and optimiser state.
    pub id: ParamId,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Whether weight decay applies.
    pub decay: bool,
}

/// The decay / no-decay split of a module's parameters.
#[derive(Debug, Clone)]
pub struct ParamGroups {
    /// Every float parameter, in module order.
    pub params: Vec<ParamEntry>,
    no_decay: HashSet<ParamId>,
}

impl ParamGroups {
    /// Splits `module`'s float parameters: no decay when `ndim <= 1` or the name is in
    /// [`NO_WEIGHT_DECAY`].
    pub fn new<B: burn::tensor::backend::Backend, M: Module<B>>(module: &M) -> Self {
        let mut visitor = GroupVisitor {
            path: Vec::new(),
            params: Vec::new(),
        };
        module.visit(&mut visitor);
        let no_decay = visitor
            .params
            .iter()
            .filter(|p| !p.decay)
            .map(|p| p.id)
            .collect();
        Self {
            params: visitor.params,
            no_decay,
        }
    }

    /// Whether `id` is in the no-decay group.
    pub fn is_no_decay(&self, id: ParamId) -> bool {
        self.no_decay.contains(&id)
    }
}

struct GroupVisitor {
    path: Vec<String>,
    params: Vec<ParamEntry>,
}

impl<B: burn::tensor::backend::Backend> ModuleVisitor<B> for GroupVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let leaf = self.path.last().map(String::as_str).unwrap_or("");
        let decay = D > 1 && !NO_WEIGHT_DECAY.contains(&leaf);
        self.params.push(ParamEntry {
            name: self.path.join("."),
            id: param.id,
            shape: param.shape().as_slice().to_vec(),
            decay,
        });
    }
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

/// Sums `g^2` over every gradient of `module`'s parameters.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = grad.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + sq,
                None => sq,
            });
        }
    }
}

/// Multiplies every gradient by one scalar tensor.
struct ScaleGrads<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: Tensor<B::InnerBackend, 1>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let factor = self.factor.clone().reshape([1; D]);
            self.grads
                .register::<B::InnerBackend, D>(param.id, grad * factor);
        }
    }
}

/// The global L2 norm of all of `module`'s gradients in `grads`, `[1]` on the device
/// (0 when there are none).
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    let mut visitor = SquaredNorm::<B> { grads, total: None };
    module.visit(&mut visitor);
    visitor
        .total
        .unwrap_or_else(|| Tensor::zeros([1], device))
        .sqrt()
}

/// PyTorch `clip_grad_norm_`: if the global norm exceeds `max_norm`, scales all gradients by
/// `max_norm / (norm + 1e-6)`. Returns the norm before clipping (`[1]`, on the device).
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    let norm = grad_norm::<B, M>(module, grads, device);
    let factor = (norm.clone() + 1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0);
    module.visit(&mut ScaleGrads::<B> { grads, factor });
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objectives::mae::MaeConfig;
    use crate::vit::VitConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{LayerNorm, Linear};

    type B = Autodiff<Flex>;

    #[derive(Module, Debug)]
    struct Toy<B: burn::tensor::backend::Backend> {
        linear: Linear<B>,
        norm: LayerNorm<B>,
        cls_token: Param<Tensor<B, 3>>,
    }

    fn toy(device: &burn::tensor::Device<B>) -> Toy<B> {
        Toy {
            linear: crate::vit::init_linear(3, 2, device),
            norm: crate::vit::init_layer_norm(2, device),
            cls_token: Param::from_tensor(Tensor::ones([1, 1, 2], device)),
        }
    }

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn groups_follow_timm() {
        let device = Default::default();
        let cfg = MaeConfig {
            encoder: VitConfig {
                img_size: 8,
                patch_size: 4,
                in_chans: 3,
                embed_dim: 8,
                depth: 1,
                num_heads: 2,
                mlp_ratio: 2.0,
            },
            decoder_embed_dim: 8,
            decoder_depth: 1,
            decoder_num_heads: 2,
            norm_pix_loss: true,
        };
        let groups = ParamGroups::new(&cfg.init::<B>(&device));
        let decay = |name: &str| {
            groups
                .params
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("{name}"))
                .decay
        };
        assert!(decay("encoder.blocks.0.attn.qkv.weight"));
        assert!(decay("encoder.patch_embed.proj.weight"));
        assert!(decay("decoder_pred.weight"));
        assert!(!decay("encoder.blocks.0.attn.qkv.bias"));
        assert!(!decay("encoder.blocks.0.norm1.gamma"));
        assert!(!decay("encoder.norm.beta"));
        assert!(!decay("encoder.cls_token"));
        assert!(!decay("mask_token"));
        // The encoder's position table is a parameter without gradient (never updated);
        // were it trained, it would not be decayed.
        assert!(!decay("encoder.pos_embed"));
    }

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

    #[test]
    fn clipping_uses_the_global_norm() {
        let device = Default::default();
        let model = toy(&device);
        let mut grads = GradientsParams::new();
        // Per-tensor norms 3 and 4, global norm 5: one factor 2.5 / 5 = 0.5 scales both
        // (per-tensor clipping, burn's `GradientClipping::Norm`, would give 2.5 and 2.5).
        grads.register::<Flex, 1>(
            model.norm.gamma.id,
            Tensor::from_floats([3.0, 0.0], &device),
        );
        grads.register::<Flex, 3>(
            model.cls_token.id,
            Tensor::from_floats([[[0.0, 4.0]]], &device),
        );
        let norm = clip_grad_norm::<B, _>(&model, &mut grads, 2.5, &device);
        assert!((norm.into_scalar() - 5.0).abs() < 1e-6);
        let g1 = grads
            .get::<Flex, 1>(model.norm.gamma.id)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let g2 = grads
            .get::<Flex, 3>(model.cls_token.id)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            (g1[0] - 1.5).abs() < 1e-5 && (g2[1] - 2.0).abs() < 1e-5,
            "{g1:?} {g2:?}"
        );
        // Below the threshold nothing changes.
        let norm = clip_grad_norm::<B, _>(&model, &mut grads, 10.0, &device);
        assert!((norm.into_scalar() - 2.5).abs() < 1e-5);
        let g1 = grads
            .get::<Flex, 1>(model.norm.gamma.id)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!((g1[0] - 1.5).abs() < 1e-5);
    }
}
