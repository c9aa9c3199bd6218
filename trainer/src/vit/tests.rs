//! Unit tests of the ViT: shapes, timm layout, the token API (multi-size, mask tokens,
//! drop path).

use super::*;
use crate::goldens::Golden;
use crate::pos_embed::resample_abs_pos_embed;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tolerance};

type B = Autodiff<Flex>;

fn tiny() -> VitConfig {
    VitConfig {
        img_size: 8,
        patch_size: 4,
        in_chans: 3,
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_ratio: 4.0,
        drop_path_rate: 0.0,
    }
}

#[test]
fn timm_variants_have_timm_shapes() {
    let base = VitConfig::by_name("vit_base_patch16_224").unwrap();
    assert_eq!((base.embed_dim, base.depth, base.num_heads), (768, 12, 12));
    assert_eq!(base.num_patches(), 196);
    let large = VitConfig::vit_large_patch16_224();
    assert_eq!(
        (large.embed_dim, large.depth, large.num_heads),
        (1024, 24, 16)
    );
    assert!(VitConfig::by_name("vit_huge").is_none());
    for name in VitConfig::NAMES {
        assert!(VitConfig::by_name(name).unwrap().check().is_ok());
    }
}

#[test]
fn sincos_table_matches_mae_layout() {
    let (dim, grid) = (8, 3);
    let t = sincos_pos_embed_2d_values(dim, grid);
    assert!(
        t[..dim].iter().all(|&v| v == 0.0),
        "class token row is zero"
    );
    // Patch at row i=2, column j=1; q = 2, omega = [1, 1/100].
    let row = &t[(1 + 2 * grid + 1) * dim..][..dim];
    let expect = [
        1f64.sin(),
        (0.01f64).sin(),
        1f64.cos(),
        (0.01f64).cos(),
        2f64.sin(),
        (0.02f64).sin(),
        2f64.cos(),
        (0.02f64).cos(),
    ];
    for (a, b) in row.iter().zip(expect) {
        assert!((*a as f64 - b).abs() < 1e-6, "{row:?} vs {expect:?}");
    }
}

#[test]
fn patch_embed_equals_a_strided_convolution() {
    let device = Default::default();
    let cfg = tiny();
    let vit = cfg.init::<Flex>(&device);
    let images = Tensor::<Flex, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
    let tokens = vit.patch_embed.forward(images.clone());
    // The same weights as a conv [D, C, P, P].
    let weight = vit
        .patch_embed
        .proj
        .weight
        .val()
        .transpose()
        .reshape([16, 3, 4, 4]);
    let bias = vit.patch_embed.proj.bias.as_ref().unwrap().val();
    let conv = burn::tensor::module::conv2d(
        images,
        weight,
        Some(bias),
        burn::tensor::ops::ConvOptions::new([4, 4], [0, 0], [1, 1], 1),
    ); // [2, 16, 2, 2]
    let conv = conv.reshape([2, 16, 4]).swap_dims(1, 2);
    tokens
        .into_data()
        .assert_approx_eq::<f32>(&conv.into_data(), burn::tensor::Tolerance::default());
}

#[test]
fn forward_and_backward_are_finite() {
    let device = Default::default();
    let vit = tiny().init::<B>(&device);
    let images = Tensor::<B, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
    let out = vit.forward(images);
    assert_eq!(out.dims(), [2, 5, 16]);
    let grads = out.powi_scalar(2).mean().backward();
    let g = vit.blocks[0]
        .attn
        .qkv
        .weight
        .grad(&grads)
        .expect("qkv has a gradient");
    assert!(g.into_data().iter::<f32>().all(f32::is_finite));
}

