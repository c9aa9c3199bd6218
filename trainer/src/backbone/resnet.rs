//! ResNet as timm builds it (`timm/models/resnet.py`, He et al. 2016, "Deep Residual
//! Learning"), without the classifier (`num_classes=0`): stem, four stages, global average
//! pool.
//!
//! One [`ResNetConfig`] describes every variant; `resnet18/34/50/101/152` are one-line
//! constructors (the block type and blocks per stage). Parameter paths are timm's state-dict
//! keys (`conv1.weight`, `layer2.0.bn1.running_var`, ...), except the projection shortcut,
//! which timm keeps in an `nn.Sequential` (`downsample.0` conv, `downsample.1` BN) and which
//! is `downsample.conv`/`downsample.bn` here; `timm_key` maps between the two.
//!
//! ```text
//! stem:   conv1 7x7/2 - bn1 - relu - maxpool 3x3/2      (cifar_stem: conv1 3x3/1 - bn1 - relu)
//! block:  basic       x -> conv3x3/s - bn - relu - conv3x3 - bn ---------------- (+ shortcut) - relu
//!         bottleneck  x -> conv1x1 - bn - relu - conv3x3/s - bn - relu - conv1x1 - bn (+ shortcut) - relu
//! shortcut: identity, or conv1x1/s - bn when the stride or the width changes
//! ```
//!
//! The CIFAR stem is the one SimCLR (appendix B.9) and solo-learn use for 32x32 images; the
//! key names stay the same, only `conv1.weight` becomes `[64, 3, 3, 3]`. (solo-learn pads
//! that conv by 2, which makes 34x34 maps; we pad by 1 as SimCLR does.)

use burn::module::{Initializer, Module};
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::batch_norm::{BatchNorm, BatchNormConfig, NormMode};
use super::conv::{ConvNormAct, conv2d, global_avg_pool, kaiming_fan_out_std};

/// The residual block of a ResNet variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResNetBlock {
    /// Two 3x3 convolutions (ResNet-18/34); output width = stage width.
    Basic,
    /// 1x1, 3x3, 1x1 convolutions (ResNet-50/101/152); output width = 4 x stage width.
    Bottleneck,
}

impl ResNetBlock {
    /// Output width over stage width (timm `expansion`).
    pub fn expansion(self) -> usize {
        match self {
            ResNetBlock::Basic => 1,
            ResNetBlock::Bottleneck => 4,
        }
    }
}

/// Stage widths before expansion (timm `channels`).
pub const STAGE_WIDTHS: [usize; 4] = [64, 128, 256, 512];

/// Shape of a ResNet. Variants are values of this struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Block type.
    pub block: ResNetBlock,
    /// Blocks in each of the four stages (`layer1..layer4`).
    pub layers: [usize; 4],
    /// Input channels (3 for RGB).
    pub in_chans: usize,
    /// 3x3 stride-1 first conv and no max-pool, for 32x32 images (SimCLR's CIFAR ResNet).
    /// With the ImageNet stem a 32x32 image ends as a 1x1 map.
    pub cifar_stem: bool,
    /// Zero the last BN scale of each block so that every block starts as the identity
    /// (timm `zero_init_last=True`, its default; Goyal et al. 2017).
    pub zero_init_last: bool,
}

impl ResNetConfig {
    fn timm(block: ResNetBlock, layers: [usize; 4]) -> Self {
        Self {
            block,
            layers,
            in_chans: 3,
            cifar_stem: false,
            zero_init_last: true,
        }
    }

    /// timm `resnet18`: basic blocks `[2, 2, 2, 2]`, 512 features.
    pub fn resnet18() -> Self {
        Self::timm(ResNetBlock::Basic, [2, 2, 2, 2])
    }

    /// timm `resnet34`: basic blocks `[3, 4, 6, 3]`, 512 features.
    pub fn resnet34() -> Self {
        Self::timm(ResNetBlock::Basic, [3, 4, 6, 3])
    }

    /// timm `resnet50`: bottlenecks `[3, 4, 6, 3]`, 2048 features.
    pub fn resnet50() -> Self {
        Self::timm(ResNetBlock::Bottleneck, [3, 4, 6, 3])
    }

