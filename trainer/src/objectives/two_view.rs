//! What the joint-embedding methods share: a backbone with a projector (and for some a
//! predictor), a momentum teacher, and the two views of each image.
//!
//! ```text
//! view 1 ─► backbone ─► projector ─► z1 ─► predictor ─► p1
//! view 2 ─► backbone ─► projector ─► z2 ─► predictor ─► p2      (student, trained)
//! view 1, 2 ─► teacher backbone ─► teacher projector ─► k1, k2   (EMA of the student, no grad)
//! ```
//!
//! The teacher starts as the student's backbone and projector (the same parameter ids, so
//! [`crate::teacher::ema_update`] pairs them) and runs with BatchNorm in training mode,
//! as BYOL's target and MoCo's key encoder do.

use burn::module::{AutodiffModule, Module};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::backbone::{Backbone, NormMode};
use crate::error::{Error, Result};
use crate::feeder::DeviceBatch;
use crate::heads::{MlpHead, MlpHeadConfig};
use crate::schedule::CosineSchedule;

/// A backbone, a projector and an optional predictor: the student of every two-view method.
#[derive(Module, Debug)]
pub struct Siamese<B: Backend> {
    /// The network being pretrained.
    pub backbone: Backbone<B>,
    /// Features to the embedding the loss sees.
    pub projector: MlpHead<B>,
    /// BYOL, SimSiam, MoCo v3, NNCLR: the embedding to a prediction of the other view's.
    pub predictor: Option<MlpHead<B>>,
}

impl<B: Backend> Siamese<B> {
    /// Builds the student from its parts' configs.
    pub fn new(
        backbone: Backbone<B>,
        projector: &MlpHeadConfig,
        predictor: Option<&MlpHeadConfig>,
        device: &B::Device,
    ) -> Self {
        Self {
            backbone,
            projector: projector.init(device),
            predictor: predictor.map(|p| p.init(device)),
        }
    }

    /// Backbone then projector, BatchNorm in training mode.
    ///
    /// # Shapes
    /// `images` `[n, 3, h, w]` -> `[n, out]`.
    pub fn project(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let features = self.backbone.forward_features(images, NormMode::Train);
        self.projector.forward(features, NormMode::Train)
    }

    /// The predictor over `z` (the identity when there is none).
    pub fn predict(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.predictor {
            Some(p) => p.forward(z, NormMode::Train),
            None => z,
        }
    }
}

/// The momentum teacher (BYOL's target network, MoCo's key encoder): backbone and projector.
#[derive(Module, Debug)]
pub struct Teacher<B: Backend> {
    /// EMA of the student's backbone.
    pub backbone: Backbone<B>,
    /// EMA of the student's projector.
    pub projector: MlpHead<B>,
}

impl<B: Backend> Teacher<B> {
    /// Backbone then projector, BatchNorm in training mode (batch statistics), no gradient.
    pub fn project(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let features = self.backbone.forward_features(images, NormMode::Train);
        self.projector.forward(features, NormMode::Train)
    }
}

impl<B: AutodiffBackend> Siamese<B> {
    /// A teacher equal to this student's backbone and projector (same parameter ids).
    pub fn teacher(&self) -> Teacher<B::InnerBackend> {
        Teacher {
            backbone: self.backbone.valid(),
            projector: self.projector.valid(),
        }
    }

    /// `t = m t + (1 - m) s` over the teacher's parameters.
    pub fn update_teacher(
        &self,
        teacher: Teacher<B::InnerBackend>,
        momentum: f64,
    ) -> Teacher<B::InnerBackend> {
        let Teacher {
            backbone,
            projector,
        } = teacher;
        Teacher {
            backbone: crate::teacher::ema_update(backbone, &self.backbone.valid(), momentum),
            projector: crate::teacher::ema_update(projector, &self.projector.valid(), momentum),
        }
    }
}

/// The teacher momentum of the step in `ctx`: `base` at step 0, rising to `end` on a half
/// cosine over the run (BYOL's `1 - (1 - m)(cos(pi k/K) + 1)/2` when `end` is 1; fixed
/// when `end == base`, as MoCo v2).
pub fn teacher_momentum(base: f64, end: f64, ctx: &super::StepContext) -> f64 {
    CosineSchedule {
        start: base,
        end,
        total_steps: ctx.total_steps,
    }
    .value(ctx.step)
}

/// Checks a momentum key is in `[0, 1]`.
pub fn check_momentum(key: &str, value: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&value) {
        return Err(Error::config(
            "objective",
            key,
            format!("{value} must be in [0, 1]"),
        ));
    }
    Ok(())
}

/// The two views of a batch, moved to the autodiff backend.
pub fn two_views<B: AutodiffBackend>(
    batch: DeviceBatch<B::InnerBackend>,
) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
    let mut views = batch.views.into_iter();
    match (views.next(), views.next(), views.next()) {
        (Some(a), Some(b), None) => Ok((Tensor::from_inner(a), Tensor::from_inner(b))),
        _ => Err(Error::config(
            "views",
            "count",
            "the batch does not hold exactly two views",
        )),
    }
}

/// Checks that a width set in `[objective]` is positive.
pub fn check_width(key: &str, width: usize) -> Result<()> {
    if width == 0 {
        return Err(Error::config("objective", key, "must be at least 1"));
    }
    Ok(())
}
