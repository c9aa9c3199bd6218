//! Mixed precision: bf16 matmuls over f32 master weights, what `torch.autocast(dtype=bfloat16)`
//! does for a ViT, written out by hand because burn 0.21 has no autocast.
//!
//! # What runs in which dtype
//!
//! With [`Precision::Bf16`] the model's parameters stay f32 tensors and every module takes and
//! returns f32 tensors; bf16 exists only inside the layers that do the arithmetic:
//!
//! | op | dtype | why |
//! |----|-------|-----|
//! | linears: patch embedding, `qkv`, `proj`, `fc1`, `fc2`, `decoder_embed`, `decoder_pred` | bf16 operands and output, bias added in bf16 | the FLOPs; tensor cores take bf16 |
//! | attention `q·kᵀ` and `softmax·v` | bf16 | the other FLOPs |
//! | attention softmax (and its `1/√d` scale) | f32 | `exp` of bf16 logits loses the small weights (autocast's f32 list) |
//! | GELU | bf16 (between `fc1` and `fc2`) | elementwise, bounded; autocast leaves it in bf16 too; halves the saved activation |
//! | LayerNorm, residual stream, class/mask tokens, position embeddings | f32 | mean/variance of bf16 values cancel catastrophically; the residual sum accumulates small updates |
//! | the loss (`norm_pix_loss` target statistics, squared error, masked mean) | f32 | reductions over thousands of values |
//!
//! Each bf16 linear casts its input, weight and bias with `Tensor::cast`; its output goes
//! back to f32 where an f32 op consumes it (after `proj`, `fc2` and the embeddings), and stays
//! bf16 where another bf16 matmul does (`qkv` into attention, GELU into `fc2`).
//!
//! # Master weights
//!
//! The parameters, their gradients, AdamW's moments and the update are f32. A bf16 copy of a
//! weight is made by `cast` inside the forward pass, and burn's autodiff backward of `cast`
//! (`burn-autodiff` `float_cast`) casts the incoming gradient back to the source dtype, so the
//! gradient that reaches the parameter, the optimiser and the checkpoint is f32. Why not a bf16
//! backend element (`Cuda<bf16>`): bf16 keeps 8 significant bits, so a weight `w` only moves
//! when the update exceeds `|w| x 2^-9`; AdamW's steps are about `lr` (1e-4 to 1e-3 against
//! weights of 1e-2 to 1e-1), relative size 1e-3 to 1e-2: most of them would round to nothing,
//! and the second moment's small values would flush. Checkpoints and the exported encoder
//! therefore hold f32 values whatever the precision of the run, and a run may resume in a
//! different precision than it started.
//!
//! No loss scaling: bf16 has f32's exponent range, so small gradients do not underflow (the
//! reason fp16 needs a scaler).
//!
//! # burn 0.21 notes
//!
//! Checked in burn's source: `Tensor::cast` is a no-op (no graph node) when the dtype already
//! matches, so the f32 path costs nothing extra. On `Flex` (CPU) every op used here has a bf16
//! kernel; its bf16 matmul converts to f32, multiplies in f32 and rounds the result to bf16
//! (what a tensor-core GEMM with f32 accumulation does), which makes it a faithful but slow
//! model of the CUDA path: bf16 on CPU is for tests, not speed. Under `Autodiff` burn's
//! `attention` op takes the softmax in the operands' dtype; the bf16 path therefore writes
//! attention out (two matmuls and an f32 softmax) instead of calling it. The f32 path keeps
//! `attention`: the backend's fused kernel when not differentiating, and under `Autodiff`
//! one node with a closed-form backward (the patched burn-autodiff, patches/README.md)
//! instead of burn 0.21's ten recorded ops.

use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{FloatDType, Tensor, backend::Backend};
use serde::{Deserialize, Serialize};