    /// timm `resnet101`: bottlenecks `[3, 4, 23, 3]`, 2048 features.
    pub fn resnet101() -> Self {
        Self::timm(ResNetBlock::Bottleneck, [3, 4, 23, 3])
    }

    /// timm `resnet152`: bottlenecks `[3, 8, 36, 3]`, 2048 features.
    pub fn resnet152() -> Self {
        Self::timm(ResNetBlock::Bottleneck, [3, 8, 36, 3])
    }

    /// The same network with the CIFAR stem.
    pub fn with_cifar_stem(mut self) -> Self {
        self.cifar_stem = true;
        self
    }

    /// The timm names [`ResNetConfig::by_name`] knows.
    pub const NAMES: [&'static str; 5] =
        ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"];

    /// The variant with this timm name.
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "resnet18" => Some(Self::resnet18()),
            "resnet34" => Some(Self::resnet34()),
            "resnet50" => Some(Self::resnet50()),
            "resnet101" => Some(Self::resnet101()),
            "resnet152" => Some(Self::resnet152()),
            _ => None,
        }
    }

    /// The timm name of this architecture (block and depths; the stem and the init do not
    /// change the name), if it is one of [`ResNetConfig::NAMES`].
    pub fn arch_name(&self) -> Option<&'static str> {
        Self::NAMES.into_iter().find(|name| {
            Self::by_name(name).is_some_and(|c| {
                (c.block, c.layers, c.in_chans) == (self.block, self.layers, self.in_chans)
            })
        })
    }

    /// Width of the pooled features (`512 * expansion`).
    pub fn num_features(&self) -> usize {
        STAGE_WIDTHS[3] * self.block.expansion()
    }

    /// Checks the config; returns the offending field and a message.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.layers.contains(&0) {
            return Err((
                "layers",
                format!("{:?}: every stage needs a block", self.layers),
            ));
        }
        if self.in_chans == 0 {
            return Err(("in_chans", "must be at least 1".into()));
        }
        Ok(())
    }

    /// Builds the network with timm's initialisation: convs `kaiming_normal_(fan_out,
    /// relu)`, BN weight 1 and bias 0, and the last BN weight of each block 0 with
    /// `zero_init_last`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let (kernel, stride) = if self.cifar_stem { (3, 1) } else { (7, 2) };
        let stem = 64;
        let mut d_in = stem;
        let [layer1, layer2, layer3, layer4] = std::array::from_fn(|i| {
            let stride = if i == 0 { 1 } else { 2 };
            (0..self.layers[i])
                .map(|j| {
                    let stride = if j == 0 { stride } else { 1 };
                    let block = self.init_block(d_in, STAGE_WIDTHS[i], stride, device);
                    d_in = STAGE_WIDTHS[i] * self.block.expansion();
                    block
                })
                .collect::<Vec<_>>()
        });
        ResNet {
            conv1: conv2d(
                [self.in_chans, stem],
                kernel,
                stride,
                1,
                kaiming_fan_out_std(stem, kernel),
                device,
            ),
            bn1: BatchNormConfig::new(stem).init(device),
            max_pool: !self.cifar_stem,
            layer1,
            layer2,
            layer3,
            layer4,
            num_features: self.num_features(),
        }
    }

    fn init_block<B: Backend>(
        &self,
        d_in: usize,
        width: usize,
        stride: usize,
        device: &B::Device,
    ) -> ResBlock<B> {
        let d_out = width * self.block.expansion();
        let conv = |channels: [usize; 2], kernel: usize, stride: usize| {
            conv2d(
                channels,
                kernel,
                stride,
                1,
                kaiming_fan_out_std(channels[1], kernel),
                device,
            )
        };
        let bn = |c: usize| BatchNormConfig::new(c).init(device);
        let (conv1, conv2, conv3) = match self.block {
            ResNetBlock::Basic => (
                conv([d_in, width], 3, stride),
                conv([width, d_out], 3, 1),
                None,
            ),
            ResNetBlock::Bottleneck => (
                conv([d_in, width], 1, 1),
                conv([width, width], 3, stride),
                Some(conv([width, d_out], 1, 1)),
            ),
        };
        let mut block = ResBlock {
            conv1,
            bn1: bn(width),
            conv2,
            bn2: bn(if conv3.is_some() { width } else { d_out }),
            bn3: conv3.as_ref().map(|_| bn(d_out)),
            conv3,
            downsample: (stride != 1 || d_in != d_out).then(|| {
                ConvNormAct::new(
                    [d_in, d_out],
                    1,
                    stride,
                    1,
                    kaiming_fan_out_std(d_out, 1),
                    false,
                    device,
                )
            }),
        };
        if self.zero_init_last {
            let last = block.bn3.as_mut().unwrap_or(&mut block.bn2);
            last.weight = Some(Initializer::Zeros.init([d_out], device));
        }
        block
    }
}

