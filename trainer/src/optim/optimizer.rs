//! [`Optim`]: one optimiser over the rules of [`OptimSettings`], with per-step learning rate
//! and weight decay, and its checkpoint state [`OptimRecord`].
//!
//! A step is one [`ModuleMapper`] pass over the model, as burn-optim's `OptimizerAdaptor`
//! does: each float parameter looks up its gradient by [`ParamId`] in the step's
//! [`GradientsParams`]; a parameter without one (frozen, unused this step, or a BatchNorm
//! running statistic) is left as it is and its state is not advanced. The update runs on
//! `B::InnerBackend`, so nothing is recorded on the autograd tape, and the parameter comes
//! back as a fresh leaf that requires grad as before.
//!
//! State is kept per parameter (like PyTorch's `optimizer.state[p]`), flattened to 1-D so
//! that parameters of every rank share one map; it is reshaped to the parameter's dims for
//! the update (free for the contiguous tensors the rules produce).

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;

use burn::module::{AutodiffModule, ModuleMapper, Param, ParamId};
use burn::optim::GradientsParams;
use burn::record::{PrecisionSettings, Record};
use burn::tensor::{
    Tensor,
    backend::{AutodiffBackend, Backend},
};
use serde::{Deserialize, Serialize};

use super::ParamGroups;
use super::rules::{OptimSettings, RuleState, StepArgs};
use crate::error::{Error, Result};

/// One parameter's optimiser state, flattened to 1-D (`numel` values).
#[derive(Record, Debug, Clone)]
pub struct ParamState<B: Backend> {
    /// Steps taken on this parameter (AdamW's bias-correction `t`).
    pub step: u64,
    /// AdamW's first moment `m`, SGD's momentum buffer, LARS's `mu`.
    pub momentum: Tensor<B, 1>,
    /// AdamW's second moment `v`; `None` for SGD and LARS.
    pub second_moment: Option<Tensor<B, 1>>,
}

impl<B: Backend> ParamState<B> {
    fn from_rule<const D: usize>(state: RuleState<B, D>) -> Self {
        let flat = |t: Tensor<B, D>| {
            let numel = t.shape().num_elements();
            t.reshape([numel])
        };
        Self {
            step: state.step,
            momentum: flat(state.momentum),
            second_moment: state.second_moment.map(flat),
        }
    }

    fn into_rule<const D: usize>(self, dims: [usize; D]) -> RuleState<B, D> {
        RuleState {
            step: self.step,
            momentum: self.momentum.reshape(dims),
            second_moment: self.second_moment.map(|v| v.reshape(dims)),
        }
    }

    fn map_backend<B2: Backend>(self, f: impl Fn(Tensor<B, 1>) -> Tensor<B2, 1>) -> ParamState<B2> {
        ParamState {
            step: self.step,
            momentum: f(self.momentum),
            second_moment: self.second_moment.map(f),
        }
    }
}

/// The checkpoint state of an [`Optim`]: the settings it ran with and each parameter's
/// [`ParamState`], keyed by [`ParamId`]. A burn [`Record`], so it saves with the recorders
/// the model uses (`NamedMpkBytesRecorder<FullPrecisionSettings>` in
/// [`crate::checkpoint`]); the saved map is ordered by id, so equal states give equal bytes.
#[derive(Debug, Clone)]
pub struct OptimRecord<B: Backend> {
    /// The settings of the run that saved the state.
    pub settings: OptimSettings,
    /// Per-parameter state.
    pub state: HashMap<ParamId, ParamState<B>>,
}

/// The serialised form of an [`OptimRecord`].
#[derive(Serialize, Deserialize, Clone)]
#[serde(bound = "")]
pub struct OptimRecordItem<B: Backend, S: PrecisionSettings> {
    /// The settings of the run that saved the state.
    pub settings: OptimSettings,
    /// Per-parameter state, keyed by the serialised [`ParamId`].
    pub state: BTreeMap<String, <ParamState<B> as Record<B>>::Item<S>>,
}

impl<B: Backend> Record<B> for OptimRecord<B> {
    type Item<S: PrecisionSettings> = OptimRecordItem<B, S>;

    fn into_item<S: PrecisionSettings>(self) -> Self::Item<S> {
        OptimRecordItem {
            settings: self.settings,
            state: self
                .state
                .into_iter()
                .map(|(id, state)| (id.serialize(), state.into_item()))
                .collect(),
        }
    }

    fn from_item<S: PrecisionSettings>(item: Self::Item<S>, device: &B::Device) -> Self {
        Self {
            settings: item.settings,
            state: item
                .state
                .into_iter()
                .map(|(id, state)| {
                    (
                        ParamId::deserialize(&id),
                        ParamState::from_item(state, device),
                    )
                })
                .collect(),
        }
    }
}

