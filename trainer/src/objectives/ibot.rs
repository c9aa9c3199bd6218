//! iBOT (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer"), as
//! `main_ibot.py` with a shared head: DINO's class-token loss plus masked image modelling by
//! self-distillation on the patch tokens.
//!
//! ```text
//! u1, u2 global crops with block masks m1, m2 (1 = masked), locals as DINO
//! student: globals with mask tokens swapped in where m = 1, locals plain ─► all tokens
//! teacher: globals unmasked ─► all tokens              (EMA of the student, no gradient)
//! L_cls   = DINO loss on the class tokens (teacher views k != student views v), centre C
//! L_patch = mean over globals and images of the mean over masked patches j of
//!           H(t_j, s_j) with H(t, s) = -softmax((t - C') / tau_t') . log_softmax(s / tau_s)
//! loss = lambda_cls L_cls + lambda_patch L_patch       C' its own centre, same EMA 0.9
//! ```
//!
//! The head (MLP, normalisation, last layer) is applied to the class tokens and to the masked
//! patch tokens alike (`shared_head`). The masks come from the pipeline (`[views.mask]
//! kind = "block"` on the global views, BEiT's generator); images the pipeline left unmasked
//! add nothing to `L_patch`. The patch term is [`crate::losses::ibot::ibot_patch`] (checked
//! against lightly's, whose centre follows the masked teacher tokens; the official code averages
//! all patch tokens). Everything else is DINO's ([`super::multicrop`], [`super::dino`]).

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use serde::{Deserialize, Serialize};

use super::dino::teacher_entropy;
use super::multicrop::{
    CropPass, DistillConfig, DistillState, Distiller, after_step, encode_views, freeze_last_layer,
    head_per_view, masked_rows, require_vit,
};
use super::{Method, MethodOutput, MethodSpec, ResolveContext, StepContext, part};
use crate::backbone::Backbone;
use crate::error::{Error, Result};
use crate::feeder::DeviceBatch;
use crate::losses::dino::{DinoLoss, dino_global};
use crate::losses::ibot::{IbotPatchLoss, ibot_patch};
use crate::precision::Precision;
use tessera_pipeline::masks::MaskSpec;

/// `[objective]` of `method = "ibot"`: [`DistillConfig`]'s keys with the patch ones filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct IbotConfig(pub DistillConfig);

impl MethodSpec for IbotConfig {
    const NAME: &'static str = "ibot";
    const PAPER: &'static str =
        "Zhou et al. 2022, iBOT: Image BERT Pre-Training with Online Tokenizer";
    const RECIPES: &'static [&'static str] = &["ibot_vit_small", "ibot_vit_tiny_cifar"];
    const MULTI_RESOLUTION: bool = true;

    fn resolve(self, ctx: &ResolveContext<'_>) -> Result<Self> {
        let mut c = self.0;
        c.teacher_patch_temp = Some(c.teacher_patch_temp.unwrap_or(0.07));
        c.warmup_teacher_patch_temp = Some(c.warmup_teacher_patch_temp.unwrap_or(0.04));
        c.lambda_cls = Some(c.lambda_cls.unwrap_or(1.0));
        c.lambda_patch = Some(c.lambda_patch.unwrap_or(1.0));
        c.check("iBOT", ctx)?;
        let patch = require_vit("iBOT", ctx.backbone)?;
        let instances = ctx.recipe.view_instances();
        for instance in &instances[..c.global_crops] {
            let spec = &ctx.recipe.views[instance.spec];
            let mask_patch = match &spec.mask {
                Some(MaskSpec::Block { patch_size, .. } | MaskSpec::Random { patch_size, .. }) => {
                    *patch_size as usize
                }
                Some(MaskSpec::Simmim {
                    model_patch_size, ..
                }) => *model_patch_size as usize,
                None => {
                    return Err(Error::config(
                        "views",
                        "mask",
                        format!(
                            "iBOT masks the global views; give view `{}` a [views.mask] \
                             (kind = \"block\")",
                            spec.name
                        ),
                    ));
                }
            };
            if mask_patch != patch {
                return Err(Error::config(
                    "views",
                    "mask",
                    format!(
                        "view `{}`'s mask is on {mask_patch}-pixel patches, the ViT's are {patch}",
                        spec.name
                    ),
                ));
            }
        }
        Ok(Self(c))
    }
}

/// The patch tokens of the first `g` views as rows, view-major then sample then patch.
///
/// # Shapes
/// `patches`: `g` x `[n, l, d]` (and `None`s after) -> `[g n l, d]`.
fn flat_patches<B: Backend>(patches: Vec<Option<Tensor<B, 3>>>, g: usize) -> Tensor<B, 2> {
    let views: Vec<Tensor<B, 3>> = patches.into_iter().take(g).flatten().collect();
    let tokens = Tensor::cat(views, 0); // [g n, l, d]
    let [rows, l, d] = tokens.dims();
    tokens.reshape([rows * l, d])
}

