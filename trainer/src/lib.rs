//! Self-supervised pretraining on burn: models, objectives, optimisation, device feeding,
//! checkpoints and export.
//!
//! Backend-generic (`Tensor<B, D>`); `burn::backend::Flex` on CPU for tests and small
//! runs, CUDA behind the `cuda` feature. Each objective is one file in [`objectives`].
//!
//! ```text
//! recipe [model] [train] [optim] ─► config::TrainerConfig ─► ResolvedTrainConfig (config.json)
//! vit::VitConfig ─► vit::Vit (shared backbone) ◄── objectives::mae::MaeModel (Objective)
//! batch (u8 + MaskBatch) ─► feeder ─► MaeInput ─► loss ─► backward ─► optim::clip_grad_norm
//!   ─► optim::GroupedAdamW::step(schedule::WarmupCosine::lr(step)) ─► checkpoint::save
//! checkpoint dir ─► export::export ─► encoder.safetensors (timm names)
//! ```
//!
//! Not here: data loading and augmentation (`tessera_pipeline`), random masking (drawn by
//! the pipeline's CPU workers; the batch carries `ids_keep`/`ids_restore`/`mask`),
//! multi-device training. Mixed precision (bf16 matmuls, f32 master weights) is
//! [`precision`].

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod eval;
pub mod export;
pub mod losses;
#[cfg(test)]
pub(crate) mod goldens;
pub mod objectives;
pub mod optim;
pub mod pos_embed;
pub mod precision;
pub mod schedule;
pub mod vit;

pub use error::{Error, Result};

// Device feeding, the training loop and what it writes (engineer D2).
pub mod device;
pub mod feeder;
pub mod metrics;
pub mod pictures;
#[cfg(feature = "cuda")]
pub mod pinned;
pub mod synthetic;
pub mod train;
