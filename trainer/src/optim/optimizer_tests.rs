//! Tests of [`super::Optim`]: LARS against the golden case, AdamW and SGD against the
//! PyTorch formulas evaluated on the host in f64, and the record round trip.

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::tests::{Toy, toy};
use super::{Optim, OptimRecord, OptimSettings, ParamGroups};
use crate::error::Error;
use crate::goldens::Golden;

type B = Autodiff<Flex>;

/// A deterministic gradient value for element `j` of parameter `i` at step `t`, in [-1, 1].
fn grad_value(i: usize, j: usize, t: usize) -> f32 {
    ((i * 7 + j * 3 + t * 5) % 11) as f32 / 5.0 - 1.0
}

/// Registers [`grad_value`] gradients for every float parameter of a module.
struct GradFiller {
    step: usize,
    index: usize,
    grads: GradientsParams,
}

impl ModuleVisitor<B> for GradFiller {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let dims = param.val().dims();
        let numel = dims.iter().product::<usize>();
        let values: Vec<f32> = (0..numel)
            .map(|j| grad_value(self.index, j, self.step))
            .collect();
        let grad = Tensor::<Flex, D>::from_data(TensorData::new(values, dims), &Default::default());
        self.grads.register::<Flex, D>(param.id, grad);
        self.index += 1;
    }
}

fn grads_at<M: Module<B>>(model: &M, step: usize) -> GradientsParams {
    let mut filler = GradFiller {
        step,
        index: 0,
        grads: GradientsParams::new(),
    };
    model.visit(&mut filler);
    filler.grads
}

/// Every float parameter's values, in module order.
struct Collect(Vec<Vec<f32>>);

impl<B2: Backend> ModuleVisitor<B2> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B2, D>>) {
        let values = param.val().into_data().convert::<f32>().to_vec::<f32>();
        self.0.push(values.expect("f32 values"));
    }
}

fn params_of<B2: Backend, M: Module<B2>>(model: &M) -> Vec<Vec<f32>> {
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

/// Per-step learning rates and weight decays: both change, as under a schedule.
const LR: [f64; 3] = [0.1, 0.05, 0.02];
const WD: [f64; 3] = [0.04, 0.2, 0.4];

fn run(settings: OptimSettings, mut model: Toy<B>, steps: usize) -> Vec<Vec<f32>> {
    let mut optim = Optim::new(settings, &model);
    for t in 0..steps {
        let grads = grads_at(&model, t);
        model = optim.step(LR[t], WD[t], model, grads);
    }
    params_of(&model)
}

/// The PyTorch update of one element, in f64: `state` is `(m or buf, v)`.
type HostRule = dyn Fn(&mut f64, &mut (f64, f64), f64, usize, bool);

/// Runs `rule` over `model`'s parameters on the host, with each parameter's decay group.
fn host_reference(rule: &HostRule, model: &Toy<B>, steps: usize) -> Vec<Vec<f64>> {
    let groups = ParamGroups::new(model);
    let mut params: Vec<Vec<f64>> = params_of(model)
        .into_iter()
        .map(|p| p.into_iter().map(f64::from).collect())
        .collect();
    let mut state: Vec<Vec<(f64, f64)>> =
        params.iter().map(|p| vec![(0.0, 0.0); p.len()]).collect();
    for t in 0..steps {
        for (i, p) in params.iter_mut().enumerate() {
            for (j, value) in p.iter_mut().enumerate() {
                let g = f64::from(grad_value(i, j, t));
                rule(value, &mut state[i][j], g, t, groups.params[i].decay);
            }
        }
    }
    params
}

fn assert_close(actual: &[Vec<f32>], expected: &[Vec<f64>], tol: f64, what: &str) {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        for (j, (&a, &e)) in a.iter().zip(e).enumerate() {
            assert!(
                (f64::from(a) - e).abs() <= tol * e.abs().max(1.0),
                "{what}: param {i}[{j}] = {a} but expected {e}"
            );
        }
    }
}