/// Floating-point policy of a run (`[train] precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Precision {
    /// Everything f32.
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// Matmuls in bf16 over f32 master weights; see the module docs for the op list.
    #[serde(rename = "bf16")]
    Bf16,
}

impl Precision {
    /// The spellings accepted in a recipe.
    pub const NAMES: [&'static str; 2] = ["f32", "bf16"];

    /// The dtype of matmul operands and outputs.
    pub fn matmul_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    /// `layer.forward(x)` with `x`, the weight and the bias cast to [`Self::matmul_dtype`];
    /// the output is in that dtype (see [`to_f32`] for the way back). `x` may already be in it.
    pub fn linear<B: Backend, const D: usize>(
        self,
        layer: &Linear<B>,
        x: Tensor<B, D>,
    ) -> Tensor<B, D> {
        let bias = layer.bias.as_ref().map(|b| b.val());
        self.product(x, layer.weight.val(), bias)
    }

    /// Columns `start..start + len` of `layer`'s output, computed from those columns of its
    /// weight and bias alone: `x · W[:, start..start + len] + b[start..start + len]`.
    ///
    /// Attention takes q, k and v this way from its fused `qkv` layer. Slicing the `[b, l, 3D]`
    /// output instead costs a copy of each slice forward and, backward, a zeroed `[b, l, 3D]`
    /// gradient per slice (the slice's backward) and two adds of them; slicing the weight
    /// moves those to the `[D, 3D]` weight (`docs/PERFORMANCE.md`, change 16).
    ///
    /// # Shapes
    /// `x` `[.., d_in]` -> `[.., len]`.
    pub fn linear_columns<B: Backend, const D: usize>(
        self,
        layer: &Linear<B>,
        x: Tensor<B, D>,
        start: usize,
        len: usize,
    ) -> Tensor<B, D> {
        let weight = layer.weight.val().narrow(1, start, len);
        let bias = layer.bias.as_ref().map(|b| b.val().narrow(0, start, len));
        self.product(x, weight, bias)
    }

    /// `x · weight + bias` in [`Self::matmul_dtype`] (burn's `Linear::forward` in f32).
    fn product<B: Backend, const D: usize>(
        self,
        x: Tensor<B, D>,
        weight: Tensor<B, 2>,
        bias: Option<Tensor<B, 1>>,
    ) -> Tensor<B, D> {
        match self {
            Precision::F32 => linear(x, weight, bias),
            Precision::Bf16 => {
                let dtype = self.matmul_dtype();
                linear(
                    x.cast(dtype),
                    weight.cast(dtype),
                    bias.map(|b| b.cast(dtype)),
                )
            }
        }
    }

    /// Scaled dot-product attention, `softmax(q kᵀ / √dh) v`, over `q`, `k`, `v` in
    /// [`Self::matmul_dtype`]. With bf16 both products are bf16 and the softmax is f32; the
    /// output is in the operands' dtype.
    ///
    /// # Shapes
    /// `q`, `k`, `v` `[b, h, l, dh]` -> `[b, h, l, dh]`.
    pub fn attention<B: Backend>(
        self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        match self {
            Precision::F32 => attention(q, k, v, None, None, AttentionModuleOptions::default()),
            Precision::Bf16 => {
                let dtype = self.matmul_dtype();
                let [_, _, _, dh] = q.dims();
                let scores = q.cast(dtype).matmul(k.cast(dtype).swap_dims(2, 3)); // [b, h, l, l]
                let weights = softmax(to_f32(scores) * (dh as f64).powf(-0.5), 3);
                weights.cast(dtype).matmul(v.cast(dtype))
            }
        }
    }
}

/// Casts to f32, the dtype of the parameters and of everything outside the matmuls. A no-op
/// (and no autodiff node) on a tensor that is already f32.
pub fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.cast(FloatDType::F32)
}