/// A ViT on 224-pixel images with patch 16 and width 64: the golden table's grid and width.
fn golden_sized(depth: usize, drop_path_rate: f64) -> Vit<Flex> {
    let cfg = VitConfig {
        img_size: 224,
        patch_size: 16,
        in_chans: 3,
        embed_dim: 64,
        depth,
        num_heads: 4,
        mlp_ratio: 2.0,
        drop_path_rate,
    };
    let mut vit = cfg.init::<Flex>(&Default::default());
    let g = Golden::load("pos_embed_resample");
    let table = g.tensor::<Flex, 3>("in.pos_embed", &Default::default());
    vit.pos_embed = Param::initialized(ParamId::new(), table);
    vit
}

#[test]
fn resampled_table_equals_timm_golden() {
    let g = Golden::load("pos_embed_resample");
    let vit = golden_sized(1, 0.0);
    for (h, w) in [(6, 6), (4, 7), (16, 16)] {
        g.assert_close(
            &format!("out.grid_{h}x{w}_antialias"),
            vit.pos_embed_for(h, w),
        );
    }
    let own = vit.pos_embed_for(14, 14);
    own.into_data()
        .assert_eq(&vit.pos_embed.val().into_data(), true);
}

#[test]
fn all_tokens_at_the_model_size_equal_forward() {
    let device = Default::default();
    let vit = tiny().init::<Flex>(&device);
    let images = Tensor::<Flex, 4>::random([3, 3, 8, 8], Distribution::Default, &device);
    let all = vit.forward_all_tokens(images.clone(), None, None);
    all.into_data()
        .assert_eq(&vit.forward(images).into_data(), true);
}

/// A 96-pixel view of a 224-pixel model, computed by hand with the resampled table.
#[test]
fn small_view_uses_the_resampled_table() {
    let device = Default::default();
    let vit = golden_sized(2, 0.0);
    let images = Tensor::<Flex, 4>::random([2, 3, 96, 96], Distribution::Default, &device);
    let out = vit.forward_all_tokens(images.clone(), None, None);
    assert_eq!(out.dims(), [2, 1 + 36, 64]);

    let pos = resample_abs_pos_embed(vit.pos_embed.val(), 6, 6, true).unwrap(); // [1, 37, 64]
    let patches = vit.patch_embed.forward(images) + pos.clone().slice([0..1, 1..37, 0..64]);
    let cls = (vit.cls_token.val() + pos.slice([0..1, 0..1, 0..64])).expand([2, 1, 64]);
    let mut x = Tensor::cat(vec![cls, patches], 1);
    for block in &vit.blocks {
        x = block.forward(x);
    }
    let expected = vit.norm.forward(x);
    out.into_data()
        .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
}

#[test]
fn mask_tokens_replace_exactly_the_masked_patches() {
    let device = Default::default();
    let vit = tiny().init::<Flex>(&device);
    let images = Tensor::<Flex, 4>::random([2, 3, 8, 8], Distribution::Default, &device);
    // 1 = masked: sample 0 patches 1 and 2, sample 1 patch 3.
    let mask =
        Tensor::<Flex, 2>::from_floats([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]], &device);
    let token = Tensor::<Flex, 3>::random([1, 1, 16], Distribution::Default, &device);
    let plain = vit.embed_all(images.clone(), None); // [2, 5, 16]
    let masked = vit.embed_all(
        images,
        Some(MaskTokens {
            mask,
            token: token.clone(),
        }),
    );
    let pos = vit.pos_embed.val(); // [1, 5, 16]
    for (n, row) in [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
    ] {
        let got = masked.clone().slice([n..n + 1, row..row + 1, 0..16]);
        let is_masked = matches!((n, row), (0, 2) | (0, 3) | (1, 4));
        let want = if is_masked {
            token.clone() + pos.clone().slice([0..1, row..row + 1, 0..16])
        } else {
            plain.clone().slice([n..n + 1, row..row + 1, 0..16])
        };
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-6));
    }
}

