//! What DINO and iBOT share: the recipe keys of self-distillation with a momentum teacher,
//! the student and teacher networks, the multi-crop forward and the schedules.
//!
//! ```text
//! views (2 global + N local) ─► grouped by resolution (consecutive views of one size)
//!   student: one backbone pass per group (drop path) ─► class tokens of every view,
//!            concatenated ─► one head pass ─► per-view logits     (main_dino.py MultiCropWrapper)
//!   teacher: the 2 global views only, no drop path, no gradient ─► per-view logits
//! ```
//!
//! The teacher is an EMA of the student's backbone and head (momentum on a cosine from
//! `momentum_teacher` to 1 per step). Its temperature warms up linearly per step from
//! `warmup_teacher_temp` to `teacher_temp` over `warmup_teacher_temp_epochs`, then stays; the
//! head's last layer gets no gradient (is not updated) during the first `freeze_last_layer`
//! epochs. Both need the epoch length: on synthetic batches (unknown length) the warm-up is
//! taken as done and nothing is frozen. CNN backbones give pooled features, at any size; a
//! ViT resamples its position table for the local crops.

use std::ops::Range;

use burn::module::{AutodiffModule, Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::dino_head::{DinoHead, DinoHeadConfig};
use super::two_view::{check_momentum, check_width, teacher_momentum};
use super::{ResolveContext, StepContext};
use crate::backbone::{Backbone, BackboneConfig, NormMode};
use crate::error::{Error, Result};
use crate::precision::Precision;
use crate::vit::{DropPath, MaskTokens};

/// `[objective]` keys of DINO and iBOT (the iBOT-only ones are `None` for DINO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// Head outputs `K` (prototypes). Default 65536 (paper); a few thousand on CIFAR.
    /// Too small a `K` limits what the softmax can separate; too large costs memory.
    pub out_dim: usize,
    /// Head MLP hidden width. Default 2048.
    pub hidden_dim: usize,
    /// Head bottleneck (L2-normalised) width. Default 256.
    pub bottleneck_dim: usize,
    /// Teacher temperature at step 0. Default 0.04.
    pub warmup_teacher_temp: f64,
    /// Teacher temperature after the warm-up. Default 0.07 (ViT-S/16 runs; above ~0.08
    /// training collapses, says the paper's appendix).
    pub teacher_temp: f64,
    /// Epochs of the linear teacher-temperature warm-up. Default 30.
    pub warmup_teacher_temp_epochs: f64,
    /// Student temperature. Default 0.1.
    pub student_temp: f64,
    /// EMA momentum of the teacher centre(s). Default 0.9.
    pub center_momentum: f64,
    /// Teacher momentum at step 0. Default 0.996 (raise it for small batches).
    pub momentum_teacher: f64,
    /// Teacher momentum at the end of the run (cosine rise). Default 1.0.
    pub momentum_teacher_end: f64,
    /// Epochs during which the head's last layer is not updated. Default 1.
    pub freeze_last_layer: f64,
    /// Views the teacher sees: the first `global_crops` of the recipe, of one size. Default 2.
    pub global_crops: usize,
    /// iBOT: teacher temperature of the patch tokens after the warm-up. Default 0.07.
    pub teacher_patch_temp: Option<f64>,
    /// iBOT: patch teacher temperature at step 0. Default 0.04.
    pub warmup_teacher_patch_temp: Option<f64>,
    /// iBOT: weight of the class-token loss (`lambda1`). Default 1.
    pub lambda_cls: Option<f64>,
    /// iBOT: weight of the masked patch-token loss (`lambda2`). Default 1.
    pub lambda_patch: Option<f64>,
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            out_dim: 65536,
            hidden_dim: 2048,
            bottleneck_dim: 256,
            warmup_teacher_temp: 0.04,
            teacher_temp: 0.07,
            warmup_teacher_temp_epochs: 30.0,
            student_temp: 0.1,
            center_momentum: 0.9,
            momentum_teacher: 0.996,
            momentum_teacher_end: 1.0,
            freeze_last_layer: 1.0,
            global_crops: 2,
            teacher_patch_temp: None,
            warmup_teacher_patch_temp: None,
            lambda_cls: None,
            lambda_patch: None,
        }
    }
}

/// The iBOT-only keys, for DINO's refusal.
pub(crate) const IBOT_KEYS: [&str; 4] = [
    "teacher_patch_temp",
    "warmup_teacher_patch_temp",
    "lambda_cls",
    "lambda_patch",
];