/// AdamW, SGD or LARS over a model's parameters (see the module docs of [`crate::optim`]).
///
/// ```ignore
/// let mut optim = Optim::new(settings, &model);
/// let grads = GradientsParams::from_grads(loss.backward(), &model);
/// let model = optim.step(lr.lr(step), wd.value(step), model, grads);
/// ```
pub struct Optim<M: AutodiffModule<B>, B: AutodiffBackend> {
    settings: OptimSettings,
    groups: ParamGroups,
    state: HashMap<ParamId, ParamState<B::InnerBackend>>,
    model: PhantomData<fn() -> M>,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Clone for Optim<M, B> {
    fn clone(&self) -> Self {
        Self {
            settings: self.settings,
            groups: self.groups.clone(),
            state: self.state.clone(),
            model: PhantomData,
        }
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> std::fmt::Debug for Optim<M, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let decayed = self.groups.params.iter().filter(|p| p.decay).count();
        f.debug_struct("Optim")
            .field("settings", &self.settings)
            .field("decayed_params", &decayed)
            .field("no_decay_params", &(self.groups.params.len() - decayed))
            .field("params_with_state", &self.state.len())
            .finish()
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Optim<M, B> {
    /// Groups `model`'s parameters; no state until the first step.
    pub fn new(settings: OptimSettings, model: &M) -> Self {
        Self {
            settings,
            groups: ParamGroups::new(model),
            state: HashMap::new(),
            model: PhantomData,
        }
    }

    /// The rule and its hyper-parameters.
    pub fn settings(&self) -> OptimSettings {
        self.settings
    }

    /// The decay / no-decay split (used by AdamW and SGD).
    pub fn groups(&self) -> &ParamGroups {
        &self.groups
    }

    /// One update of every parameter that has a gradient in `grads`, with learning rate
    /// `lr` and weight decay `weight_decay` (this step's scheduled value; pass
    /// `settings().weight_decay()` without a schedule). Returns the updated model.
    pub fn step(&mut self, lr: f64, weight_decay: f64, model: M, mut grads: GradientsParams) -> M {
        let mut mapper = UpdateMapper::<B> {
            settings: self.settings,
            step: StepArgs { lr, weight_decay },
            groups: &self.groups,
            state: &mut self.state,
            grads: &mut grads,
        };
        model.map(&mut mapper)
    }

    /// The state to checkpoint.
    pub fn record(&self) -> OptimRecord<B> {
        OptimRecord {
            settings: self.settings,
            state: self
                .state
                .iter()
                .map(|(&id, state)| (id, state.clone().map_backend(Tensor::from_inner)))
                .collect(),
        }
    }

    /// Restores the state saved by [`Optim::record`], keeping this optimiser's settings
    /// (hyper-parameters may change on resume; the rule may not).
    ///
    /// # Errors
    ///
    /// [`Error::OptimState`] when the record is of another rule, names a parameter this
    /// model does not have, or holds a state whose size or moments do not fit.
    pub fn load_record(mut self, record: OptimRecord<B>) -> Result<Self> {
        if std::mem::discriminant(&record.settings) != std::mem::discriminant(&self.settings) {
            return Err(Error::OptimState {
                param: "-".into(),
                what: format!(
                    "saved by {}, loaded into {}",
                    record.settings.rule(),
                    self.settings.rule()
                ),
            });
        }
        let mut state = HashMap::with_capacity(record.state.len());
        for (id, s) in record.state {
            let entry = self.groups.find(id).ok_or_else(|| Error::OptimState {
                param: id.to_string(),
                what: "not a parameter of this model".into(),
            })?;
            let numel: usize = entry.shape.iter().product();
            let fits = |t: &Tensor<B, 1>| t.dims()[0] == numel;
            let moments_fit = match &s.second_moment {
                Some(v) => self.settings.has_second_moment() && fits(v),
                None => !self.settings.has_second_moment(),
            };
            if !fits(&s.momentum) || !moments_fit {
                return Err(Error::OptimState {
                    param: entry.name.clone(),
                    what: format!(
                        "state of {} values (second moment: {}) for shape {:?} under {}",
                        s.momentum.dims()[0],
                        s.second_moment.is_some(),
                        entry.shape,
                        self.settings.rule()
                    ),
                });
            }
            state.insert(id, s.map_backend(|t| t.inner()));
        }
        self.state = state;
        Ok(self)
    }
}

/// Applies the rule to each parameter that has a gradient.
struct UpdateMapper<'a, B: AutodiffBackend> {
    settings: OptimSettings,
    step: StepArgs,
    groups: &'a ParamGroups,
    state: &'a mut HashMap<ParamId, ParamState<B::InnerBackend>>,
    grads: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleMapper<B> for UpdateMapper<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let inner = tensor.inner();
        let grad = if grad.device() == inner.device() {
            grad
        } else {
            grad.to_device(&inner.device())
        };
        let state = self.state.remove(&id).map(|s| s.into_rule(inner.dims()));
        let in_decay_group = !self.groups.is_no_decay(id);
        let (inner, state) = self
            .settings
            .update(&self.step, inner, grad, state, in_decay_group);
        if let Some(state) = state {
            self.state.insert(id, ParamState::from_rule(state));
        }
        let tensor = Tensor::from_inner(inner);
        let tensor = if require_grad {
            tensor.require_grad()
        } else {
            tensor
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}
