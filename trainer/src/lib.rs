//! Self-supervised pretraining on burn: models, objectives, optimisation, device feeding,
//! checkpoints and export.
//!
//! Backend-generic (`Tensor<B, D>`); `burn::backend::Flex` on CPU for tests and small
//! runs, CUDA behind the `cuda` feature. Each objective is one file in [`objectives`].
//!
//! ```text
//! recipe [model] [objective] [train] [optim] ─► config::TrainerConfig ─► ResolvedTrainConfig
//! backbone::BackboneConfig ─► Backbone (ViT, ResNet, RegNetY; timm names) ◄── heads::MlpHead
//! objectives::MethodConfig ─► Method (MAE, SimCLR, MoCo, BYOL, ...): model + state (teacher)
//! batch (u8 + masks) ─► feeder ─► Method::forward ─► loss ─► backward (accumulate)
//!   ─► optim::clip_grad_norm ─► optim::Optim::step (AdamW, SGD, LARS; schedule per step)
//!   ─► Method::after_step (teacher::ema_update, queues) ─► checkpoint::save
//! checkpoint dir ─► export::export ─► backbone.safetensors (timm names)
//! ```
//!
//! Not here: data loading and augmentation (`tessera_pipeline`), random masking (drawn by
//! the pipeline's CPU workers; the batch carries `ids_keep`/`ids_restore`/`mask`),
//! multi-device training. Mixed precision (bf16 matmuls, f32 master weights) is
//! [`precision`].

pub mod backbone;
pub mod checkpoint;
pub mod config;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod export;
#[cfg(test)]
pub(crate) mod goldens;
pub mod heads;
pub mod losses;
pub mod objectives;
pub mod optim;
pub mod pos_embed;
pub mod precision;
pub mod schedule;
pub mod teacher;
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
pub mod tensorboard;
pub mod train;
