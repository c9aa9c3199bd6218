//! SwAV's method-side behaviour: Sinkhorn marginals with a queue, prototypes normalised
//! after each step and frozen at first, the queue switching on at its epoch, recipe checks.

use burn::backend::{Autodiff, Flex};
use burn::optim::GradientsParams;
use burn::tensor::{Distribution, Tensor};
use tessera_pipeline::Recipe;

use super::*;
use crate::backbone::ResNetConfig;
use crate::feeder::Normalize;
use crate::losses::swav::{sinkhorn, swav};
use crate::objectives::MethodConfig;
use crate::optim::{Optim, OptimSettings};

type B = Autodiff<Flex>;
type I = Flex;

fn ctx(step: u64, steps_per_epoch: Option<u64>) -> StepContext {
    StepContext {
        step,
        total_steps: 100,
        steps_per_epoch,
        picture: false,
        picture_samples: 0,
        normalize: Normalize::default(),
        seed: 0,
        micro_batch: 0,
        global: None,
    }
}

/// A small SwAV: 16 -> 8 head, 10 prototypes.
fn small(queue_length: usize) -> SwavConfig {
    SwavConfig {
        num_prototypes: 10,
        proj_hidden_dim: 16,
        proj_output_dim: 8,
        queue_length,
        queue_start_epoch: 2.0,
        freeze_prototypes_niters: 1,
        ..SwavConfig::default()
    }
}

fn model(cfg: &SwavConfig) -> (SwavModel<B>, SwavState<I>) {
    let device = Default::default();
    let backbone =
        BackboneConfig::ResNet(ResNetConfig::resnet18().with_cifar_stem()).init::<B>(&device);
    Method::<B>::init(cfg, backbone, &device)
}

/// Two 8-pixel views and two 4-pixel views of 4 samples.
fn views() -> Vec<Tensor<B, 4>> {
    let device = Default::default();
    [8, 8, 4, 4]
        .iter()
        .map(|&s| Tensor::random([4, 3, s, s], Distribution::Normal(0.0, 1.0), &device))
        .collect()
}

/// Column norms of the prototypes `[d, K]`.
fn prototype_norms(model: &SwavModel<B>) -> Vec<f32> {
    let c = model.prototypes.weight.val().inner();
    c.square()
        .sum_dim(0)
        .sqrt()
        .into_data()
        .to_vec()
        .expect("f32")
}

fn assert_unit(norms: &[f32]) {
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
}

/// Over the batch and the queue together, the normalised codes `Q / n` have SwAV's
/// marginals: each of the `n` rows sums to `1 / n`, each of the `K` columns to `1 / K`
/// (exactly for rows, once converged for columns).
#[test]
fn sinkhorn_codes_with_a_queue_have_the_marginals() {
    let device = Default::default();
    let cfg = small(12);
    let (model, _) = model(&cfg);
    let z = normalize(
        Tensor::<I, 2>::random([5, 8], Distribution::Normal(0.0, 1.0), &device),
        1,
    );
    let queue = normalize(
        Tensor::<I, 2>::random([12, 8], Distribution::Normal(0.0, 1.0), &device),
        1,
    );
    let c = model.prototypes.weight.val().inner(); // [8, 10]
    let scores = Tensor::cat(vec![z.matmul(c.clone()), queue.matmul(c)], 0); // [17, 10]
    let [n, k] = scores.dims();
    // SwAV's 3 iterations end on the row step, so rows are exact; columns are only on
    // their way to 1/K (how far depends on the random scores), and balanced once converged.
    for (iterations, column_tolerance) in [(3, None), (200, Some(1e-3))] {
        let codes = sinkhorn(scores.clone(), 0.05, iterations) / n as f64; // Q, [n, K]
        let rows: Vec<f32> = codes.clone().sum_dim(1).into_data().to_vec().expect("f32");
        let cols: Vec<f32> = codes.sum_dim(0).into_data().to_vec().expect("f32");
        for r in rows {
            assert!(
                (r * n as f32 - 1.0).abs() < 1e-4,
                "row sums to {r}, not 1/{n}"
            );
        }
        for col in cols.into_iter().filter(|_| column_tolerance.is_some()) {
            let relative = (col * k as f32 - 1.0).abs();
            assert!(
                column_tolerance.is_some_and(|t| relative < t),
                "{iterations} iterations: column sums to {col}, not 1/{k}"
            );
        }
    }
}