impl DistillConfig {
    /// The head on `in_dim` features.
    pub fn head(&self, in_dim: usize) -> DinoHeadConfig {
        DinoHeadConfig {
            hidden_dim: self.hidden_dim,
            bottleneck_dim: self.bottleneck_dim,
            ..DinoHeadConfig::paper(in_dim, self.out_dim)
        }
    }

    /// Checks the keys and the views: at least `global_crops` views, the first
    /// `global_crops` of one size, and one more view or a second global (a pair to compare).
    // `!(x > 0.0)` on purpose: NaN must fail the checks too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn check(&self, method: &str, ctx: &ResolveContext<'_>) -> Result<()> {
        for (key, width) in [
            ("out_dim", self.out_dim),
            ("hidden_dim", self.hidden_dim),
            ("bottleneck_dim", self.bottleneck_dim),
            ("global_crops", self.global_crops),
        ] {
            check_width(key, width)?;
        }
        for (key, value) in [
            ("warmup_teacher_temp", Some(self.warmup_teacher_temp)),
            ("teacher_temp", Some(self.teacher_temp)),
            ("student_temp", Some(self.student_temp)),
            ("teacher_patch_temp", self.teacher_patch_temp),
            ("warmup_teacher_patch_temp", self.warmup_teacher_patch_temp),
        ] {
            if let Some(v) = value
                && !(v > 0.0 && v.is_finite())
            {
                return Err(Error::config(
                    "objective",
                    key,
                    format!("{v} must be positive"),
                ));
            }
        }
        for (key, value) in [
            (
                "warmup_teacher_temp_epochs",
                Some(self.warmup_teacher_temp_epochs),
            ),
            ("freeze_last_layer", Some(self.freeze_last_layer)),
            ("lambda_cls", self.lambda_cls),
            ("lambda_patch", self.lambda_patch),
        ] {
            if let Some(v) = value
                && !(v >= 0.0 && v.is_finite())
            {
                return Err(Error::config("objective", key, format!("{v} must be >= 0")));
            }
        }
        check_momentum("center_momentum", self.center_momentum)?;
        check_momentum("momentum_teacher", self.momentum_teacher)?;
        check_momentum("momentum_teacher_end", self.momentum_teacher_end)?;
        let sizes = ctx.view_sizes();
        let g = self.global_crops;
        if sizes.len() < g || sizes.len() < 2 {
            return Err(Error::config(
                "views",
                "count",
                format!(
                    "{method} needs {g} global views (and local ones) but the recipe makes {}",
                    sizes.len()
                ),
            ));
        }
        if sizes[..g].windows(2).any(|w| w[0] != w[1]) {
            return Err(Error::config(
                "views",
                "size",
                format!(
                    "{method}'s first {g} views are the teacher's global crops and must share \
                     one size; the recipe has {:?}",
                    &sizes[..g]
                ),
            ));
        }
        Ok(())
    }

    /// The teacher temperature of `ctx`'s step: linear from `start` to `end` over
    /// `warmup_teacher_temp_epochs`, then `end` (and `end` when the epoch length is unknown).
    pub fn warm_temp(&self, start: f64, end: f64, ctx: &StepContext) -> f64 {
        let Some(per_epoch) = ctx.steps_per_epoch else {
            return end;
        };
        let warm = (self.warmup_teacher_temp_epochs * per_epoch as f64).round();
        if warm <= 0.0 || ctx.step as f64 >= warm {
            end
        } else {
            start + (end - start) * ctx.step as f64 / warm
        }
    }

    /// The class-token teacher temperature of `ctx`'s step.
    pub fn teacher_temp(&self, ctx: &StepContext) -> f64 {
        self.warm_temp(self.warmup_teacher_temp, self.teacher_temp, ctx)
    }

    /// Whether the head's last layer is frozen at `ctx`'s step (`epoch < freeze_last_layer`).
    pub fn last_layer_frozen(&self, ctx: &StepContext) -> bool {
        ctx.epoch().is_some_and(|e| e < self.freeze_last_layer)
    }
}

/// The student: backbone, DINO head and (iBOT) the learnable mask token.
#[derive(Module, Debug)]
pub struct Distiller<B: Backend> {
    /// The network being pretrained.
    pub backbone: Backbone<B>,
    /// Projection to the `K` prototypes.
    pub head: DinoHead<B>,
    /// iBOT's mask token `[1, 1, d]` (zeros at start, as `masked_embed`).
    pub mask_token: Option<Param<Tensor<B, 3>>>,
}

/// The momentum teacher: EMA of the student's backbone and head.
#[derive(Module, Debug)]
pub struct DistillTeacher<B: Backend> {
    /// EMA of the student's backbone.
    pub backbone: Backbone<B>,
    /// EMA of the student's head.
    pub head: DinoHead<B>,
}