/// A basic block (`conv3`/`bn3` absent) or a bottleneck block; timm `BasicBlock`/`Bottleneck`.
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    /// 3x3 (basic, carries the stride) or 1x1 (bottleneck).
    pub conv1: Conv2d<B>,
    /// BN after `conv1`.
    pub bn1: BatchNorm<B>,
    /// 3x3; carries the stride in a bottleneck.
    pub conv2: Conv2d<B>,
    /// BN after `conv2`.
    pub bn2: BatchNorm<B>,
    /// Bottleneck only: the 1x1 expansion.
    pub conv3: Option<Conv2d<B>>,
    /// Bottleneck only: BN after `conv3`.
    pub bn3: Option<BatchNorm<B>>,
    /// Projection shortcut (timm `downsample.0`, `downsample.1`); identity when absent.
    pub downsample: Option<ConvNormAct<B>>,
}

impl<B: Backend> ResBlock<B> {
    /// # Shapes
    /// `x` `[n, c_in, h, w]` -> `[n, c_out, h / stride, w / stride]`.
    pub fn forward(&self, x: Tensor<B, 4>, mode: NormMode) -> Tensor<B, 4> {
        let shortcut = match &self.downsample {
            Some(downsample) => downsample.forward(x.clone(), mode),
            None => x.clone(),
        };
        let y = relu(self.bn1.forward(self.conv1.forward(x), mode));
        let mut y = self.bn2.forward(self.conv2.forward(y), mode);
        if let (Some(conv3), Some(bn3)) = (&self.conv3, &self.bn3) {
            y = bn3.forward(conv3.forward(relu(y)), mode);
        }
        relu(y + shortcut)
    }
}

/// The ResNet trunk, with timm's attribute names.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// Stem convolution (7x7/2, or 3x3/1 with the CIFAR stem).
    pub conv1: Conv2d<B>,
    /// Stem BN.
    pub bn1: BatchNorm<B>,
    /// Whether the stem ends with a 3x3/2 max-pool (not with the CIFAR stem).
    pub max_pool: bool,
    /// Stage 1 (stride 1).
    pub layer1: Vec<ResBlock<B>>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<ResBlock<B>>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<ResBlock<B>>,
    /// Stage 4 (stride 2).
    pub layer4: Vec<ResBlock<B>>,
    /// Width of the pooled features.
    pub num_features: usize,
}