impl IbotConfig {
    /// The patch teacher temperature of `ctx`'s step.
    fn patch_temp(&self, ctx: &StepContext) -> f64 {
        let c = &self.0;
        c.warm_temp(
            c.warmup_teacher_patch_temp.unwrap_or(0.04),
            c.teacher_patch_temp.unwrap_or(0.07),
            ctx,
        )
    }
}

impl<B: AutodiffBackend> Method<B> for IbotConfig {
    type Model = Distiller<B>;
    type State = DistillState<B::InnerBackend>;

    fn init(&self, backbone: Backbone<B>, device: &B::Device) -> (Self::Model, Self::State) {
        let head = self.0.head(backbone.num_features());
        Distiller::init(backbone, &head, true, device)
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
        let n = batch.len;
        let views = batch.views;
        let masks: Vec<_> = batch.masks.into_iter().map(|m| m.map(|m| m.mask)).collect();
        let global_masks = masks[..g]
            .iter()
            .map(|m| {
                m.clone()
                    .ok_or_else(|| Error::config("views", "mask", "a global view came unmasked"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mask = Tensor::cat(global_masks, 0); // [g n, l], 1 = masked
        let [_, l] = mask.dims();
        let rows = masked_rows(&mask)?; // [m] rows of [g n l]
        let wants = vec![true; g];

        // Teacher: the global crops unmasked, class and patch tokens, no gradient.
        let teacher_pass = CropPass {
            masks: &[],
            mask_token: None,
            want_patches: &wants,
            drop_path: None,
        };
        let teacher = encode_views(&state.teacher.backbone, views[..g].to_vec(), &teacher_pass)?;
        let t_cls = head_per_view(&state.teacher.head, teacher.cls); // g x [n, K]

        // Student: mask tokens in the global crops, every crop, one pass per resolution.
        let student_masks: Vec<_> = masks
            .into_iter()
            .map(|m| m.map(Tensor::from_inner))
            .collect();
        let student_pass = CropPass {
            masks: &student_masks,
            mask_token: model.mask_token.as_ref().map(|t| t.val()),
            want_patches: &wants,
            drop_path: Some((ctx.seed, ctx.step, ctx.micro_batch)),
        };
        let student_views = views.into_iter().map(Tensor::from_inner).collect();
        let student = encode_views(&model.backbone, student_views, &student_pass)?;
        let s_cls = head_per_view(&model.head, student.cls); // V x [n, K]

        // Class-token loss (DINO's).
        let temp = c.teacher_temp(ctx);
        let center = state.center.val();
        let entropy = teacher_entropy(Tensor::cat(t_cls.clone(), 0), center.clone(), temp);
        let t_cls: Vec<Tensor<B, 2>> = t_cls.into_iter().map(Tensor::from_inner).collect();
        let cls_settings = DinoLoss {
            student_temp: c.student_temp,
            center_momentum: c.center_momentum,
        };
        let (cls_loss, new_center) = dino_global(
            &cls_settings,
            &t_cls,
            &s_cls,
            Tensor::from_inner(center),
            temp,
            ctx.sum_over_ranks::<B>().as_deref(),
        )?;
        state.center = Param::initialized(state.center.id, new_center.inner());

        // Masked patch-token loss, on the masked tokens only (the head runs on those).
        let patch_loss = match state.patch_center.take() {
            Some(patch_center) if rows.dims()[0] > 0 => {
                let t = flat_patches(teacher.patches, g).select(0, rows.clone());
                let t = state.teacher.head.forward(t); // [m, K]
                let s = flat_patches(student.patches, g).select(0, Tensor::from_inner(rows));
                let s = model.head.forward(s); // [m, K]
                let settings = IbotPatchLoss {
                    student_temp: c.student_temp,
                    center_momentum: c.center_momentum,
                };
                let (loss, new_patch_center) = ibot_patch(
                    &settings,
                    Tensor::from_inner(t),
                    s,
                    Tensor::from_inner(mask).reshape([g * n, 1, l]),
                    Tensor::from_inner(patch_center.val()),
                    self.patch_temp(ctx),
                )?;
                state.patch_center = Some(Param::initialized(
                    patch_center.id,
                    new_patch_center.inner(),
                ));
                loss
            }
            unchanged => {
                state.patch_center = unchanged;
                Tensor::zeros([1], &cls_loss.device())
            }
        };

        let loss = cls_loss.clone() * c.lambda_cls.unwrap_or(1.0)
            + patch_loss.clone() * c.lambda_patch.unwrap_or(1.0);
        let kl = part(&cls_loss) - entropy.clone();
        Ok(MethodOutput {
            parts: vec![
                ("cls", part(&cls_loss)),
                ("patch", part(&patch_loss)),
                ("teacher_entropy", entropy),
                ("kl", kl),
            ],
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
