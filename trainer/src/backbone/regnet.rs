//! RegNetY as timm builds it (`timm/models/regnet.py`; Radosavovic et al. 2020, "Designing
//! Network Design Spaces"), without the classifier (`num_classes=0`). SEER (Goyal et al.
//! 2021) pretrains this family at scale.
//!
//! ```text
//! stem:  conv3x3/2 - bn - relu (32 wide)
//! stage: blocks b1..bD; b1 carries the stride 2 and the change of width
//! block: x -> conv1 1x1 - bn - relu -> conv2 3x3/s, groups = w / group_size - bn - relu
//!          -> se (mean pool - fc1 1x1 - relu - fc2 1x1 - sigmoid, times the input)
//!          -> conv3 1x1 - bn  (+ shortcut: identity, or downsample conv1x1/s - bn) - relu
//! head:  global average pool
//! ```
//!
//! The SE bottleneck width is `round(block input width * se_ratio)` (timm), so it differs
//! between a stage's first block and the others. Bottleneck ratio is 1 for every RegNetY.
//!
//! Variants are data: timm derives each variant's stage widths and depths from
//! `(w0, wa, wm, depth, group_size)` with `generate_regnet` and `adjust_widths_groups_comp`;
//! the constructors below hold the result (quoted with the inputs), so nothing here depends
//! on float rounding. Parameter paths are `stages.{i}.blocks.{j}...`; `timm_key` turns them
//! into timm's `s{i+1}.b{j+1}...`.

use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use super::batch_norm::NormMode;
use super::conv::{ConvNormAct, global_avg_pool};

/// One stage of a RegNet: `depth` blocks of width `width` with grouped 3x3 convs of
/// `group_size` channels per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegStageConfig {
    /// Block width (output channels). A multiple of `group_size`.
    pub width: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Channels per group of the 3x3 convolution.
    pub group_size: usize,
}

/// Shape of a RegNet. Variants are values of this struct.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegNetConfig {
    /// Input channels (3 for RGB).
    pub in_chans: usize,
    /// Stem width (32 in every timm RegNet).
    pub stem_width: usize,
    /// The stages, each downsampling by 2 in its first block.
    pub stages: Vec<RegStageConfig>,
    /// Squeeze-Excitation bottleneck over the block input width (0.25 for RegNetY; 0 = no
    /// SE, RegNetX).
    pub se_ratio: f64,
    /// Zero the last BN scale of each block (timm `zero_init_last=True`, its default).
    pub zero_init_last: bool,
}

