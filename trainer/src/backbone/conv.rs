//! The convolution pieces the CNN backbones share: a bias-free `Conv2d` with timm's padding
//! and initialisation, timm's `ConvNormAct` (conv, BatchNorm, optional ReLU) and global
//! average pooling.
//!
//! Padding is timm's `get_padding`: `((stride - 1) + (kernel - 1)) / 2` on every side, so a
//! 3x3 stride-2 convolution pads by 1 and a 1x1 stride-2 one by 0, as in timm and torchvision.

use burn::module::{Initializer, Module};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, backend::Backend};

use super::batch_norm::{BatchNorm, BatchNormConfig, NormMode};

/// timm `get_padding(kernel, stride, dilation=1)`.
pub(crate) fn timm_padding(kernel: usize, stride: usize) -> usize {
    ((stride - 1) + (kernel - 1)) / 2
}

/// `Conv2d(in, out, kernel, stride, padding=timm, groups, bias=False)` with weights drawn
/// from `N(0, std^2)`.
pub(crate) fn conv2d<B: Backend>(
    [d_in, d_out]: [usize; 2],
    kernel: usize,
    stride: usize,
    groups: usize,
    std: f64,
    device: &B::Device,
) -> Conv2d<B> {
    let p = timm_padding(kernel, stride);
    Conv2dConfig::new([d_in, d_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_groups(groups)
        .with_bias(false)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

/// PyTorch `kaiming_normal_(mode='fan_out', nonlinearity='relu')` for a conv weight
/// `[out, in / groups, k, k]`: `std = sqrt(2 / (out * k * k))` (timm ResNet).
pub(crate) fn kaiming_fan_out_std(d_out: usize, kernel: usize) -> f64 {
    (2.0 / (d_out * kernel * kernel) as f64).sqrt()
}

/// timm `ConvNormAct`: convolution, BatchNorm, then ReLU when `act`. The names (`conv`,
/// `bn`) are timm's.
#[derive(Module, Debug)]
pub struct ConvNormAct<B: Backend> {
    /// Bias-free convolution.
    pub conv: Conv2d<B>,
    /// Normalisation of its output.
    pub bn: BatchNorm<B>,
    /// Whether a ReLU follows (timm `apply_act`).
    pub act: bool,
}

impl<B: Backend> ConvNormAct<B> {
    /// A conv-BN(-ReLU) with a freshly initialised conv (`std`) and a PyTorch-default BN.
    pub(crate) fn new(
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        groups: usize,
        std: f64,
        act: bool,
        device: &B::Device,
    ) -> Self {
        Self {
            conv: conv2d(channels, kernel, stride, groups, std, device),
            bn: BatchNormConfig::new(channels[1]).init(device),
            act,
        }
    }

    /// # Shapes
    /// `x` `[n, c_in, h, w]` -> `[n, c_out, h / stride, w / stride]`.
    pub fn forward(&self, x: Tensor<B, 4>, mode: NormMode) -> Tensor<B, 4> {
        let x = self.bn.forward(self.conv.forward(x), mode);
        if self.act { relu(x) } else { x }
    }
}

/// Global average pooling (timm `SelectAdaptivePool2d('avg', flatten=True)`).
///
/// # Shapes
/// `x` `[n, c, h, w]` -> `[n, c]`.
pub fn global_avg_pool<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    let [n, c, _, _] = x.dims();
    x.mean_dim(3).mean_dim(2).reshape([n, c])
}
