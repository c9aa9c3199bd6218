//! The DINO projection head (Caron et al. 2021, §3.1 and appendix; `vision_transformer.py`
//! `DINOHead`), shared by DINO and iBOT (whose `shared_head` applies it to the class token and
//! to the patch tokens alike).
//!
//! ```text
//! x [n, d] ─► Linear(d, 2048) ─ GELU ─► Linear(2048, 2048) ─ GELU ─► Linear(2048, 256)
//!   ─► L2-normalise ─► weight-normalised Linear(256, K), no bias, norm g fixed to 1 ─► [n, K]
//! ```
//!
//! The last layer is `weight_norm(Linear(256, K, bias=False))` with `weight_g` filled with 1 and
//! frozen (`norm_last_layer=True`, the default and the ViT-S/16 setting): its effective
//! weight is each output's direction `v_k / |v_k|`, and only `weight_v` is a parameter. The
//! hidden linears start from `trunc_normal(std=0.02)` with zero biases (a normal of std 0.02:
//! the truncation at ±2 is 100 standard deviations away); `weight_v` keeps PyTorch's
//! default linear initialisation, as the official code creates it after `apply(_init_weights)`.
//! No BatchNorm (`use_bn=False`), so the head treats every row on its own.

use burn::module::{Initializer, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::losses::normalize;

/// Shape of a DINO head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DinoHeadConfig {
    /// Input width (the backbone's features).
    pub in_dim: usize,
    /// Hidden width of the MLP (paper: 2048).
    pub hidden_dim: usize,
    /// Width of the L2-normalised bottleneck (paper: 256).
    pub bottleneck_dim: usize,
    /// Outputs `K`, the prototypes the softmax runs over (paper: 65536).
    pub out_dim: usize,
    /// Linear layers of the MLP before the bottleneck's normalisation (paper: 3).
    pub nlayers: usize,
}

impl DinoHeadConfig {
    /// The paper's head on `in_dim` features with `out_dim` outputs: 3 layers, 2048 hidden,
    /// 256 bottleneck.
    pub fn paper(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            hidden_dim: 2048,
            bottleneck_dim: 256,
            out_dim,
            nlayers: 3,
        }
    }

    /// Builds the head (see the module docs for the initialisation).
    pub fn init<B: Backend>(&self, device: &B::Device) -> DinoHead<B> {
        let nlayers = self.nlayers.max(1);
        let mut dims = vec![self.in_dim];
        dims.extend(std::iter::repeat_n(self.hidden_dim, nlayers - 1));
        dims.push(self.bottleneck_dim);
        let mlp = dims
            .windows(2)
            .map(|pair| {
                let mut linear = LinearConfig::new(pair[0], pair[1])
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: 0.02,
                    })
                    .init(device);
                linear.bias = Some(Initializer::Zeros.init([pair[1]], device));
                linear
            })
            .collect();
        let last = LinearConfig::new(self.bottleneck_dim, self.out_dim)
            .with_bias(false)
            .init(device);
        DinoHead {
            mlp,
            last_layer: WeightNormLinear {
                weight_v: last.weight,
            },
        }
    }
}

/// `weight_norm(Linear(d_in, K, bias=False))` with its norm `g` fixed to 1.
#[derive(Module, Debug)]
pub struct WeightNormLinear<B: Backend> {
    /// The direction `v`, burn layout `[d_in, K]` (PyTorch's `weight_v` is `[K, d_in]`).
    pub weight_v: Param<Tensor<B, 2>>,
}

impl<B: Backend> WeightNormLinear<B> {
    /// `x · (v_k / |v_k|)` for each output `k`.
    ///
    /// # Shapes
    /// `x` `[n, d_in]` -> `[n, K]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let weight = normalize(self.weight_v.val(), 0); // [d_in, K], unit columns
        x.matmul(weight)
    }
}

/// The DINO head: MLP, L2 normalisation, weight-normalised last layer.
#[derive(Module, Debug)]
pub struct DinoHead<B: Backend> {
    /// The MLP's linears, GELU between them (not after the last).
    pub mlp: Vec<Linear<B>>,
    /// The prototypes' layer (what DINO freezes in the first epoch).
    pub last_layer: WeightNormLinear<B>,
}

impl<B: Backend> DinoHead<B> {
    /// # Shapes
    /// `x` `[n, d]` -> `[n, K]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let count = self.mlp.len();
        let x = self.mlp.iter().enumerate().fold(x, |x, (i, linear)| {
            let y = linear.forward(x);
            if i + 1 < count { gelu(y) } else { y }
        }); // [n, bottleneck]
        self.last_layer.forward(normalize(x, 1)) // [n, K]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type B = Autodiff<Flex>;

    fn small() -> DinoHeadConfig {
        DinoHeadConfig {
            in_dim: 6,
            hidden_dim: 16,
            bottleneck_dim: 4,
            out_dim: 10,
            nlayers: 3,
        }
    }

    #[test]
    fn shapes_and_layers_follow_the_paper() {
        let device = Default::default();
        let head = DinoHeadConfig::paper(384, 65536);
        assert_eq!(
            (head.hidden_dim, head.bottleneck_dim, head.nlayers),
            (2048, 256, 3)
        );
        let head = small().init::<Flex>(&device);
        assert_eq!(head.mlp.len(), 3);
        assert_eq!(head.mlp[2].weight.dims(), [16, 4]);
        assert_eq!(head.last_layer.weight_v.dims(), [4, 10]);
        let x = Tensor::<Flex, 2>::random([5, 6], Distribution::Default, &device);
        assert_eq!(head.forward(x).dims(), [5, 10]);
    }

    /// With unit columns and a unit-norm input, every logit is a cosine: in [-1, 1], and
    /// rescaling `v` changes nothing (the norm is fixed).
    #[test]
    fn last_layer_is_weight_normalised_with_unit_norm() {
        let device = Default::default();
        let mut head = small().init::<Flex>(&device);
        let x = Tensor::<Flex, 2>::random([7, 6], Distribution::Default, &device);
        let out = head.forward(x.clone());
        assert!(out.clone().abs().max().into_scalar() <= 1.0 + 1e-5);
        let v = head.last_layer.weight_v.val();
        head.last_layer.weight_v = Param::from_tensor(v * 3.5);
        head.forward(x)
            .into_data()
            .assert_approx_eq::<f32>(&out.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn gradients_reach_the_direction() {
        let device = Default::default();
        let head = small().init::<B>(&device);
        let x = Tensor::<B, 2>::random([3, 6], Distribution::Default, &device);
        let grads = head.forward(x).powi_scalar(2).sum().backward();
        let g = head
            .last_layer
            .weight_v
            .grad(&grads)
            .expect("weight_v trains");
        assert!(g.abs().sum().into_scalar() > 0.0);
    }
}