#[test]
fn drop_path_is_identity_at_rate_zero_and_reproducible_above() {
    let device = Default::default();
    let images = Tensor::<Flex, 4>::random([4, 3, 8, 8], Distribution::Default, &device);
    let cfg = VitConfig { depth: 4, ..tiny() };
    let plain = cfg.init::<Flex>(&device);
    let draws = DropPath::draw(7, 3, 0, 4, 4);
    let reference = plain.forward_all_tokens(images.clone(), None, None);
    plain
        .forward_all_tokens(images.clone(), None, Some(&draws))
        .into_data()
        .assert_eq(&reference.clone().into_data(), true);

    let mut dropping = plain.clone();
    dropping.drop_path_rate = 0.9;
    // Without draws (evaluation) the rate changes nothing.
    dropping
        .forward_all_tokens(images.clone(), None, None)
        .into_data()
        .assert_eq(&reference.clone().into_data(), true);
    let once = dropping.forward_all_tokens(images.clone(), None, Some(&draws));
    let again =
        dropping.forward_all_tokens(images.clone(), None, Some(&DropPath::draw(7, 3, 0, 4, 4)));
    once.clone().into_data().assert_eq(&again.into_data(), true);
    let diff = (once - reference).abs().max().into_scalar();
    assert!(diff > 1e-3, "a rate of 0.9 drops some branch: {diff}");
    assert_ne!(
        draws,
        DropPath::draw(7, 4, 0, 4, 4),
        "another step draws anew"
    );
    assert_ne!(
        draws,
        DropPath::draw(7, 3, 1, 4, 4),
        "another stream draws anew"
    );
}

#[test]
fn drop_path_scales_follow_timm() {
    let draws = DropPath::draw(1, 2, 3, 12, 1000);
    assert_eq!(DropPath::block_rate(0.1, 12, 0), 0.0);
    assert!((DropPath::block_rate(0.1, 12, 11) - 0.1).abs() < 1e-12);
    assert!(draws.scales(0, 0, 0.0).iter().all(|&s| s == 1.0));
    let scales = draws.scales(11, 1, 0.25);
    assert!(
        scales
            .iter()
            .all(|&s| s == 0.0 || (s - 1.0 / 0.75).abs() < 1e-6)
    );
    let kept = scales.iter().filter(|&&s| s > 0.0).count();
    assert!(
        (650..=850).contains(&kept),
        "about 750 of 1000 kept: {kept}"
    );
}

#[test]
fn block_outputs_and_last_attention() {
    let device = Default::default();
    let vit = tiny().init::<Flex>(&device);
    let images = Tensor::<Flex, 4>::random([2, 3, 12, 8], Distribution::Default, &device);
    let (all, blocks) = vit.forward_with_blocks(images.clone(), None, None);
    assert_eq!(blocks.len(), 2);
    assert_eq!(all.dims(), [2, 1 + 6, 16]);
    vit.norm
        .forward(blocks[1].clone())
        .into_data()
        .assert_eq(&all.into_data(), true);
    let attn = vit.last_attention(images);
    assert_eq!(attn.dims(), [2, 2, 7, 7]);
    let sums = attn.sum_dim(3); // [2, 2, 7, 1]
    sums.into_data().assert_approx_eq::<f32>(
        &Tensor::<Flex, 4>::ones([2, 2, 7, 1], &device).into_data(),
        Tolerance::absolute(1e-5),
    );
}

/// `gather_tokens` (row select) against burn's `gather` with the index repeated over the
/// channels: the same tokens and, through a weighted sum, the same gradient for `x`, also
/// with an index that repeats a token (its gradient rows add up).
#[test]
fn gather_tokens_equals_gather_with_a_repeated_index() {
    let device = Default::default();
    let x = Tensor::<Flex, 3>::random([3, 6, 5], Distribution::Normal(0.0, 1.0), &device);
    let ids = [[4, 0, 2, 2], [5, 3, 1, 0], [0, 1, 2, 3]];
    let index = Tensor::<B, 2, Int>::from_ints(ids, &device);
    let weights = Tensor::<B, 3>::random([3, 4, 5], Distribution::Normal(0.0, 1.0), &device);
    let run = |with_select: bool| {
        let x = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
        let out = if with_select {
            gather_tokens(x.clone(), index.clone())
        } else {
            x.clone()
                .gather(1, index.clone().reshape([3, 4, 1]).expand([3, 4, 5]))
        };
        let grads = (out.clone() * weights.clone()).sum().backward();
        (out.inner(), x.grad(&grads).expect("a gradient for x"))
    };
    let (out, grad) = run(true);
    let (want, want_grad) = run(false);
    out.into_data().assert_eq(&want.into_data(), true);
    grad.into_data()
        .assert_approx_eq::<f32>(&want_grad.into_data(), Tolerance::absolute(1e-6));
}

