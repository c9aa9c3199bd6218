//! Projection and prediction heads of the self-supervised papers, as one configurable MLP.
//!
//! Every head in SimCLR, MoCo v2/v3, BYOL, SimSiam, Barlow Twins, VICReg and NNCLR is the
//! same shape: linear layers, with BatchNorm and ReLU after each hidden one, and optionally
//! a BatchNorm (with or without affine) after the last. [`MlpHeadConfig`] states that shape
//! as data; the named constructors give each paper's head as its official code builds it,
//! and say where the code departs from the paper's text.
//!
//! ```text
//! x [n, d_0] -> layers.0 (linear, bn, relu) -> ... -> layers.{k-1} (linear[, bn]) -> [n, d_k]
//! ```
//!
//! Parameter paths: `layers.{i}.linear.{weight,bias}`, `layers.{i}.bn.{weight,bias,running_*}`.
//! BatchNorm takes its [`NormMode`] from the caller, as in [`crate::backbone`].

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::backbone::{BatchNorm, BatchNormConfig, NormMode};

/// The normalisation after the last linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LastNorm {
    /// None: the output is the last linear's.
    None,
    /// BatchNorm with learned scale and shift.
    Affine,
    /// BatchNorm without affine parameters (SimSiam, MoCo v3 projectors).
    NoAffine,
}

/// Shape of an MLP head. Paper heads are the named constructors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpHeadConfig {
    /// Widths: input, hidden..., output. `k + 1` widths make `k` linear layers; fewer than
    /// two widths make an identity head (see [`MlpHeadConfig::check`]).
    pub dims: Vec<usize>,
    /// Bias on the hidden linear layers (redundant before a BatchNorm in train mode).
    pub bias: bool,
    /// Bias on the last linear layer.
    pub last_bias: bool,
    /// BatchNorm between each hidden linear layer and its ReLU.
    pub hidden_bn: bool,
    /// Normalisation after the last linear layer.
    pub last_bn: LastNorm,
}

impl MlpHeadConfig {
    fn mlp(
        dims: &[usize],
        bias: bool,
        last_bias: bool,
        hidden_bn: bool,
        last_bn: LastNorm,
    ) -> Self {
        Self {
            dims: dims.to_vec(),
            bias,
            last_bias,
            hidden_bn,
            last_bn,
        }
    }

    /// SimCLR projection head `g` (Chen et al. 2020, §2.1 and B.9; `google-research/simclr`
    /// v1): `d -> 2048 -> 128`, ReLU between, no BatchNorm, biases.
    pub fn simclr(d: usize) -> Self {
        Self::mlp(&[d, 2048, 128], true, true, false, LastNorm::None)
    }

    /// MoCo v2 MLP head (Chen et al. 2020, "Improved Baselines"; `facebookresearch/moco`
    /// `--mlp`: `Sequential(Linear(d, d), ReLU, fc)`): `d -> 2048 -> 128`, no BatchNorm. For
    /// ResNet-50 (`d` = 2048) this is the official head.
    pub fn mocov2(d: usize) -> Self {
        Self::mlp(&[d, 2048, 128], true, true, false, LastNorm::None)
    }

    /// BYOL projector (Grill et al. 2020, §3.3 and J.1; `deepmind/byol` `MLP`):
    /// `d -> 4096 (BN, ReLU) -> 256`, biases.
    pub fn byol_projector(d: usize) -> Self {
        Self::mlp(&[d, 4096, 256], true, true, true, LastNorm::None)
    }

    /// BYOL predictor: the projector's architecture on the 256-d projection.
    pub fn byol_predictor() -> Self {
        Self::byol_projector(256)
    }

    /// SimSiam projector (Chen & He 2021, §4.1; `facebookresearch/simsiam` `builder.py`):
    /// `d -> 2048 (BN, ReLU) -> 2048 (BN, ReLU) -> 2048 (BN, no affine)`, no biases (the
    /// official last linear has a bias frozen at its init, "not used as it is followed by BN").
    pub fn simsiam_projector(d: usize) -> Self {
        Self::mlp(
            &[d, 2048, 2048, 2048],
            false,
            false,
            true,
            LastNorm::NoAffine,
        )
    }

    /// SimSiam predictor: `2048 -> 512 (BN, ReLU) -> 2048`; the hidden linear has no bias,
    /// the output linear has one (official `builder.py`).
    pub fn simsiam_predictor() -> Self {
        Self::mlp(&[2048, 512, 2048], false, true, true, LastNorm::None)
    }

    /// Barlow Twins projector (Zbontar et al. 2021, §2; `facebookresearch/barlowtwins`
    /// `main.py`): `d -> 8192 (BN, ReLU) -> 8192 (BN, ReLU) -> 8192`, no biases. The
    /// affine-free BatchNorm of the embeddings belongs to the loss, not to this head.
    pub fn barlow_twins(d: usize) -> Self {
        Self::mlp(&[d, 8192, 8192, 8192], false, false, true, LastNorm::None)
    }

