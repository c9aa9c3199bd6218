//! Optimisers: parameter groups, global-norm gradient clipping, and [`Optim`], one
//! optimiser over the three update rules that self-supervised recipes use.
//!
//! | rule | recipes | file |
//! |------|---------|------|
//! | AdamW (`torch.optim.AdamW`) | MAE, DINO (cosine weight decay 0.04 → 0.4), MoCo v3, iBOT | [`rules`] |
//! | SGD with momentum (`torch.optim.SGD`) | MoCo v2, SimSiam | [`rules`] |
//! | LARS (Barlow Twins `main.py`) | SimCLR, BYOL, Barlow Twins, VICReg, SwAV | [`rules`] |
//!
//! [`Optim`] (in `optimizer.rs`) takes the learning rate *and* the weight decay at every step,
//! so both can follow a schedule ([`crate::schedule`]); burn's optimisers fix the decay at
//! construction. It applies the rules itself, with tensor ops on the inner backend, keeps
//! one state per parameter keyed by [`ParamId`], and saves it as a burn record
//! ([`OptimRecord`]).
//!
//! Groups: [`ParamGroups`] follows timm `param_groups_weight_decay`: no decay for
//! parameters with at most one dimension (biases, LayerNorm weights) and for the names in
//! [`NO_WEIGHT_DECAY`] (class and mask tokens; position embeddings are fixed buffers here,
//! listed for completeness). Note that the official MAE code decays the tokens
//! (its `add_weight_decay` has an empty skip list); we follow timm and the task's spec.
//! LARS ignores the groups and decides by rank alone, as Barlow Twins' `exclude_bias_and_norm`.
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
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, backend::AutodiffBackend};

mod optimizer;
pub mod rules;

pub use optimizer::{Optim, OptimRecord, OptimRecordItem, ParamState, ParamStateItem};
pub use rules::OptimSettings;

/// Parameter names (last path component) that never get weight decay, whatever their rank.
pub const NO_WEIGHT_DECAY: &[&str] = &["cls_token", "mask_token", "pos_embed", "decoder_pos_embed"];

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
    /// Every float parameter, in module order. burn's visitors also show BatchNorm's
    /// running statistics (`RunningState`) as floats, so they are listed too (1-D, no
    /// decay); they never get gradients, so no optimiser touches them.
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

    /// The entry of parameter `id`, if `id` is one of the module's parameters.
    pub fn find(&self, id: ParamId) -> Option<&ParamEntry> {
        self.params.iter().find(|p| p.id == id)
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
mod optimizer_tests;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::objectives::mae::MaeConfig;
    use crate::vit::VitConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::{LayerNorm, Linear};

    type B = Autodiff<Flex>;

    /// A Linear `[3, 2]`, a LayerNorm and a class token: one parameter of each group.
    #[derive(Module, Debug)]
    pub(crate) struct Toy<B: burn::tensor::backend::Backend> {
        pub(crate) linear: Linear<B>,
        pub(crate) norm: LayerNorm<B>,
        pub(crate) cls_token: Param<Tensor<B, 3>>,
    }

    pub(crate) fn toy(device: &burn::tensor::Device<B>) -> Toy<B> {
        Toy {
            linear: crate::vit::init_linear(3, 2, device),
            norm: crate::vit::init_layer_norm(2, device),
            cls_token: Param::from_tensor(Tensor::ones([1, 1, 2], device)),
        }
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
                drop_path_rate: 0.0,
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