macro_rules! regnety {
    ($($(#[$doc:meta])* $name:ident: $gs:literal, [$(($w:literal, $d:literal)),*];)*) => {
        impl RegNetConfig {
            $(
                $(#[$doc])*
                pub fn $name() -> Self {
                    Self::regnety(&[$(($w, $d)),*], $gs)
                }
            )*

            /// The timm names [`RegNetConfig::by_name`] knows.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// The variant with this timm name.
            pub fn by_name(name: &str) -> Option<Self> {
                match name {
                    $(stringify!($name) => Some(Self::$name()),)*
                    _ => None,
                }
            }
        }
    };
}

regnety! {
    /// timm `regnety_002` (w0 24, wa 36.44, wm 2.49, depth 13, group 8): 368 features.
    regnety_002: 8, [(24, 1), (56, 1), (152, 4), (368, 7)];
    /// timm `regnety_004` (w0 48, wa 27.89, wm 2.09, depth 16, group 8): 440 features.
    regnety_004: 8, [(48, 1), (104, 3), (208, 6), (440, 6)];
    /// timm `regnety_006` (w0 48, wa 32.54, wm 2.32, depth 15, group 16): 608 features.
    regnety_006: 16, [(48, 1), (112, 3), (256, 7), (608, 4)];
    /// timm `regnety_008` (w0 56, wa 38.84, wm 2.4, depth 14, group 16): 768 features.
    regnety_008: 16, [(64, 1), (128, 3), (320, 8), (768, 2)];
    /// timm `regnety_016` (w0 48, wa 20.71, wm 2.65, depth 27, group 24): 888 features.
    regnety_016: 24, [(48, 2), (120, 6), (336, 17), (888, 2)];
    /// timm `regnety_032` (w0 80, wa 42.63, wm 2.66, depth 21, group 24): 1512 features.
    regnety_032: 24, [(72, 2), (216, 5), (576, 13), (1512, 1)];
    /// timm `regnety_040` (w0 96, wa 31.41, wm 2.24, depth 22, group 64): 1088 features.
    regnety_040: 64, [(128, 2), (192, 6), (512, 12), (1088, 2)];
    /// timm `regnety_064` (w0 112, wa 33.22, wm 2.27, depth 25, group 72): 1296 features.
    regnety_064: 72, [(144, 2), (288, 7), (576, 14), (1296, 2)];
    /// timm `regnety_080` (w0 192, wa 76.82, wm 2.19, depth 17, group 56): 2016 features.
    regnety_080: 56, [(168, 2), (448, 4), (896, 10), (2016, 1)];
    /// timm `regnety_120` (w0 168, wa 73.36, wm 2.37, depth 19, group 112): 2240 features.
    regnety_120: 112, [(224, 2), (448, 5), (896, 11), (2240, 1)];
    /// timm `regnety_160` (w0 200, wa 106.23, wm 2.48, depth 18, group 112): 3024 features.
    regnety_160: 112, [(224, 2), (448, 4), (1232, 11), (3024, 1)];
    /// timm `regnety_320` (w0 232, wa 115.89, wm 2.53, depth 20, group 232): 3712 features.
    regnety_320: 232, [(232, 2), (696, 5), (1392, 12), (3712, 1)];
    /// timm `regnety_640` (w0 352, wa 147.48, wm 2.4, depth 20, group 328): SEER's
    /// RegNetY-64GF, 4920 features.
    regnety_640: 328, [(328, 2), (984, 5), (1968, 12), (4920, 1)];
    /// timm `regnety_1280` (w0 456, wa 160.83, wm 2.52, depth 27, group 264): SEER's
    /// RegNetY-128GF, 7392 features.
    regnety_1280: 264, [(528, 2), (1056, 7), (2904, 17), (7392, 1)];
}

impl RegNetConfig {
    fn regnety(stages: &[(usize, usize)], group_size: usize) -> Self {
        Self {
            in_chans: 3,
            stem_width: 32,
            stages: stages
                .iter()
                .map(|&(width, depth)| RegStageConfig {
                    width,
                    depth,
                    group_size,
                })
                .collect(),
            se_ratio: 0.25,
            zero_init_last: true,
        }
    }

    /// The timm name of this architecture (the init does not change it), if it has one.
    pub fn arch_name(&self) -> Option<&'static str> {
        Self::NAMES.iter().copied().find(|name| {
            Self::by_name(name).is_some_and(|c| {
                (c.in_chans, c.stem_width, &c.stages, c.se_ratio)
                    == (self.in_chans, self.stem_width, &self.stages, self.se_ratio)
            })
        })
    }

    /// Width of the pooled features (the last stage's width).
    pub fn num_features(&self) -> usize {
        self.stages.last().map_or(self.stem_width, |s| s.width)
    }

    /// Checks the config; returns the offending field and a message.
    // `!(x >= 0.0)` on purpose: NaN must fail the check too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.in_chans == 0 || self.stem_width == 0 {
            return Err((
                "stem_width",
                "in_chans and stem_width must be positive".into(),
            ));
        }
        if self.stages.is_empty() {
            return Err(("stages", "at least one stage".into()));
        }
        for (i, s) in self.stages.iter().enumerate() {
            if s.depth == 0 || s.group_size == 0 || !s.width.is_multiple_of(s.group_size) {
                return Err((
                    "stages",
                    format!(
                        "stage {}: {s:?}: width must be a positive multiple of group_size, depth positive",
                        i + 1
                    ),
                ));
            }
        }
        if !(self.se_ratio >= 0.0 && self.se_ratio <= 1.0) {
            return Err(("se_ratio", format!("{} is not in [0, 1]", self.se_ratio)));
        }
        Ok(())
    }

    /// Builds the network with timm's RegNet initialisation: conv weights `N(0, 2 /
    /// fan_out)` with `fan_out = k * k * out / groups`, conv biases 0, BN weight 1 and bias
    /// 0, and each block's `conv3.bn` weight 0 with `zero_init_last`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> RegNet<B> {
        let cna = |channels: [usize; 2], kernel: usize, stride: usize, groups: usize, act: bool| {
            let fan_out = kernel * kernel * channels[1] / groups;
            let std = (2.0 / fan_out as f64).sqrt();
            ConvNormAct::new(channels, kernel, stride, groups, std, act, device)
        };
        let mut d_in = self.stem_width;
        let stages = self
            .stages
            .iter()
            .map(|stage| {
                let w = stage.width;
                let blocks = (0..stage.depth)
                    .map(|j| {
                        let stride = if j == 0 { 2 } else { 1 };
                        let se_width = (d_in as f64 * self.se_ratio).round_ties_even() as usize;
                        let mut block = RegBlock {
                            conv1: cna([d_in, w], 1, 1, 1, true),
                            conv2: cna([w, w], 3, stride, w / stage.group_size, true),
                            se: (se_width > 0).then(|| SqueezeExcite {
                                fc1: se_conv([w, se_width], device),
                                fc2: se_conv([se_width, w], device),
                            }),
                            conv3: cna([w, w], 1, 1, 1, false),
                            downsample: (d_in != w || stride != 1)
                                .then(|| cna([d_in, w], 1, stride, 1, false)),
                        };
                        if self.zero_init_last {
                            block.conv3.bn.weight = Some(Initializer::Zeros.init([w], device));
                        }
                        d_in = w;
                        block
                    })
                    .collect();
                RegStage { blocks }
            })
            .collect();
        RegNet {
            stem: cna([self.in_chans, self.stem_width], 3, 2, 1, true),
            stages,
            num_features: self.num_features(),
        }
    }
}

