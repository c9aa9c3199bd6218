//! Self-supervised pretraining on burn: models, objectives, optimisation, device feeding,
//! checkpoints and export.
//!
//! Backend-generic (`Tensor<B, D>`); `burn::backend::Flex` on CPU for tests and small
//! runs, CUDA behind the `cuda` feature. Each objective is one file in [`objectives`].