/// What DINO and iBOT keep between steps: the teacher and the centre(s), saved in checkpoints.
#[derive(Module, Debug)]
pub struct DistillState<B: Backend> {
    /// The momentum teacher.
    pub teacher: DistillTeacher<B>,
    /// Class-token centre `[1, K]` (zeros at start).
    pub center: Param<Tensor<B, 2>>,
    /// iBOT's patch-token centre `[1, K]`.
    pub patch_center: Option<Param<Tensor<B, 2>>>,
}

impl<B: AutodiffBackend> Distiller<B> {
    /// A student around `backbone` and its state (teacher = student, zero centres).
    pub fn init(
        backbone: Backbone<B>,
        head: &DinoHeadConfig,
        mask_token: bool,
        device: &B::Device,
    ) -> (Self, DistillState<B::InnerBackend>) {
        let d = backbone.num_features();
        let student = Self {
            backbone,
            head: head.init(device),
            mask_token: mask_token.then(|| Param::from_tensor(Tensor::zeros([1, 1, d], device))),
        };
        let center = || Param::from_tensor(Tensor::zeros([1, head.out_dim], device));
        let state = DistillState {
            teacher: DistillTeacher {
                backbone: student.backbone.valid(),
                head: student.head.valid(),
            },
            center: center(),
            patch_center: mask_token.then(center),
        };
        (student, state)
    }

    /// `t = m t + (1 - m) s` over the teacher's backbone and head.
    pub fn update_teacher(
        &self,
        teacher: DistillTeacher<B::InnerBackend>,
        momentum: f64,
    ) -> DistillTeacher<B::InnerBackend> {
        use crate::teacher::ema_update;
        DistillTeacher {
            backbone: ema_update(teacher.backbone, &self.backbone.valid(), momentum),
            head: ema_update(teacher.head, &self.head.valid(), momentum),
        }
    }

    /// The student with its ViT's matmuls in `precision` (the head stays f32).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.backbone = match self.backbone {
            Backbone::Vit(vit) => Backbone::Vit(vit.with_precision(precision)),
            other => other,
        };
        self
    }
}

/// The after-step update both methods share: the teacher EMA at the step's momentum.
pub fn after_step<B: AutodiffBackend>(
    config: &DistillConfig,
    model: Distiller<B>,
    mut state: DistillState<B::InnerBackend>,
    ctx: &StepContext,
) -> (Distiller<B>, DistillState<B::InnerBackend>) {
    let m = teacher_momentum(config.momentum_teacher, config.momentum_teacher_end, ctx);
    state.teacher = model.update_teacher(state.teacher, m);
    (model, state)
}

/// DINO `cancel_gradients_last_layer`: drops the last layer's gradient while it is frozen.
pub fn freeze_last_layer<B: AutodiffBackend>(
    config: &DistillConfig,
    model: &Distiller<B>,
    grads: &mut GradientsParams,
    ctx: &StepContext,
) {
    if config.last_layer_frozen(ctx) {
        let _frozen = grads.remove::<B::InnerBackend, 2>(model.head.last_layer.weight_v.id);
    }
}

/// Consecutive runs of views with the same `[h, w]`: one backbone pass each.
pub fn resolution_groups(sizes: &[[usize; 2]]) -> Vec<Range<usize>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        match groups.last_mut() {
            Some(last) if sizes[last.start] == *size => last.end = i + 1,
            _ => groups.push(i..i + 1),
        }
    }
    groups
}

/// What a backbone pass gives for each view.
#[derive(Debug)]
pub struct Encoded<B: Backend> {
    /// Pooled features (ViT: class token) per view, `[n, d]` each.
    pub cls: Vec<Tensor<B, 2>>,
    /// Patch tokens `[n, l, d]` of the views that asked for them (ViT only).
    pub patches: Vec<Option<Tensor<B, 3>>>,
}

/// How a multi-crop pass runs.
#[derive(Debug)]
pub struct CropPass<'a, B: Backend> {
    /// Per view (or empty): the view's patch mask `[n, l]`, 1 = replaced by the mask token.
    pub masks: &'a [Option<Tensor<B, 2>>],
    /// The mask token `[1, 1, d]` the masks swap in.
    pub mask_token: Option<Tensor<B, 3>>,
    /// Which views' patch tokens to return.
    pub want_patches: &'a [bool],
    /// `(seed, step, micro-batch)` keying the drop-path draws; `None` = no drop path (teacher).
    pub drop_path: Option<(u64, u64, usize)>,
}