    /// VICReg expander (Bardes et al. 2022, §4.2; `facebookresearch/vicreg` `Projector`,
    /// `--mlp 8192-8192-8192`): `d -> 8192 (BN, ReLU) -> 8192 (BN, ReLU) -> 8192`, biases
    /// on the hidden linears, none on the last.
    pub fn vicreg(d: usize) -> Self {
        Self::mlp(&[d, 8192, 8192, 8192], true, false, true, LastNorm::None)
    }

    /// MoCo v3 projector for a ResNet (Chen et al. 2021, §3; `facebookresearch/moco-v3`
    /// `MoCo_ResNet`, `_build_mlp(2, d, 4096, 256)`): `d -> 4096 (BN, ReLU) -> 256 (BN, no
    /// affine)`, no biases. The paper's text says three layers; the code uses two for ResNets.
    pub fn mocov3_projector(d: usize) -> Self {
        Self::mlp(&[d, 4096, 256], false, false, true, LastNorm::NoAffine)
    }

    /// MoCo v3 projector for a ViT (`MoCo_ViT`, `_build_mlp(3, d, 4096, 256)`):
    /// `d -> 4096 -> 4096 -> 256 (BN, no affine)`, BN and ReLU between, no biases.
    pub fn mocov3_vit_projector(d: usize) -> Self {
        Self::mlp(
            &[d, 4096, 4096, 256],
            false,
            false,
            true,
            LastNorm::NoAffine,
        )
    }

    /// MoCo v3 predictor for a ResNet (`_build_mlp(2, 256, 4096, 256, last_bn=False)`):
    /// `256 -> 4096 (BN, ReLU) -> 256`, no biases, no last BatchNorm.
    pub fn mocov3_predictor() -> Self {
        Self::mlp(&[256, 4096, 256], false, false, true, LastNorm::None)
    }

    /// MoCo v3 predictor for a ViT (`_build_mlp(2, 256, 4096, 256)`): as
    /// [`MlpHeadConfig::mocov3_predictor`] with a last BatchNorm without affine.
    pub fn mocov3_vit_predictor() -> Self {
        Self::mlp(&[256, 4096, 256], false, false, true, LastNorm::NoAffine)
    }

    /// NNCLR projector (Dwibedi et al. 2021, §4 "Implementation details": 3 layers, hidden
    /// 2048, output 256, BatchNorm on every layer): `d -> 2048 -> 2048 -> 256 (BN)`, BN and
    /// ReLU between, biases.
    pub fn nnclr_projector(d: usize) -> Self {
        Self::mlp(&[d, 2048, 2048, 256], true, true, true, LastNorm::Affine)
    }

    /// NNCLR predictor (same section: 2 layers, hidden 4096): `256 -> 4096 (BN, ReLU) -> 256`.
    pub fn nnclr_predictor() -> Self {
        Self::mlp(&[256, 4096, 256], true, true, true, LastNorm::None)
    }

    /// Output width (the input width for an empty head).
    pub fn out_dim(&self) -> usize {
        self.dims.last().copied().unwrap_or(0)
    }

    /// Checks the config; returns the offending field and a message.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.dims.len() < 2 || self.dims.contains(&0) {
            return Err((
                "dims",
                format!(
                    "{:?}: need an input and an output width, all positive",
                    self.dims
                ),
            ));
        }
        Ok(())
    }

    /// Builds the head; linear layers get PyTorch's default init (`U(-1/sqrt(fan_in),
    /// 1/sqrt(fan_in))` for weight and bias, which is burn's default too), BatchNorm
    /// weight 1 and bias 0.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MlpHead<B> {
        let count = self.dims.len().saturating_sub(1);
        let layers = self
            .dims
            .windows(2)
            .enumerate()
            .map(|(i, pair)| {
                let last = i + 1 == count;
                let d_out = pair[1];
                let bn = match (last, self.last_bn) {
                    (false, _) if self.hidden_bn => Some(BatchNormConfig::new(d_out)),
                    (true, LastNorm::Affine) => Some(BatchNormConfig::new(d_out)),
                    (true, LastNorm::NoAffine) => {
                        Some(BatchNormConfig::new(d_out).without_affine())
                    }
                    _ => None,
                };
                MlpLayer {
                    linear: LinearConfig::new(pair[0], d_out)
                        .with_bias(if last { self.last_bias } else { self.bias })
                        .init(device),
                    bn: bn.map(|c| c.init(device)),
                    relu: !last,
                }
            })
            .collect();
        MlpHead { layers }
    }
}

/// One layer: linear, then optional BatchNorm, then ReLU unless it is the last.
#[derive(Module, Debug)]
pub struct MlpLayer<B: Backend> {
    /// Weight `[d_in, d_out]` (burn layout).
    pub linear: Linear<B>,
    /// BatchNorm over the `d_out` features.
    pub bn: Option<BatchNorm<B>>,
    /// Whether a ReLU follows.
    pub relu: bool,
}