#[test]
fn lars_matches_the_golden_case() {
    #[derive(Module, Debug)]
    struct Pair<B: Backend> {
        w: Param<Tensor<B, 2>>,
        b: Param<Tensor<B, 1>>,
    }
    let device = Default::default();
    let g = Golden::load("lars");
    let mut model = Pair::<B> {
        w: Param::from_tensor(g.tensor("in.w", &device)),
        b: Param::from_tensor(g.tensor("in.b", &device)),
    };
    let settings = OptimSettings::Lars {
        momentum: g.param("momentum"),
        eta: g.param("eta"),
        weight_decay: g.param("weight_decay"),
    };
    let mut optim = Optim::new(settings, &model);
    for k in 0..3 {
        let mut grads = GradientsParams::new();
        grads.register::<Flex, 2>(model.w.id, g.tensor(&format!("in.grad_w.{k}"), &device));
        grads.register::<Flex, 1>(model.b.id, g.tensor(&format!("in.grad_b.{k}"), &device));
        model = optim.step(g.param("lr"), settings.weight_decay(), model, grads);
    }
    g.assert_close("out.w", model.w.val());
    g.assert_close("out.b", model.b.val());
}

#[test]
fn adamw_matches_the_pytorch_formula() {
    let (beta1, beta2, eps) = (0.9, 0.95, 1e-8);
    let settings = OptimSettings::AdamW {
        betas: (beta1, beta2),
        eps,
        weight_decay: 0.05,
    };
    let rule = move |p: &mut f64, (m, v): &mut (f64, f64), g: f64, t: usize, decay: bool| {
        let (lr, wd) = (LR[t], WD[t]);
        if decay {
            *p *= 1.0 - lr * wd;
        }
        *m = beta1 * *m + (1.0 - beta1) * g;
        *v = beta2 * *v + (1.0 - beta2) * g * g;
        let step = t as i32 + 1;
        let m_hat = *m / (1.0 - beta1.powi(step));
        let v_hat = *v / (1.0 - beta2.powi(step));
        *p -= lr * m_hat / (v_hat.sqrt() + eps);
    };
    let model = toy(&Default::default());
    let expected = host_reference(&rule, &model, 3);
    assert_close(&run(settings, model, 3), &expected, 2e-6, "adamw");
}

#[test]
fn sgd_matches_the_pytorch_formula() {
    for (nesterov, decay_all) in [(false, false), (true, false), (false, true), (true, true)] {
        let momentum = 0.9;
        let settings = OptimSettings::Sgd {
            momentum,
            nesterov,
            weight_decay: 1e-4,
            decay_all,
        };
        let rule = move |p: &mut f64, (buf, _): &mut (f64, f64), g: f64, t: usize, decay: bool| {
            let (lr, wd) = (LR[t], WD[t]);
            let d = if decay || decay_all { g + wd * *p } else { g };
            *buf = if t == 0 { d } else { momentum * *buf + d };
            *p -= lr * if nesterov { d + momentum * *buf } else { *buf };
        };
        let what = format!("sgd nesterov={nesterov} decay_all={decay_all}");
        let model = toy(&Default::default());
        let expected = host_reference(&rule, &model, 3);
        assert_close(&run(settings, model, 3), &expected, 1e-6, &what);
    }
}