/// The backbone over `views`, one pass per resolution group (views of one size concatenated
/// along the batch, as DINO's `MultiCropWrapper`).
///
/// # Shapes
/// `views`: each `[n, 3, h_v, w_v]`; returns per view `[n, d]` (and `[n, l_v, d]`).
///
/// # Errors
/// [`Error::Shape`] when patch tokens or masks are asked of a CNN.
pub fn encode_views<B: Backend>(
    backbone: &Backbone<B>,
    views: Vec<Tensor<B, 4>>,
    pass: &CropPass<'_, B>,
) -> Result<Encoded<B>> {
    let sizes: Vec<[usize; 2]> = views
        .iter()
        .map(|v| {
            let [_, _, h, w] = v.dims();
            [h, w]
        })
        .collect();
    let mut cls = Vec::with_capacity(views.len());
    let mut patches = Vec::with_capacity(views.len());
    let mut views = views.into_iter().map(Some).collect::<Vec<_>>();
    for (g, group) in resolution_groups(&sizes).into_iter().enumerate() {
        let batch: Vec<Tensor<B, 4>> = group.clone().filter_map(|i| views[i].take()).collect();
        let [n, _, _, _] = batch[0].dims();
        let images = Tensor::cat(batch, 0); // [k n, 3, h, w]
        let k = group.len();
        let wants = group
            .clone()
            .any(|i| pass.want_patches.get(i) == Some(&true));
        let masked = group
            .clone()
            .any(|i| pass.masks.get(i).is_some_and(Option::is_some));
        match backbone {
            Backbone::Vit(vit) => {
                let mask = match (&pass.mask_token, masked) {
                    (Some(token), true) => Some(MaskTokens {
                        mask: group_mask(
                            pass.masks,
                            group.clone(),
                            &images,
                            vit.patch_embed.patch_size,
                        ),
                        token: token.clone(),
                    }),
                    _ => None,
                };
                let draws = pass.drop_path.filter(|_| vit.drop_path_rate > 0.0).map(
                    |(seed, step, micro)| {
                        let stream = micro as u64 * 1024 + g as u64;
                        DropPath::draw(seed, step, stream, vit.blocks.len(), k * n)
                    },
                );
                let tokens = vit.forward_all_tokens(images, mask, draws.as_ref()); // [k n, 1 + l, d]
                let [_, t, d] = tokens.dims();
                for (j, i) in group.enumerate() {
                    let view = tokens.clone().narrow(0, j * n, n); // [n, 1 + l, d]
                    cls.push(view.clone().narrow(1, 0, 1).reshape([n, d]));
                    let want = pass.want_patches.get(i) == Some(&true);
                    patches.push(want.then(|| view.narrow(1, 1, t - 1)));
                }
            }
            cnn => {
                if wants || masked {
                    return Err(Error::config(
                        "model",
                        "arch",
                        "patch tokens and mask tokens need a ViT backbone",
                    ));
                }
                let features = cnn.forward_features(images, NormMode::Train); // [k n, d]
                for j in 0..k {
                    cls.push(features.clone().narrow(0, j * n, n));
                    patches.push(None);
                }
            }
        }
    }
    Ok(Encoded { cls, patches })
}

/// The masks of a group's views, concatenated (zeros for views without one).
///
/// # Shapes
/// returns `[k n, l]`.
fn group_mask<B: Backend>(
    masks: &[Option<Tensor<B, 2>>],
    group: Range<usize>,
    images: &Tensor<B, 4>,
    patch: usize,
) -> Tensor<B, 2> {
    let [kn, _, h, w] = images.dims();
    let n = kn / group.len();
    let l = (h / patch) * (w / patch);
    let parts = group
        .map(|i| match masks.get(i) {
            Some(Some(mask)) => mask.clone(),
            _ => Tensor::zeros([n, l], &images.device()),
        })
        .collect();
    Tensor::cat(parts, 0)
}

/// The head over every view's features at once (one pass), split back per view.
///
/// # Shapes
/// `features`: `v` x `[n, d]` -> `v` x `[n, K]`.
pub fn head_per_view<B: Backend>(
    head: &DinoHead<B>,
    features: Vec<Tensor<B, 2>>,
) -> Vec<Tensor<B, 2>> {
    let sizes: Vec<usize> = features.iter().map(|f| f.dims()[0]).collect();
    let logits = head.forward(Tensor::cat(features, 0)); // [sum n, K]
    let mut start = 0;
    sizes
        .into_iter()
        .map(|n| {
            let view = logits.clone().narrow(0, start, n);
            start += n;
            view
        })
        .collect()
}

