//! Backbones an objective can train: the ViT ([`crate::vit`]), ResNet ([`resnet`]) and
//! RegNetY ([`regnet`]), behind one [`Backbone`] module and one [`BackboneConfig`].
//!
//! Every backbone is timm's `num_classes=0` model: [`Backbone::forward_features`] gives the
//! pooled features (the ViT's class token after the final norm, the CNNs' global average
//! pool). Parameters carry timm's names and PyTorch's shapes, so weights move between
//! Tessera and timm unchanged: [`Backbone::timm_tensors`] exports a state dict and
//! [`Backbone::load_timm`] imports one read by [`TimmWeights::read`].
//!
//! ```text
//! BackboneConfig::by_name("resnet50") ─► init ─► Backbone ─► forward_features(images, NormMode)
//! timm .safetensors ─► TimmWeights::read ─► Backbone::load_timm       Backbone::timm_tensors ─► export
//! ```
//!
//! BatchNorm takes its mode as an argument ([`NormMode`]), never from the backend: an EMA
//! teacher runs batch statistics without autodiff, a probe runs running statistics with it.
//! The ViT has no BatchNorm and ignores the mode.
//!
//! Not here: classifier heads, feature pyramids, stochastic depth in the CNNs, dilation (`output_stride`)
//! and timm's other ResNet/RegNet options (deep stems, anti-aliasing, pre-activation).

pub mod batch_norm;
pub mod conv;
pub mod regnet;
pub mod resnet;
#[cfg(test)]
mod tests;
pub mod timm;

use burn::module::Module;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

pub use batch_norm::{BatchNorm, BatchNormConfig, NormMode};
pub use regnet::{RegNet, RegNetConfig, RegStageConfig};
pub use resnet::{ResNet, ResNetBlock, ResNetConfig};
pub use timm::TimmWeights;

use crate::error::Result;
use crate::export::NamedTensor;
use crate::vit::{Vit, VitConfig};

/// A backbone: one of the architectures, with its parameters.
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    /// Vision Transformer.
    Vit(Vit<B>),
    /// ResNet.
    ResNet(ResNet<B>),
    /// RegNet(Y).
    RegNet(RegNet<B>),
}

impl<B: Backend> Backbone<B> {
    /// Pooled features: the class token after the final norm (ViT), the global average of
    /// the last map (CNNs). `mode` selects the BatchNorm statistics; the ViT ignores it.
    ///
    /// # Shapes
    /// `images` `[n, c, h, w]` -> `[n, num_features]`.
    pub fn forward_features(&self, images: Tensor<B, 4>, mode: NormMode) -> Tensor<B, 2> {
        match self {
            Backbone::Vit(vit) => {
                // Any multiple of the patch size: the position table is resampled if needed.
                let tokens = vit.forward_all_tokens(images, None, None); // [n, 1 + l, d]
                let [n, _, d] = tokens.dims();
                tokens.narrow(1, 0, 1).reshape([n, d])
            }
            Backbone::ResNet(net) => net.forward_features(images, mode),
            Backbone::RegNet(net) => net.forward_features(images, mode),
        }
    }

    /// Width of [`Backbone::forward_features`].
    pub fn num_features(&self) -> usize {
        match self {
            Backbone::Vit(vit) => vit.embed_dim,
            Backbone::ResNet(net) => net.num_features,
            Backbone::RegNet(net) => net.num_features,
        }
    }

    /// Every parameter and running statistic under its timm key, in PyTorch's layout, in
    /// timm's state-dict order (BatchNorm's `num_batches_tracked` is left out; PyTorch fills
    /// it in on loading).
    pub fn timm_tensors(&self) -> Result<Vec<NamedTensor>> {
        match self {
            Backbone::Vit(vit) => crate::export::timm_tensors(vit),
            Backbone::ResNet(net) => timm::tensors(net, resnet::timm_key),
            Backbone::RegNet(net) => timm::tensors(net, regnet::timm_key),
        }
    }