/// A 1x1 conv with bias, timm RegNet init (`N(0, 2 / out)`, bias 0).
fn se_conv<B: Backend>([d_in, d_out]: [usize; 2], device: &B::Device) -> Conv2d<B> {
    let std = (2.0 / d_out as f64).sqrt();
    let mut conv = Conv2dConfig::new([d_in, d_out], [1, 1])
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    conv.bias = Some(Initializer::Zeros.init([d_out], device));
    conv
}

/// Squeeze-Excitation (Hu et al. 2018; timm `SEModule`): channel gates from the pooled map.
#[derive(Module, Debug)]
pub struct SqueezeExcite<B: Backend> {
    /// Reduction, 1x1 conv with bias `[rd, c, 1, 1]`.
    pub fc1: Conv2d<B>,
    /// Expansion, 1x1 conv with bias `[c, rd, 1, 1]`.
    pub fc2: Conv2d<B>,
}

impl<B: Backend> SqueezeExcite<B> {
    /// `x * sigmoid(fc2(relu(fc1(mean_hw(x)))))`.
    ///
    /// # Shapes
    /// `x` `[n, c, h, w]` -> `[n, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let pooled = x.clone().mean_dim(3).mean_dim(2); // [n, c, 1, 1]
        let gate = sigmoid(self.fc2.forward(relu(self.fc1.forward(pooled)))); // [n, c, 1, 1]
        x * gate
    }
}

/// timm RegNet `Bottleneck` with bottleneck ratio 1.
#[derive(Module, Debug)]
pub struct RegBlock<B: Backend> {
    /// 1x1, to the block width.
    pub conv1: ConvNormAct<B>,
    /// Grouped 3x3, carries the stride.
    pub conv2: ConvNormAct<B>,
    /// Squeeze-Excitation (absent when `se_ratio` is 0).
    pub se: Option<SqueezeExcite<B>>,
    /// 1x1, no activation.
    pub conv3: ConvNormAct<B>,
    /// Projection shortcut; identity when absent.
    pub downsample: Option<ConvNormAct<B>>,
}

impl<B: Backend> RegBlock<B> {
    /// # Shapes
    /// `x` `[n, c_in, h, w]` -> `[n, width, h / stride, w / stride]`.
    pub fn forward(&self, x: Tensor<B, 4>, mode: NormMode) -> Tensor<B, 4> {
        let shortcut = match &self.downsample {
            Some(downsample) => downsample.forward(x.clone(), mode),
            None => x.clone(),
        };
        let mut y = self.conv2.forward(self.conv1.forward(x, mode), mode);
        if let Some(se) = &self.se {
            y = se.forward(y);
        }
        relu(self.conv3.forward(y, mode) + shortcut)
    }
}