/// p = 1, g = 1, lr = 0.1, momentum 0.9, by hand: heavy ball 0.9, 0.71, 0.439; Nesterov
/// 0.81, 0.539 (`buf` 1, 1.9; steps 1.9, 2.71).
#[test]
fn sgd_momentum_by_hand() {
    #[derive(Module, Debug)]
    struct Scalar<B: Backend> {
        p: Param<Tensor<B, 1>>,
    }
    let device = Default::default();
    for (nesterov, expected) in [(false, vec![0.9, 0.71, 0.439]), (true, vec![0.81, 0.539])] {
        let mut model = Scalar::<B> {
            p: Param::from_tensor(Tensor::ones([1], &device)),
        };
        let settings = OptimSettings::Sgd {
            momentum: 0.9,
            nesterov,
            weight_decay: 0.0,
            decay_all: true,
        };
        let mut optim = Optim::new(settings, &model);
        for want in expected {
            let mut grads = GradientsParams::new();
            grads.register::<Flex, 1>(model.p.id, Tensor::ones([1], &device));
            model = optim.step(0.1, 0.0, model, grads);
            let got = model.p.val().into_scalar();
            assert!(
                (got - want).abs() < 1e-6,
                "nesterov={nesterov}: {got} vs {want}"
            );
        }
    }
}

/// Checkpoint after one step, restore into a fresh optimiser, and two more steps give the
/// same parameters as not stopping, for each rule.
#[test]
fn record_round_trip_continues_identically() {
    let device = Default::default();
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let all = [
        OptimSettings::AdamW {
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.04,
        },
        OptimSettings::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
            decay_all: true,
        },
        OptimSettings::Lars {
            momentum: 0.9,
            eta: 0.001,
            weight_decay: 1.5e-6,
        },
    ];
    for settings in all {
        let model: Toy<B> = toy(&device);
        let mut optim = Optim::new(settings, &model);
        let grads = grads_at(&model, 0);
        let model = optim.step(LR[0], WD[0], model, grads);

        let bytes = Recorder::<B>::record(&recorder, optim.record(), ()).expect("encode");
        let record: OptimRecord<B> =
            Recorder::<B>::load(&recorder, bytes, &device).expect("decode");
        let mut restored = Optim::new(settings, &model)
            .load_record(record)
            .expect("same model, same rule");

        let (mut a, mut b) = (model.clone(), model);
        for t in 1..3 {
            let grads = (grads_at(&a, t), grads_at(&b, t));
            a = optim.step(LR[t], WD[t], a, grads.0);
            b = restored.step(LR[t], WD[t], b, grads.1);
        }
        assert_eq!(params_of(&a), params_of(&b), "{}", settings.rule());
    }
}

#[test]
fn a_record_of_another_rule_is_refused() {
    let device = Default::default();
    let model: Toy<B> = toy(&device);
    let sgd = OptimSettings::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
        decay_all: false,
    };
    let lars = OptimSettings::Lars {
        momentum: 0.9,
        eta: 0.001,
        weight_decay: 0.0,
    };
    let mut optim = Optim::new(sgd, &model);
    let grads = grads_at(&model, 0);
    let model = optim.step(0.1, 0.0, model, grads);
    let err = Optim::new(lars, &model).load_record(optim.record());
    assert!(matches!(err, Err(Error::OptimState { .. })), "{err:?}");
    // A model with other parameter ids does not take the state either.
    let other: Toy<B> = toy(&device);
    let err = Optim::new(sgd, &other).load_record(optim.record());
    assert!(matches!(err, Err(Error::OptimState { .. })), "{err:?}");
}

#[test]
fn settings_parse_from_a_recipe() {
    let lars: OptimSettings =
        toml::from_str("rule = \"lars\"\nmomentum = 0.9\neta = 0.001\nweight_decay = 1.5e-6")
            .expect("lars settings");
    assert_eq!(
        lars,
        OptimSettings::Lars {
            momentum: 0.9,
            eta: 0.001,
            weight_decay: 1.5e-6
        }
    );
    let adamw: OptimSettings =
        toml::from_str("rule = \"adamw\"\nbetas = [0.9, 0.95]\neps = 1e-8\nweight_decay = 0.05")
            .expect("adamw settings");
    assert_eq!(adamw.rule(), "adamw");
    let unknown = toml::from_str::<OptimSettings>(
        "rule = \"sgd\"\nmomentum = 0.9\nnesterov = false\nweight_decay = 0.0\ndecay_all = true\nlr = 1",
    );
    assert!(unknown.is_err(), "unknown keys are refused");
}