/// burn's `LayerNorm` under autodiff (one node with a closed-form backward in the patched
/// burn-autodiff, patches/README.md) against the formula written out with recorded tensor
/// ops: the same output and the same gradients for the input, γ and β, with and without β,
/// at the ViT's rank 3. Without gradients the same fused forward runs.
#[test]
fn layer_norm_and_its_gradients_equal_the_written_out_formula() {
    use burn::module::Param;
    use burn::nn::LayerNormConfig;
    let device = Default::default();
    let random = |dims: [usize; 3], mean: f64| {
        Tensor::<Flex, 3>::random(dims, Distribution::Normal(mean, 2.0), &device)
    };
    let x = random([2, 5, 24], 3.0);
    let weights = random([2, 5, 24], 0.0);
    for bias in [true, false] {
        let mut norm = LayerNormConfig::new(24).with_bias(bias).init::<B>(&device);
        let param = |mean: f64| {
            let values = Tensor::<Flex, 1>::random([24], Distribution::Normal(mean, 1.0), &device);
            Param::from_tensor(Tensor::<B, 1>::from_inner(values).require_grad())
        };
        norm.gamma = param(1.0);
        norm.beta = norm.beta.map(|_| param(0.0));
        let run = |written_out: bool| {
            let input = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
            let out = if written_out {
                let mean = input.clone().mean_dim(2);
                let centered = input.clone() - mean;
                let var = centered.clone().powi_scalar(2).mean_dim(2);
                let normalized = centered / (var + 1e-5).sqrt();
                let scaled = normalized * norm.gamma.val().unsqueeze::<3>();
                match &norm.beta {
                    Some(beta) => scaled + beta.val().unsqueeze::<3>(),
                    None => scaled,
                }
            } else {
                norm.forward(input.clone())
            };
            let grads = (out.clone() * Tensor::from_inner(weights.clone()))
                .sum()
                .backward();
            let grad_beta = norm.beta.as_ref().map(|b| b.grad(&grads).expect("dβ"));
            (
                out.inner(),
                input.grad(&grads).expect("dx"),
                norm.gamma.grad(&grads).expect("dγ"),
                grad_beta,
            )
        };
        let (out, dx, dgamma, dbeta) = run(false);
        let (want, want_dx, want_dgamma, want_dbeta) = run(true);
        let close = |name: &str, got: Vec<f32>, want: Vec<f32>| {
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-5 * scale,
                "{name} (bias {bias}): {diff} of {scale}"
            );
        };
        let values = |t: Tensor<Flex, 3>| t.into_data().to_vec::<f32>().unwrap();
        close("y", values(out.clone()), values(want));
        close("dx", values(dx), values(want_dx));
        close(
            "dγ",
            dgamma.into_data().to_vec().unwrap(),
            want_dgamma.into_data().to_vec().unwrap(),
        );
        if let (Some(got), Some(want)) = (dbeta, want_dbeta) {
            close(
                "dβ",
                got.into_data().to_vec().unwrap(),
                want.into_data().to_vec().unwrap(),
            );
        }
        // Autodiff tensors that need no gradient: the untracked branch, the same kernel.
        let untracked = norm.forward(Tensor::<B, 3>::from_inner(x.clone()));
        assert_eq!(values(untracked.inner()), values(out));
    }
}
