//! Self-supervised objectives, one file each, all over the shared [`crate::vit`] backbone.
//!
//! An [`Objective`] is a module (its parameters are trained) that takes the batch's device
//! tensors and returns the loss plus its named parts for logging. The training loop is
//! written once against this trait; adding DINO or SimCLR is adding a file here.

use burn::tensor::{Tensor, backend::Backend};

pub mod mae;

/// A training objective: device tensors of one (micro-)batch in, differentiable loss out.
pub trait Objective<B: Backend> {
    /// The device tensors one step needs (images, masks, indices, ...).
    type Input;

    /// Runs the model(s) and returns the loss to minimise and its logged parts.
    fn loss(&self, input: Self::Input) -> ObjectiveLoss<B>;
}

/// The loss of one (micro-)batch.
#[derive(Debug, Clone)]
pub struct ObjectiveLoss<B: Backend> {
    /// Scalar `[1]` to call `backward` on.
    pub total: Tensor<B, 1>,
    /// Named scalar parts for logs (`("mae", loss)`); for single-term objectives the total.
    pub parts: Vec<(&'static str, Tensor<B, 1>)>,
}