    /// The same backbone with every parameter and running statistic taken from `weights`.
    ///
    /// Errors ([`crate::Error::TimmWeights`], naming the file and the key) when the file
    /// lacks a parameter, has a key the model lacks, or has a different shape; the
    /// classifier (`head.*`, `fc.*`) and `num_batches_tracked` are skipped. Parameters keep
    /// their ids and whether they require a gradient.
    pub fn load_timm(self, weights: &TimmWeights) -> Result<Self> {
        let same = |path: &[String], shape: &[usize], key: fn(&[String]) -> String| {
            timm::TimmSlot::same(key(path), shape)
        };
        Ok(match self {
            Backbone::Vit(vit) => {
                let slot = timm::vit_slot(vit.patch_embed.patch_size);
                Backbone::Vit(timm::load(vit, weights, slot)?)
            }
            Backbone::ResNet(net) => Backbone::ResNet(timm::load(net, weights, |p, s| {
                same(p, s, resnet::timm_key)
            })?),
            Backbone::RegNet(net) => Backbone::RegNet(timm::load(net, weights, |p, s| {
                same(p, s, regnet::timm_key)
            })?),
        })
    }
}

/// Which backbone to build. Variants are values: [`BackboneConfig::by_name`] knows timm's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum BackboneConfig {
    /// A Vision Transformer.
    Vit(VitConfig),
    /// A ResNet.
    ResNet(ResNetConfig),
    /// A RegNet(Y).
    RegNet(RegNetConfig),
}

impl BackboneConfig {
    /// Every timm name [`BackboneConfig::by_name`] knows.
    pub const NAMES: &'static [&'static str] = &[
        "vit_tiny_patch16_224",
        "vit_small_patch16_224",
        "vit_base_patch16_224",
        "vit_large_patch16_224",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "regnety_002",
        "regnety_004",
        "regnety_006",
        "regnety_008",
        "regnety_016",
        "regnety_032",
        "regnety_040",
        "regnety_064",
        "regnety_080",
        "regnety_120",
        "regnety_160",
        "regnety_320",
        "regnety_640",
        "regnety_1280",
    ];

    /// The variant with this timm name (`vit_base_patch16_224`, `resnet50`, `regnety_032`).
    pub fn by_name(arch: &str) -> Option<Self> {
        VitConfig::by_name(arch)
            .map(Self::Vit)
            .or_else(|| ResNetConfig::by_name(arch).map(Self::ResNet))
            .or_else(|| RegNetConfig::by_name(arch).map(Self::RegNet))
    }

    /// The timm name of this architecture, if it is one of [`BackboneConfig::NAMES`]
    /// (the CIFAR stem and the init options do not change a CNN's name).
    pub fn arch_name(&self) -> Option<&'static str> {
        match self {
            BackboneConfig::Vit(cfg) => VitConfig::NAMES
                .into_iter()
                .find(|name| VitConfig::by_name(name).as_ref() == Some(cfg)),
            BackboneConfig::ResNet(cfg) => cfg.arch_name(),
            BackboneConfig::RegNet(cfg) => cfg.arch_name(),
        }
    }

    /// Width of the pooled features.
    pub fn num_features(&self) -> usize {
        match self {
            BackboneConfig::Vit(cfg) => cfg.embed_dim,
            BackboneConfig::ResNet(cfg) => cfg.num_features(),
            BackboneConfig::RegNet(cfg) => cfg.num_features(),
        }
    }

    /// Checks the config; returns the offending field and a message.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self {
            BackboneConfig::Vit(cfg) => cfg.check(),
            BackboneConfig::ResNet(cfg) => cfg.check(),
            BackboneConfig::RegNet(cfg) => cfg.check(),
        }
    }

    /// Builds the backbone with its architecture's timm (ViT: MAE) initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Backbone<B> {
        match self {
            BackboneConfig::Vit(cfg) => Backbone::Vit(cfg.init(device)),
            BackboneConfig::ResNet(cfg) => Backbone::ResNet(cfg.init(device)),
            BackboneConfig::RegNet(cfg) => Backbone::RegNet(cfg.init(device)),
        }
    }
}
