//! Momentum teachers: the exponential moving average of the student's parameters that
//! BYOL, MoCo and DINO use as the target network.
//!
//! ```text
//! teacher = student.valid()                          // same ParamIds, no autodiff
//! each step, after the optimiser:
//!   m = CosineSchedule { start: 0.996, end: 1.0, .. }.value(step)
//!   teacher = ema_update(teacher, &student.valid(), m)   // t = m t + (1 - m) s
//! ```
//!
//! Parameters are matched by [`ParamId`], which `valid()` and the optimiser keep, so the
//! teacher needs no names. Only parameters are averaged: BatchNorm running statistics (which
//! burn's visitors show as floats) stay the teacher's own, as in the MoCo and BYOL code,
//! which average `parameters()` and leave buffers to the teacher's forward. Note that a
//! `valid()` teacher runs BatchNorm in inference mode (burn keys on the backend having
//! autodiff), so its buffers do not move unless the caller updates them.
//!
//! Everything runs on the device with tensor ops on the teacher's backend; nothing is read
//! back and nothing is recorded for autograd.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, backend::Backend};

/// Last path components of module floats that are buffers, not parameters: burn's
/// `BatchNorm` keeps its running statistics in `RunningState` fields with these names.
pub const BUFFER_NAMES: &[&str] = &["running_mean", "running_var"];

/// `t = momentum * t + (1 - momentum) * s` for every float parameter of `teacher`, with `s`
/// the parameter of `student` that has the same [`ParamId`]; returns the new teacher.
///
/// `momentum = 1` leaves the teacher as it is, `0` copies the student. Teacher parameters
/// without a student counterpart, and the [`BUFFER_NAMES`] buffers, are left unchanged.
///
/// # Panics
///
/// If a student parameter has the id of a teacher parameter but another number of elements
/// (the two are not copies of one model).
pub fn ema_update<B: Backend, M: Module<B>>(teacher: M, student: &M, momentum: f64) -> M {
    let mut collect = StudentParams {
        path: Vec::new(),
        params: HashMap::new(),
    };
    student.visit(&mut collect);
    teacher.map(&mut EmaMapper {
        path: Vec::new(),
        student: collect.params,
        momentum,
    })
}

/// Whether the float at `path` is a buffer (see [`BUFFER_NAMES`]).
fn is_buffer(path: &[String]) -> bool {
    path.last()
        .is_some_and(|leaf| BUFFER_NAMES.contains(&leaf.as_str()))
}

/// The student's parameters, flattened, by id.
struct StudentParams<B: Backend> {
    path: Vec<String>,
    params: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for StudentParams<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if is_buffer(&self.path) {
            return;
        }
        let value = param.val();
        let numel = value.shape().num_elements();
        self.params.insert(param.id, value.reshape([numel]));
    }
}

/// Moves each teacher parameter towards its student counterpart.
struct EmaMapper<B: Backend> {
    path: Vec<String>,
    student: HashMap<ParamId, Tensor<B, 1>>,
    momentum: f64,
}

impl<B: Backend> ModuleMapper<B> for EmaMapper<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if is_buffer(&self.path) {
            return param;
        }
        let Some(student) = self.student.remove(&param.id) else {
            return param;
        };
        let (id, teacher, mapper) = param.consume();
        let dims = teacher.dims(); // the parameter's shape
        let student_numel = student.dims()[0];
        assert_eq!(
            student_numel,
            dims.iter().product::<usize>(),
            "teacher parameter {} has shape {dims:?} but the student's has {student_numel} values",
            self.path.join(".")
        );
        let require_grad = teacher.is_require_grad();
        let averaged = teacher.detach().mul_scalar(self.momentum)
            + student
                .reshape(dims)
                .detach()
                .mul_scalar(1.0 - self.momentum);
        Param::from_mapped_value(id, averaged.set_require_grad(require_grad), mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::nn::{BatchNorm, BatchNormConfig, LayerNorm, Linear};

    type A = Autodiff<Flex>;

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        linear: Linear<B>,
        norm: LayerNorm<B>,
        bn: BatchNorm<B>,
    }

    fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().expect("f32")
    }

    /// Every float of `net` (running statistics included), in module order.
    fn floats(net: &Net<Flex>) -> Vec<Vec<f32>> {
        vec![
            values(net.linear.weight.val()),
            values(net.linear.bias.as_ref().expect("bias").val()),
            values(net.norm.gamma.val()),
            values(net.norm.beta.as_ref().expect("beta").val()),
            values(net.bn.gamma.val()),
            values(net.bn.beta.val()),
            values(net.bn.running_mean.value()),
            values(net.bn.running_var.value()),
        ]
    }

    /// Shifts every float (running statistics too), keeping ids: a "trained" student.
    struct Shift;

    impl ModuleMapper<A> for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<A, D>>) -> Param<Tensor<A, D>> {
            let (id, t, mapper) = param.consume();
            let shifted = t.clone().mul_scalar(2.0).add_scalar(0.5) + t.ones_like();
            Param::from_mapped_value(id, shifted.detach().require_grad(), mapper)
        }
    }

    /// A student and a teacher copied from it before the student moved.
    fn pair() -> (Net<Flex>, Net<Flex>) {
        let device = Default::default();
        let student = Net::<A> {
            linear: crate::vit::init_linear(3, 2, &device),
            norm: crate::vit::init_layer_norm(2, &device),
            bn: BatchNormConfig::new(2).init(&device),
        };
        let teacher = student.valid();
        let student = student.map(&mut Shift).valid();
        (teacher, student)
    }

    #[test]
    fn ema_is_the_formula_and_leaves_buffers() {
        let (teacher, student) = pair();
        let (t0, s) = (floats(&teacher), floats(&student));
        assert_ne!(t0, s, "the student moved");
        let m = 0.9;
        let t1 = floats(&ema_update(teacher, &student, m));
        for i in 0..6 {
            for ((a, t), s) in t1[i].iter().zip(&t0[i]).zip(&s[i]) {
                let expected = m * f64::from(*t) + (1.0 - m) * f64::from(*s);
                assert!(
                    (f64::from(*a) - expected).abs() < 1e-6,
                    "float {i}: {a} vs {expected}"
                );
            }
        }
        assert_eq!(t1[6..], t0[6..], "running statistics are not averaged");
    }

    #[test]
    fn momentum_one_keeps_and_zero_copies() {
        let (teacher, student) = pair();
        let (t0, s) = (floats(&teacher), floats(&student));
        let kept = floats(&ema_update(teacher.clone(), &student, 1.0));
        assert_eq!(kept, t0);
        let copied = floats(&ema_update(teacher, &student, 0.0));
        assert_eq!(copied[..6], s[..6]);
        assert_eq!(copied[6..], t0[6..]);
    }
}