/// An MLP projection or prediction head.
#[derive(Module, Debug)]
pub struct MlpHead<B: Backend> {
    /// The layers, input first.
    pub layers: Vec<MlpLayer<B>>,
}

impl<B: Backend> MlpHead<B> {
    /// # Shapes
    /// `x` `[n, d_in]` -> `[n, d_out]`. BatchNorm in [`NormMode::Train`] needs `n > 1`.
    pub fn forward(&self, x: Tensor<B, 2>, mode: NormMode) -> Tensor<B, 2> {
        self.layers.iter().fold(x, |x, layer| {
            let mut y = layer.linear.forward(x); // [n, d_out]
            if let Some(bn) = &layer.bn {
                y = bn.forward(y, mode);
            }
            if layer.relu { relu(y) } else { y }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type B = Flex;

    #[test]
    fn paper_heads_have_their_widths() {
        let cases = [
            (MlpHeadConfig::simclr(512), 128, 2),
            (MlpHeadConfig::mocov2(2048), 128, 2),
            (MlpHeadConfig::byol_projector(2048), 256, 2),
            (MlpHeadConfig::byol_predictor(), 256, 2),
            (MlpHeadConfig::simsiam_projector(2048), 2048, 3),
            (MlpHeadConfig::simsiam_predictor(), 2048, 2),
            (MlpHeadConfig::barlow_twins(2048), 8192, 3),
            (MlpHeadConfig::vicreg(2048), 8192, 3),
            (MlpHeadConfig::mocov3_projector(2048), 256, 2),
            (MlpHeadConfig::mocov3_vit_projector(384), 256, 3),
            (MlpHeadConfig::mocov3_predictor(), 256, 2),
            (MlpHeadConfig::mocov3_vit_predictor(), 256, 2),
            (MlpHeadConfig::nnclr_projector(2048), 256, 3),
            (MlpHeadConfig::nnclr_predictor(), 256, 2),
        ];
        for (cfg, out, layers) in cases {
            assert!(cfg.check().is_ok());
            assert_eq!(
                (cfg.out_dim(), cfg.dims.len() - 1),
                (out, layers),
                "{cfg:?}"
            );
        }
        assert!(MlpHeadConfig::simclr(0).check().is_err());
    }

    #[test]
    fn forward_shapes_and_layer_structure() {
        let device = Default::default();
        // A narrow SimSiam-like projector: no biases, hidden BN, last BN without affine.
        let cfg = MlpHeadConfig {
            dims: vec![6, 16, 16, 4],
            ..MlpHeadConfig::simsiam_projector(6)
        };
        let head = cfg.init::<B>(&device);
        assert_eq!(head.layers.len(), 3);
        assert!(head.layers.iter().all(|l| l.linear.bias.is_none()));
        assert!(head.layers[0].relu && !head.layers[2].relu);
        let last_bn = head.layers[2].bn.as_ref().unwrap();
        assert!(last_bn.weight.is_none() && last_bn.bias.is_none());
        let x = Tensor::<B, 2>::random([5, 6], Distribution::Default, &device);
        let y = head.forward(x.clone(), NormMode::Train);
        assert_eq!(y.dims(), [5, 4]);
        // Last BN without affine in train mode: each output feature has mean 0.
        let mean = y.mean_dim(0).abs().max().into_scalar();
        assert!(mean < 1e-5, "{mean}");
        assert_eq!(head.forward(x, NormMode::Eval).dims(), [5, 4]);

        // SimCLR-like: biases, no BN, ReLU only between.
        let cfg = MlpHeadConfig {
            dims: vec![6, 8, 3],
            ..MlpHeadConfig::simclr(6)
        };
        let head = cfg.init::<B>(&device);
        assert!(
            head.layers
                .iter()
                .all(|l| l.bn.is_none() && l.linear.bias.is_some())
        );
        let x = Tensor::<B, 2>::random([2, 6], Distribution::Default, &device);
        assert_eq!(head.forward(x, NormMode::Eval).dims(), [2, 3]);
    }

    #[test]
    fn parameter_paths_are_layers_linear_and_bn() {
        use burn::module::{ModuleVisitor, Param};
        struct Names(Vec<String>, Vec<String>);
        impl ModuleVisitor<B> for Names {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.0.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.0.pop();
            }
            fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<B, D>>) {
                self.1.push(self.0.join("."));
            }
        }
        let device = Default::default();
        let cfg = MlpHeadConfig {
            dims: vec![4, 8, 2],
            ..MlpHeadConfig::byol_projector(4)
        };
        let mut names = Names(Vec::new(), Vec::new());
        cfg.init::<B>(&device).visit(&mut names);
        assert_eq!(
            names.1,
            [
                "layers.0.linear.weight",
                "layers.0.linear.bias",
                "layers.0.bn.weight",
                "layers.0.bn.bias",
                "layers.0.bn.running_mean",
                "layers.0.bn.running_var",
                "layers.1.linear.weight",
                "layers.1.linear.bias",
            ]
        );
    }
}
