//! DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"),
//! Algorithm 1 with multi-crop, as `main_dino.py`.
//!
//! ```text
//! gs, gt: student and teacher (backbone + DINO head); gt = EMA of gs, no gradient
//! x1, x2 global crops (the teacher's), x3..xV local crops (student only)
//! t_k = gt(x_k)                 k in 1..2      s_v = gs(x_v)     v in 1..V (one pass per size)
//! loss = mean over k != v of H(t_k, s_v)       H(t, s) = -softmax((t - C) / tau_t) . log_softmax(s / tau_s)
//! C    = m C + (1 - m) mean(t)                 centre, m = center_momentum (0.9)
//! after each step: gt = l gt + (1 - l) gs      l cosine 0.996 -> 1
//! ```
//!
//! `tau_t` warms up 0.04 → 0.07, `tau_s` = 0.1; weight decay follows `[optim]` (DINO: cosine
//! 0.04 → 0.4 with `weight_decay_end`), gradients are clipped per parameter
//! (`clip_grad_mode = "per_parameter"`, 3.0), and the head's last layer is frozen during the
//! first epoch. The loss is [`crate::losses::dino::dino`], checked against lightly's; the
//! networks, the multi-crop forward and the schedules are in [`super::multicrop`].
//! The centre moves after every micro-batch's forward (as the official code after every
//! iteration). Logged parts: the teacher's mean entropy (collapse to one prototype sends it to
//! 0, to uniform to `log K`) and the KL between teacher and student (`loss - entropy`).

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use super::multicrop::{
    CropPass, DistillConfig, DistillState, Distiller, IBOT_KEYS, after_step, encode_views,
    freeze_last_layer, head_per_view,
};
use super::{Method, MethodOutput, MethodSpec, ResolveContext, StepContext, part};
use crate::backbone::Backbone;
use crate::error::{Error, Result};
use crate::feeder::DeviceBatch;
use crate::losses::dino::{DinoLoss, dino_global};
use crate::precision::Precision;

/// `[objective]` of `method = "dino"`: see [`DistillConfig`] for the keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct DinoConfig(pub DistillConfig);

impl MethodSpec for DinoConfig {
    const NAME: &'static str = "dino";
    const PAPER: &'static str =
        "Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers";
    const RECIPES: &'static [&'static str] = &[
        "dino_vit_small",
        "dino_vit_tiny_cifar",
        "dino_resnet18_cifar",
    ];
    const MULTI_RESOLUTION: bool = true;

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        let c = &self.0;
        let set = [
            c.teacher_patch_temp,
            c.warmup_teacher_patch_temp,
            c.lambda_cls,
            c.lambda_patch,
        ];
        if let Some((key, _)) = IBOT_KEYS.iter().zip(set).find(|(_, v)| v.is_some()) {
            return Err(Error::config(
                "objective",
                *key,
                "an iBOT key; DINO has no patch loss (method = \"ibot\")",
            ));
        }
        c.check("DINO", ctx)?;
        Ok(self)
    }
}

/// The mean entropy of the teacher's distributions, `[1]`.
///
/// # Shapes
/// `teacher` `[m, K]` logits, `center` `[1, K]`.
pub(crate) fn teacher_entropy<B: Backend>(
    teacher: Tensor<B, 2>,
    center: Tensor<B, 2>,
    temp: f64,
) -> Tensor<B, 1> {
    let logits = (teacher - center) / temp; // [m, K]
    let p = softmax(logits.clone(), 1);
    (p * log_softmax(logits, 1)).sum_dim(1).mean().neg()
}

impl<B: AutodiffBackend> Method<B> for DinoConfig {
    type Model = Distiller<B>;
    type State = DistillState<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let head = self.0.head(backbone.num_features());
        Distiller::init(backbone, &head, false, device)
    }

    fn with_precision(&self, model: Self::Model, precision: Precision) -> Self::Model {
        model.with_precision(precision)
    }

    fn forward(
        &self,
        model: &Self::Model,
        state: &mut Self::State,
        batch: DeviceBatch<B::InnerBackend>,
        ctx: &StepContext,
    ) -> Result<MethodOutput<B>> {
        let c = &self.0;
        let g = c.global_crops;
        let views = batch.views;

        // Teacher: the global crops, no gradient.
        let no_mask = CropPass {
            masks: &[],
            mask_token: None,
            want_patches: &[],
            drop_path: None,
        };
        let teacher = encode_views(&state.teacher.backbone, views[..g].to_vec(), &no_mask)?;
        let t_logits = head_per_view(&state.teacher.head, teacher.cls); // g x [n, K]

        // Student: every crop, one backbone pass per resolution, one head pass.
        let student_views = views.into_iter().map(Tensor::from_inner).collect();
        let pass = CropPass::<B> {
            masks: &[],
            mask_token: None,
            want_patches: &[],
            drop_path: Some((ctx.seed, ctx.step, ctx.micro_batch)),
        };
        let student = encode_views(&model.backbone, student_views, &pass)?;
        let s_logits = head_per_view(&model.head, student.cls); // V x [n, K]

        // Loss and centre.
        let temp = c.teacher_temp(ctx);
        let center = state.center.val();
        let entropy = teacher_entropy(Tensor::cat(t_logits.clone(), 0), center.clone(), temp);
        let settings = DinoLoss {
            student_temp: c.student_temp,
            center_momentum: c.center_momentum,
        };
        let t_logits: Vec<Tensor<B, 2>> = t_logits.into_iter().map(Tensor::from_inner).collect();
        let (loss, new_center) = dino_global(
            &settings,
            &t_logits,
            &s_logits,
            Tensor::from_inner(center),
            temp,
            ctx.sum_over_ranks::<B>().as_deref(),
        )?;
        state.center = Param::initialized(state.center.id, new_center.inner());
        let kl = part(&loss) - entropy.clone();
        Ok(MethodOutput {
            parts: vec![("teacher_entropy", entropy), ("kl", kl)],
            loss,
            picture: None,
        })
    }

    fn adjust_gradients(
        &self,
        model: &Self::Model,
        grads: &mut GradientsParams,
        ctx: &StepContext,
    ) {
        freeze_last_layer(&self.0, model, grads, ctx);
    }

    fn after_step(
        &self,
        model: Self::Model,
        state: Self::State,
        ctx: &StepContext,
    ) -> (Self::Model, Self::State) {
        after_step(&self.0, model, state, ctx)
    }

    fn backbone(&self, model: &Self::Model) -> Backbone<B> {
        model.backbone.clone()
    }

    fn teacher_backbone(&self, state: &Self::State) -> Option<Backbone<B::InnerBackend>> {
        Some(state.teacher.backbone.clone())
    }
}