#[cfg(test)]
mod tests {
    //! The bf16 path against the f32 one, on `Flex`. Tolerances come from bf16's unit
    //! roundoff `u = 2^-8` (8 significant bits, round to nearest): one cast moves a value by
    //! at most `u` relative, and independent roundings add up in quadrature, not linearly.
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{DType, Distribution};
    use rand::SeedableRng;
    use tessera_pipeline::PipelineState;

    use crate::checkpoint::{self, RngState, TrainerState};
    use crate::objectives::mae::{MaeConfig, MaeInput, MaeModel};
    use crate::optim::{Optim, OptimSettings};
    use crate::vit::VitConfig;

    type B = Autodiff<Flex>;

    /// bf16's unit roundoff.
    const U: f64 = 1.0 / 256.0;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        #[serde(default)]
        precision: Precision,
    }

    #[test]
    fn parses_the_two_spellings_and_defaults_to_f32() {
        let parse = |text: &str| toml::from_str::<Section>(text).map(|s| s.precision);
        assert_eq!(parse("").unwrap(), Precision::F32);
        assert_eq!(parse("precision = \"f32\"").unwrap(), Precision::F32);
        assert_eq!(parse("precision = \"bf16\"").unwrap(), Precision::Bf16);
        for bad in ["\"fp16\"", "\"BF16\"", "\"float32\""] {
            let err = parse(&format!("precision = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("precision") && err.contains("f32") && err.contains("bf16"),
                "{bad}: {err}"
            );
        }
        for name in Precision::NAMES {
            assert!(parse(&format!("precision = \"{name}\"")).is_ok(), "{name}");
        }
    }

    /// The bf16 linear computes in bf16, and the weight's gradient arrives in f32.
    #[test]
    fn bf16_linear_keeps_f32_master_weights() {
        let device = Default::default();
        let layer = crate::vit::init_linear::<B>(8, 4, &device);
        let x = Tensor::<B, 3>::random([2, 3, 8], Distribution::Default, &device);
        let y = Precision::Bf16.linear(&layer, x.clone());
        assert_eq!(y.dtype(), DType::BF16);
        let reference = Precision::F32.linear(&layer, x);
        assert_eq!(reference.dtype(), DType::F32);
        let y = to_f32(y);
        let grads = y.clone().sum().backward();
        let gw = layer.weight.grad(&grads).expect("weight gradient");
        let gb = layer
            .bias
            .as_ref()
            .unwrap()
            .grad(&grads)
            .expect("bias gradient");
        assert_eq!((gw.dtype(), gb.dtype()), (DType::F32, DType::F32));
        assert_eq!(layer.weight.val().dtype(), DType::F32);
        // 8 products of values below 1, each operand and the output rounded once at `u`.
        let diff = (y - reference).abs().max().into_scalar() as f64;
        assert!(
            diff > 0.0 && diff < 8.0 * 3.0 * U,
            "bf16 vs f32 linear: {diff}"
        );
    }

    #[test]
    fn bf16_attention_matches_f32() {
        let device = Default::default();
        let qkv = || Tensor::<Flex, 4>::random([2, 2, 5, 4], Distribution::Default, &device);
        let (q, k, v) = (qkv(), qkv(), qkv());
        let a = Precision::F32.attention(q.clone(), k.clone(), v.clone());
        let b = Precision::Bf16.attention(q, k, v);
        assert_eq!(b.dtype(), DType::BF16);
        // A convex combination of v in [0, 1): a handful of roundings at `u` each.
        let diff = (to_f32(b) - a).abs().max().into_scalar() as f64;
        assert!(
            diff > 0.0 && diff < 4.0 * U,
            "bf16 vs f32 attention: {diff}"
        );
    }

    /// The f32 path's `attention` under autodiff (one node with a closed-form backward in the
    /// patched burn-autodiff, patches/README.md) against the formula written out with
    /// recorded tensor ops: the same output and the same gradients for q, k and v, also
    /// with a key/value length and a value width unlike the query's. On autodiff tensors that
    /// need no gradient the backend's own kernel runs; it gives the same output.
    #[test]
    fn f32_attention_and_its_gradients_equal_the_written_out_formula() {
        let device = Default::default();
        let random = |dims: [usize; 4]| {
            Tensor::<Flex, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device)
        };
        let (q, k, v) = (
            random([2, 3, 5, 4]),
            random([2, 3, 7, 4]),
            random([2, 3, 7, 6]),
        );
        let weights = random([2, 3, 5, 6]);
        let tracked = |t: &Tensor<Flex, 4>| Tensor::<B, 4>::from_inner(t.clone()).require_grad();
        let run = |written_out: bool| {
            let (tq, tk, tv) = (tracked(&q), tracked(&k), tracked(&v));
            let out = if written_out {
                let scores = tq.clone().matmul(tk.clone().swap_dims(2, 3)) * 0.5; // 1/sqrt(4)
                softmax(scores, 3).matmul(tv.clone())
            } else {
                Precision::F32.attention(tq.clone(), tk.clone(), tv.clone())
            };
            let grads = (out.clone() * Tensor::from_inner(weights.clone()))
                .sum()
                .backward();
            let grad = |t: &Tensor<B, 4>| t.grad(&grads).expect("a gradient");
            (out.inner(), [grad(&tq), grad(&tk), grad(&tv)])
        };
        let (out, grads) = run(false);
        let (want, want_grads) = run(true);
        let max_diff =
            |a: Tensor<Flex, 4>, b: Tensor<Flex, 4>| (a - b).abs().max().into_scalar() as f64;
        assert!(max_diff(out.clone(), want) < 1e-5);
        for (name, (got, want)) in ["q", "k", "v"]
            .iter()
            .zip(grads.into_iter().zip(want_grads))
        {
            let diff = max_diff(got, want);
            assert!(diff < 1e-5, "d{name}: {diff}");
        }
        // Autodiff tensors that need no gradient: the untracked branch (the backend's kernel).
        let plain = |t: Tensor<Flex, 4>| Tensor::<B, 4>::from_inner(t);
        let untracked = Precision::F32.attention(plain(q), plain(k), plain(v));
        assert!(max_diff(untracked.inner(), out) < 1e-5);
    }

    /// Two encoder blocks and one decoder block over 16 patches of 2x2 pixels.
    fn small_mae() -> MaeConfig {
        MaeConfig {
            encoder: VitConfig {
                img_size: 8,
                patch_size: 2,
                in_chans: 3,
                embed_dim: 32,
                depth: 2,
                num_heads: 2,
                mlp_ratio: 4.0,
                drop_path_rate: 0.0,
            },
            decoder_embed_dim: 16,
            decoder_depth: 1,
            decoder_num_heads: 2,
            norm_pix_loss: true,
        }
    }

    fn input<Bk: Backend>(config: &MaeConfig, n: usize, device: &Bk::Device) -> MaeInput<Bk> {
        let side = config.encoder.img_size;
        let l = config.encoder.num_patches();
        let images = Tensor::random([n, 3, side, side], Distribution::Normal(0.0, 1.0), device);
        MaeInput::new(
            images,
            &crate::objectives::mae::tests::masks(n, l, l / 4, 0),
            device,
        )
        .expect("masks fit")
    }

    fn rel_l2<const D: usize>(got: Tensor<Flex, D>, want: Tensor<Flex, D>) -> f64 {
        let err = (got - want.clone())
            .powi_scalar(2)
            .sum()
            .sqrt()
            .into_scalar() as f64;
        err / want.powi_scalar(2).sum().sqrt().into_scalar() as f64
    }

    /// The whole MAE forward in bf16 stays within bf16's rounding of the f32 forward.
    ///
    /// The prediction goes through 21 matmuls (patch embedding, 6 per block in 3 blocks, the
    /// two decoder linears), each rounding its two operands and its output: about 60
    /// roundings of `u`. LayerNorm re-normalises between blocks, so the errors add rather than
    /// compound, and independent ones add in quadrature: `sqrt(60) u ≈ 7.7 u`, hence the bound
    /// `8 u = 2^-5` (measured: about `1.3 u`, as each dot product also averages its operands'
    /// errors). A broken bf16 path (an op missing its cast, a wrong layout) is off by O(1).
    /// The lower bound checks that bf16 did run: f32 against itself differs by 0.
    #[test]
    fn bf16_forward_is_close_to_f32_forward() {
        let device = Default::default();
        Flex::seed(&device, 29);
        let config = small_mae();
        let f32_model: MaeModel<Flex> = config.init(&device);
        // Parameters are initialised lazily and a clone of an uninitialised one draws its own
        // values: touch them all before cloning.
        master_weights::<Flex, _>(&f32_model, None);
        let bf16_model = f32_model.clone().with_precision(Precision::Bf16);
        assert_eq!(bf16_model.encoder.precision(), Precision::Bf16);
        let batch = input::<Flex>(&config, 4, &device);
        let want = f32_model.forward(batch.clone());
        let got = bf16_model.forward(batch);
        assert_eq!(
            (got.pred.dtype(), got.loss.dtype()),
            (DType::F32, DType::F32)
        );

        let pred_err = rel_l2(got.pred, want.pred);
        let (a, b) = (
            got.loss.into_scalar() as f64,
            want.loss.into_scalar() as f64,
        );
        let loss_err = (a - b).abs() / b;
        eprintln!("bf16 vs f32: prediction {pred_err:.2e} (relative L2), loss {loss_err:.2e}");
        assert!(
            pred_err > U / 64.0 && pred_err < 8.0 * U,
            "prediction {pred_err}"
        );
        assert!(loss_err < 8.0 * U, "loss {a} vs {b}");
    }

    /// Checks that every parameter (and its gradient, when given) is f32; returns all
    /// parameter values in visiting order.
    struct MasterWeights<'a> {
        grads: Option<&'a GradientsParams>,
        values: Vec<f32>,
    }

    impl<Bk: Backend> ModuleVisitor<Bk> for MasterWeights<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
            let value = param.val();
            assert_eq!(value.dtype(), DType::F32, "parameter {}", param.id);
            // Parameters that require no gradient (the ViT's position table) have none.
            if let Some(grads) = self.grads
                && value.is_require_grad()
            {
                let grad = grads
                    .get::<Bk, D>(param.id)
                    .expect("every parameter has a gradient");
                assert_eq!(grad.dtype(), DType::F32, "gradient of {}", param.id);
            }
            let values = value.into_data().to_vec::<f32>().expect("f32 data");
            self.values.extend(values);
        }
    }

    fn master_weights<Bk: Backend, M: Module<Bk>>(
        model: &M,
        grads: Option<&GradientsParams>,
    ) -> Vec<f32> {
        let mut v = MasterWeights {
            grads,
            values: vec![],
        };
        model.visit(&mut v);
        v.values
    }

    fn adamw() -> OptimSettings {
        OptimSettings::AdamW {
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }

    /// `steps` AdamW steps at `lr` on one fixed batch; the losses before each step.
    fn train(
        mut model: MaeModel<B>,
        batch: &MaeInput<B>,
        steps: usize,
        lr: f64,
    ) -> (MaeModel<B>, Optim<MaeModel<B>, B>, Vec<f32>) {
        let mut optim = Optim::new(adamw(), &model);
        let mut losses = vec![];
        for step in 0..steps {
            let loss = model.forward(batch.clone()).loss;
            losses.push(loss.clone().into_scalar());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            if step == 0 {
                master_weights::<Flex, _>(&model.valid(), Some(&grads));
            }
            model = optim.step(lr, 0.05, model, grads);
        }
        (model, optim, losses)
    }

    /// bf16 training on one fixed batch: gradients and parameters stay f32, an update far
    /// below bf16's resolution is kept, the loss falls as in f32, and a checkpoint restores
    /// the exact f32 values.
    #[test]
    fn bf16_training_learns_on_f32_master_weights() {
        let device = Default::default();
        B::seed(&device, 5);
        let config = small_mae();
        let init = config.init::<B>(&device);
        master_weights::<B, _>(&init, None); // materialise before cloning (see above)
        let batch = input::<B>(&config, 4, &device);
        let bf16_init = init.clone().with_precision(Precision::Bf16);

        // Master weights: one step of lr 1e-4 moves every LayerNorm scale from 1 by about
        // 1e-4 (Adam's first step is lr x sign(grad); no decay on norms). bf16 numbers next to
        // 1 are 2^-8 apart, so bf16 weights would have stayed exactly 1.
        let (stepped, _, _) = train(bf16_init.clone(), &batch, 1, 1e-4);
        let gamma = stepped
            .encoder
            .norm
            .gamma
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            gamma.iter().all(|&g| g != 1.0 && (g - 1.0).abs() < 2e-4),
            "{gamma:?}"
        );

        // Learning: below the loss of predicting every pixel as its patch's mean (the
        // normalised target has unbiased variance 1 over 12 values: 11/12), and on the f32
        // run's track (they differ by about 1e-3 relative here).
        const STEPS: usize = 40;
        let (model, optim, losses) = train(bf16_init, &batch, STEPS, 1e-2);
        let (_, _, f32_losses) = train(init, &batch, STEPS, 1e-2);
        let (first, last) = (losses[0], *losses.last().unwrap());
        let f32_last = *f32_losses.last().unwrap();
        eprintln!("bf16 loss {first} -> {last}, f32 -> {f32_last}");
        assert!(
            losses.iter().all(|l| l.is_finite()) && last < 11.0 / 12.0 && last < first,
            "bf16 losses {losses:?}"
        );
        assert!(
            (last - f32_last).abs() < 0.02 * f32_last,
            "bf16 ends at {last}, f32 at {f32_last}"
        );
        let trained = master_weights::<B, _>(&model, None);

        // Checkpoints hold the f32 master weights, whatever the run's precision.
        let run = tempfile::tempdir().expect("temp dir");
        let mut resolved = crate::config::tiny_resolved_for_tests();
        resolved.backbone = crate::backbone::BackboneConfig::Vit(config.encoder.clone());
        let method = crate::objectives::mae::MaeMethod {
            decoder_embed_dim: config.decoder_embed_dim,
            decoder_depth: config.decoder_depth,
            decoder_num_heads: config.decoder_num_heads,
            norm_pix_loss: config.norm_pix_loss,
            ..Default::default()
        };
        resolved.method = crate::objectives::MethodConfig::Mae(method);
        resolved.precision = Precision::Bf16;
        let state = TrainerState {
            step: STEPS as u64,
            pipeline: PipelineState {
                seed: 0,
                epoch: 0,
                rank: 0,
                world_size: 1,
                samples_consumed: 100,
            },
            ranks: Vec::new(),
            rng: RngState::capture(&rand_chacha::ChaCha8Rng::seed_from_u64(0)),
            config: resolved,
        };
        let saved = checkpoint::Saved::<B, crate::objectives::mae::MaeMethod> {
            model: &model,
            optim: &optim,
            method_state: &std::marker::PhantomData,
        };
        let dir = checkpoint::save(run.path(), saved, &state, 1).expect("save");
        let loaded: MaeModel<Flex> =
            checkpoint::load_model(&dir, config.init::<Flex>(&device), &device).expect("load");
        assert_eq!(loaded.precision, Precision::F32, "precision is not saved");
        assert!(master_weights::<Flex, _>(&loaded, None) == trained);
    }
}