/// The rows of the masked patches in a `[n, l]` mask, flattened row-major (read back to the
/// host: the count varies per image).
pub fn masked_rows<B: Backend>(mask: &Tensor<B, 2>) -> Result<Tensor<B, 1, Int>> {
    let values = mask
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::TensorData {
            name: "patch mask".into(),
            message: format!("{e:?}"),
        })?;
    let rows: Vec<i64> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0.5)
        .map(|(i, _)| i as i64)
        .collect();
    let count = rows.len();
    Ok(Tensor::from_data(
        TensorData::new(rows, [count]),
        &mask.device(),
    ))
}

/// The backbone config's refusal of patch-token methods on CNNs.
pub fn require_vit(method: &str, backbone: &BackboneConfig) -> Result<usize> {
    match backbone {
        BackboneConfig::Vit(vit) => Ok(vit.patch_size),
        _ => Err(Error::config(
            "model",
            "arch",
            format!("{method} predicts patch tokens and needs a ViT backbone"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vit::VitConfig;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tolerance};

    fn tiny() -> (Backbone<Flex>, DinoHead<Flex>) {
        let device = Default::default();
        let vit = VitConfig {
            img_size: 16,
            patch_size: 4,
            in_chans: 3,
            embed_dim: 16,
            depth: 2,
            num_heads: 2,
            mlp_ratio: 2.0,
            drop_path_rate: 0.0,
        };
        let head = DinoHeadConfig {
            in_dim: 16,
            hidden_dim: 32,
            bottleneck_dim: 8,
            out_dim: 20,
            nlayers: 3,
        };
        (Backbone::Vit(vit.init(&device)), head.init(&device))
    }

    /// Two 16-pixel and three 8-pixel views in two backbone passes and one head pass give
    /// each view the logits it gets alone; a masked view gets the tokens of
    /// `forward_all_tokens` with its mask.
    #[test]
    fn multicrop_forward_equals_one_view_at_a_time() {
        let device = Default::default();
        let (backbone, head) = tiny();
        let views: Vec<Tensor<Flex, 4>> = [16, 16, 8, 8, 8]
            .iter()
            .map(|&s| Tensor::random([3, 3, s, s], Distribution::Default, &device))
            .collect();
        let mask = Tensor::<Flex, 2>::random([3, 16], Distribution::Bernoulli(0.4), &device);
        let token = Tensor::<Flex, 3>::random([1, 1, 16], Distribution::Default, &device);
        let masks = [None, Some(mask.clone())];
        let pass = CropPass {
            masks: &masks,
            mask_token: Some(token.clone()),
            want_patches: &[true, true],
            drop_path: None,
        };
        let together = encode_views(&backbone, views.clone(), &pass).unwrap();
        let logits = head_per_view(&head, together.cls);
        let plain = CropPass {
            masks: &[],
            mask_token: None,
            want_patches: &[],
            drop_path: None,
        };
        let close = |a: Tensor<Flex, 2>, b: Tensor<Flex, 2>| {
            a.into_data()
                .assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(1e-5));
        };
        for (i, view) in views.iter().enumerate().filter(|(i, _)| *i != 1) {
            let alone = encode_views(&backbone, vec![view.clone()], &plain).unwrap();
            close(logits[i].clone(), head.forward(alone.cls[0].clone()));
        }
        let Backbone::Vit(vit) = &backbone else {
            unreachable!()
        };
        let masked =
            vit.forward_all_tokens(views[1].clone(), Some(MaskTokens { mask, token }), None); // [3, 17, 16]
        close(
            logits[1].clone(),
            head.forward(masked.clone().narrow(1, 0, 1).reshape([3, 16])),
        );
        let patches = together.patches[1].clone().unwrap(); // [3, 16, 16]
        close(
            patches.reshape([48, 16]),
            masked.narrow(1, 1, 16).reshape([48, 16]),
        );
        assert!(together.patches[2].is_none());
    }

    #[test]
    fn groups_are_consecutive_runs_of_one_size() {
        let s = |v: &[usize]| v.iter().map(|&x| [x, x]).collect::<Vec<_>>();
        assert_eq!(
            resolution_groups(&s(&[32, 32, 16, 16, 16])),
            vec![0..2, 2..5]
        );
        assert_eq!(resolution_groups(&s(&[32, 16, 32])), vec![0..1, 1..2, 2..3]);
        assert_eq!(resolution_groups(&s(&[8])), vec![0..1]);
        assert!(resolution_groups(&[]).is_empty());
    }
}