impl<B: Backend> ResNet<B> {
    /// The last feature map (timm `forward_features`).
    ///
    /// # Shapes
    /// `images` `[n, c, h, w]` -> `[n, num_features, h / 32, w / 32]` (`h / 8` with the CIFAR
    /// stem).
    pub fn forward_map(&self, images: Tensor<B, 4>, mode: NormMode) -> Tensor<B, 4> {
        let mut x = relu(self.bn1.forward(self.conv1.forward(images), mode));
        if self.max_pool {
            x = max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for stage in [&self.layer1, &self.layer2, &self.layer3, &self.layer4] {
            for block in stage {
                x = block.forward(x, mode);
            }
        }
        x
    }

    /// Globally average-pooled features (timm with `num_classes=0`).
    ///
    /// # Shapes
    /// `images` `[n, c, h, w]` -> `[n, num_features]`.
    pub fn forward_features(&self, images: Tensor<B, 4>, mode: NormMode) -> Tensor<B, 2> {
        global_avg_pool(self.forward_map(images, mode))
    }
}

/// The timm state-dict key of a parameter path: `downsample.conv` is `downsample.0`,
/// `downsample.bn` is `downsample.1`; everything else is as it is.
pub(crate) fn timm_key(path: &[String]) -> String {
    let mut out = Vec::with_capacity(path.len());
    for (i, part) in path.iter().enumerate() {
        let after_downsample = i > 0 && path[i - 1] == "downsample";
        out.push(match part.as_str() {
            "conv" if after_downsample => "0",
            "bn" if after_downsample => "1",
            other => other,
        });
    }
    out.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    #[test]
    fn variants_have_timm_depths_and_widths() {
        for name in ResNetConfig::NAMES {
            let cfg = ResNetConfig::by_name(name).unwrap();
            assert_eq!(cfg.arch_name(), Some(name));
            assert!(cfg.check().is_ok());
            assert_eq!(cfg.clone().with_cifar_stem().arch_name(), Some(name));
        }
        assert_eq!(ResNetConfig::resnet18().num_features(), 512);
        assert_eq!(ResNetConfig::resnet50().num_features(), 2048);
        assert!(ResNetConfig::by_name("resnet26").is_none());
    }

    #[test]
    fn resnet50_blocks_have_timm_shapes() {
        let device = Default::default();
        let net = ResNetConfig::resnet50().init::<B>(&device);
        let block = &net.layer2[0];
        assert_eq!(block.conv1.weight.dims(), [128, 256, 1, 1]);
        assert_eq!(block.conv2.weight.dims(), [128, 128, 3, 3]);
        assert_eq!(block.conv2.stride, [2, 2]);
        assert_eq!(
            block.conv3.as_ref().unwrap().weight.dims(),
            [512, 128, 1, 1]
        );
        assert_eq!(
            block.downsample.as_ref().unwrap().conv.weight.dims(),
            [512, 256, 1, 1]
        );
        // layer1.0 widens 64 -> 256 at stride 1: projection shortcut too.
        assert!(net.layer1[0].downsample.is_some() && net.layer1[1].downsample.is_none());
        // zero_init_last: bn3 weight is zero, bn2 is one.
        let w = |bn: &BatchNorm<B>| bn.weight.as_ref().unwrap().val().sum().into_scalar();
        assert_eq!(w(block.bn3.as_ref().unwrap()), 0.0);
        assert_eq!(w(&block.bn2), 128.0);
        assert_eq!(
            net.layer1.len() + net.layer2.len() + net.layer3.len() + net.layer4.len(),
            16
        );
    }

    #[test]
    fn cifar_stem_keeps_resolution_until_stage_two() {
        let device = Default::default();
        let cfg = ResNetConfig::resnet18().with_cifar_stem();
        let net = cfg.init::<B>(&device);
        assert_eq!(net.conv1.weight.dims(), [64, 3, 3, 3]);
        let images = Tensor::<B, 4>::random([2, 3, 32, 32], Distribution::Default, &device);
        let map = net.forward_map(images.clone(), NormMode::Train);
        assert_eq!(map.dims(), [2, 512, 4, 4]);
        assert_eq!(
            net.forward_features(images.clone(), NormMode::Eval).dims(),
            [2, 512]
        );
        // The ImageNet stem divides by 32.
        let imagenet = ResNetConfig::resnet18().init::<B>(&device);
        assert_eq!(imagenet.conv1.weight.dims(), [64, 3, 7, 7]);
        assert_eq!(
            imagenet.forward_map(images, NormMode::Eval).dims(),
            [2, 512, 1, 1]
        );
    }

    #[test]
    fn downsample_keys_are_timm_sequential_indices() {
        let path = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            timm_key(&path("layer2.0.downsample.conv.weight")),
            "layer2.0.downsample.0.weight"
        );
        assert_eq!(
            timm_key(&path("layer2.0.downsample.bn.running_var")),
            "layer2.0.downsample.1.running_var"
        );
        assert_eq!(
            timm_key(&path("layer2.0.bn1.weight")),
            "layer2.0.bn1.weight"
        );
    }
}