/// Step 0 (frozen): the prototypes get no gradient and do not move; step 1: they move and
/// `after_step` brings every column back to unit length.
#[test]
fn prototypes_frozen_first_then_normalised_after_each_step() {
    let cfg = small(0);
    let (mut model, mut state) = model(&cfg);
    assert_unit(&prototype_norms(&model));
    let settings = OptimSettings::AdamW {
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut optim = Optim::new(settings, &model);
    let id = model.prototypes.weight.id;
    for step in 0..2 {
        let ctx = ctx(step, None);
        let out = cfg
            .views_loss(&model, &mut state, views(), &ctx)
            .expect("four views");
        let loss: f32 = out.loss.clone().into_scalar();
        assert!(loss.is_finite(), "{loss}");
        let mut grads = GradientsParams::from_grads(out.loss.backward(), &model);
        assert!(grads.get::<I, 2>(id).is_some(), "step {step}");
        Method::<B>::adjust_gradients(&cfg, &model, &mut grads, &ctx);
        let before = model.prototypes.weight.val().inner();
        let frozen = step < cfg.freeze_prototypes_niters;
        assert_eq!(grads.get::<I, 2>(id).is_none(), frozen, "step {step}");
        model = optim.step(0.1, 0.0, model, grads);
        let moved = (model.prototypes.weight.val().inner() - before)
            .abs()
            .max()
            .into_scalar();
        assert_eq!(moved > 0.0, !frozen, "step {step}: moved {moved}");
        if !frozen {
            let norms = prototype_norms(&model);
            assert!(norms.iter().any(|n| (n - 1.0).abs() > 1e-3), "{norms:?}");
        }
        (model, state) = Method::<B>::after_step(&cfg, model, state, &ctx);
        assert_unit(&prototype_norms(&model));
    }
}

/// With `queue_start_epoch = 2` and 3 steps an epoch, the queue fills from step 6; it joins
/// the codes once full (8 rows, 4 a step: from step 8), and then the loss is the SwAV loss
/// with the queue's rows scored by the current prototypes. The batch's embeddings are
/// written after being used.
#[test]
fn queue_switches_on_at_its_epoch_and_joins_the_codes_when_full() {
    let cfg = small(8);
    let per = Some(3);
    let on: Vec<bool> = (0..8).map(|s| cfg.queue_filling(&ctx(s, per))).collect();
    assert_eq!(on, [false, false, false, false, false, false, true, true]);
    let by_step = SwavConfig {
        queue_start_step: Some(1),
        ..cfg.clone()
    };
    assert!(!by_step.queue_filling(&ctx(0, per)) && by_step.queue_filling(&ctx(1, per)));
    assert!(!cfg.queue_filling(&ctx(50, None)), "epoch unknown, start 2");
    let at_zero = SwavConfig {
        queue_start_epoch: 0.0,
        ..cfg.clone()
    };
    assert!(at_zero.queue_filling(&ctx(0, None)));
    assert!(
        !SwavConfig::default().queue_filling(&ctx(10_000, Some(1))),
        "no queue"
    );

    let (model, mut state) = model(&cfg);
    assert_eq!(state.queues.len(), 2);
    let part = |out: &MethodOutput<B>, name: &str| -> f32 {
        let (_, v) = out.parts.iter().find(|(n, _)| *n == name).expect("part");
        v.clone().into_scalar()
    };
    for (step, pointer, full) in [(5, 0, false), (6, 4, false), (7, 0, true)] {
        let out = cfg
            .views_loss(&model, &mut state, views(), &ctx(step, per))
            .expect("four views");
        assert_eq!(part(&out, "queue_used"), 0.0, "step {step}");
        assert!(part(&out, "prototypes_used") >= 1.0);
        assert_eq!(state.queues[0].pointer(), pointer, "step {step}");
        assert_eq!(state.is_full(), full, "step {step}");
    }

    let views = views();
    let queued: Vec<Tensor<I, 2>> = state.queues.iter().map(|q| q.rows()).collect();
    let out = cfg
        .views_loss(&model, &mut state, views.clone(), &ctx(8, per))
        .expect("four views");
    assert_eq!(part(&out, "queue_used"), 1.0);
    let (z, scores) = model.forward(views).expect("four views");
    let c = model.prototypes.weight.val().inner();
    let per_view: Vec<Tensor<B, 2>> = (0..4).map(|v| scores.clone().narrow(0, v * 4, 4)).collect();
    let queue_scores: Vec<Tensor<B, 2>> = queued
        .into_iter()
        .map(|q| Tensor::from_inner(q.matmul(c.clone())))
        .collect();
    let want = swav(
        &cfg.loss(),
        &per_view[..2],
        &per_view[2..],
        Some(&queue_scores[..]),
    )
    .expect("shapes");
    let without = swav(&cfg.loss(), &per_view[..2], &per_view[2..], None).expect("shapes");
    let (got, want, without): (f32, f32, f32) = (
        out.loss.into_scalar(),
        want.into_scalar(),
        without.into_scalar(),
    );
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    assert!((got - without).abs() > 1e-6, "the queue changed nothing");
    // View 1's embeddings are now queue 1's rows 0..4.
    let written = state.queues[1].rows().slice([0..4, 0..8]);
    let diff = (written - z.inner().slice([4..8, 0..8]))
        .abs()
        .max()
        .into_scalar();
    assert!(diff < 1e-6, "{diff}");
}

fn resolve(views: &str, objective: &str, model: &str) -> Result<MethodConfig> {
    let text = format!(
        "[data]\nbatch_size = 4\n\n{views}\n[model]\n{model}\n\n[objective]\nmethod = \"swav\"\n{objective}\n\n[train]\nsteps = 1\n"
    );
    let recipe = Recipe::parse(&text, "swav-test").expect("recipe parses");
    let config = crate::config::TrainerConfig::from_recipe(&recipe)?;
    Ok(config.method)
}

const MULTI_CROP: &str = "[[views]]\nname = \"global\"\ncount = 2\nsize = 32\n\n[[views]]\nname = \"local\"\ncount = 4\nsize = 16\n";

#[test]
fn recipes_are_checked_against_the_views() {
    let resnet = "arch = \"resnet18\"";
    match resolve(MULTI_CROP, "queue_length = 64", resnet).expect("valid") {
        MethodConfig::Swav(cfg) => assert_eq!((cfg.queue_length, cfg.crops_for_assign), (64, 2)),
        other => panic!("{other:?}"),
    }
    let one = "[[views]]\nname = \"v\"\nsize = 32\n";
    let cases = [
        (one, "", resnet, "at least 2"),
        (
            MULTI_CROP,
            "crops_for_assign = 3",
            resnet,
            "crops_for_assign",
        ),
        (
            MULTI_CROP,
            "crops_for_assign = 0",
            resnet,
            "crops_for_assign",
        ),
        (
            MULTI_CROP,
            "sinkhorn_epsilon = 0.0",
            resnet,
            "sinkhorn_epsilon",
        ),
        (MULTI_CROP, "num_prototypes = 0", resnet, "num_prototypes"),
        (MULTI_CROP, "prototypes = 10", resnet, "prototypes"),
        (
            MULTI_CROP,
            "",
            "arch = \"vit_tiny_patch16_224\"\nimg_size = 32\npatch_size = 8",
            "img_size",
        ),
    ];
    for (views, objective, model, needle) in cases {
        let err = resolve(views, objective, model).expect_err(needle);
        // The message and its causes (the parser's names the unknown key).
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        let err = text;
        assert!(err.contains(needle), "`{needle}` not in {err}");
    }
}