/// One stage (timm `RegStage`).
#[derive(Module, Debug)]
pub struct RegStage<B: Backend> {
    /// timm `b1`, `b2`, ...
    pub blocks: Vec<RegBlock<B>>,
}

/// The RegNet trunk.
#[derive(Module, Debug)]
pub struct RegNet<B: Backend> {
    /// 3x3/2 conv-BN-ReLU.
    pub stem: ConvNormAct<B>,
    /// timm `s1`, `s2`, ...
    pub stages: Vec<RegStage<B>>,
    /// Width of the pooled features.
    pub num_features: usize,
}

impl<B: Backend> RegNet<B> {
    /// The last feature map (timm `forward_features`; `final_conv` is the identity).
    ///
    /// # Shapes
    /// `images` `[n, c, h, w]` -> `[n, num_features, h / 32, w / 32]` (four stages).
    pub fn forward_map(&self, images: Tensor<B, 4>, mode: NormMode) -> Tensor<B, 4> {
        let mut x = self.stem.forward(images, mode);
        for stage in &self.stages {
            for block in &stage.blocks {
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

/// The timm key of a parameter path: `stages.{i}.blocks.{j}.rest` is `s{i+1}.b{j+1}.rest`.
pub(crate) fn timm_key(path: &[String]) -> String {
    let one_based = |index: &str, prefix: &str| match index.parse::<usize>() {
        Ok(i) => format!("{prefix}{}", i + 1),
        Err(_) => format!("{prefix}{index}"),
    };
    match path {
        [stages, i, blocks, j, rest @ ..] if stages == "stages" && blocks == "blocks" => {
            let mut parts = vec![one_based(i, "s"), one_based(j, "b")];
            parts.extend(rest.iter().cloned());
            parts.join(".")
        }
        _ => path.join("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    #[test]
    fn variants_are_valid_and_named() {
        for &name in RegNetConfig::NAMES {
            let cfg = RegNetConfig::by_name(name).unwrap();
            assert!(cfg.check().is_ok(), "{name}");
            assert_eq!(cfg.arch_name(), Some(name));
            assert_eq!(cfg.stages.len(), 4);
        }
        let cfg = RegNetConfig::regnety_032();
        assert_eq!(cfg.num_features(), 1512);
        assert_eq!(cfg.stages.iter().map(|s| s.depth).sum::<usize>(), 21);
        assert!(RegNetConfig::by_name("regnetx_002").is_none());
    }

    #[test]
    fn regnety_002_has_timm_shapes() {
        let device = Default::default();
        let net = RegNetConfig::regnety_002().init::<B>(&device);
        let b1 = &net.stages[0].blocks[0];
        assert_eq!(b1.conv2.conv.weight.dims(), [24, 8, 3, 3]);
        assert_eq!(b1.conv2.conv.groups, 3);
        // SE width from the block input (stem 32 * 0.25 = 8).
        assert_eq!(b1.se.as_ref().unwrap().fc1.weight.dims(), [8, 24, 1, 1]);
        let b2 = &net.stages[2].blocks[1];
        assert_eq!(b2.se.as_ref().unwrap().fc1.weight.dims(), [38, 152, 1, 1]);
        assert!(b2.downsample.is_none());
        let images = Tensor::<B, 4>::random([2, 3, 64, 64], Distribution::Default, &device);
        assert_eq!(
            net.forward_map(images.clone(), NormMode::Eval).dims(),
            [2, 368, 2, 2]
        );
        assert_eq!(
            net.forward_features(images, NormMode::Train).dims(),
            [2, 368]
        );
    }

    #[test]
    fn keys_are_one_based_stage_and_block_names() {
        let path = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            timm_key(&path("stages.0.blocks.0.conv1.conv.weight")),
            "s1.b1.conv1.conv.weight"
        );
        assert_eq!(
            timm_key(&path("stages.3.blocks.6.se.fc2.bias")),
            "s4.b7.se.fc2.bias"
        );
        assert_eq!(
            timm_key(&path("stem.bn.running_mean")),
            "stem.bn.running_mean"
        );
    }
}
