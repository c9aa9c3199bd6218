//! One exchange per optimiser step: every rank's gradients, loss, stop requests and pipeline
//! position in one all-reduce, so that the ranks step together and agree on when to stop
//! and checkpoint.
//!
//! ```text
//! [ grad of p0 | grad of p1 | ... | loss | parts.. | images | stop | checkpoint | slot 0 | .. | slot W-1 ]
//!   (summed, / world: the mean gradient)            (summed)  (any rank)  (rank r fills slot r only)
//! ```
//!
//! Gradients are laid out in module order (the same on every rank), not by `ParamId`: ids
//! are drawn at random when a model is built, so they differ between processes.
//! A pipeline position travels as 16-bit pieces, which f32 sums carry exactly.

use std::sync::Arc;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use tessera_pipeline::PipelineState;

use super::{Collective, CollectiveError, World};

/// Floats per pipeline slot: present flag, epoch and samples consumed as 4 x 16 bits each.
const SLOT: usize = 9;

/// What one rank brings to a step besides its gradients.
#[derive(Debug, Clone, Default)]
pub struct Contribution {
    /// This rank's loss (mean over its micro-batches).
    pub loss: f64,
    /// This rank's named loss parts, in the method's order.
    pub parts: Vec<f64>,
    /// Samples this rank consumed in the step.
    pub images: u64,
    /// This rank was asked to stop (signal, time limit).
    pub stop: bool,
    /// This rank was asked for a checkpoint (SIGUSR1).
    pub checkpoint: bool,
    /// This rank's pipeline position after the step's batches.
    pub pipeline: Option<PipelineState>,
}

/// What all ranks agree on after the exchange.
#[derive(Debug, Clone, Default)]
pub struct Agreed {
    /// Mean loss over the ranks.
    pub loss: f64,
    /// Mean loss parts.
    pub parts: Vec<f64>,
    /// Samples consumed by all ranks together.
    pub images: u64,
    /// Some rank was asked to stop: all stop after this step.
    pub stop: bool,
    /// Some rank was asked for a checkpoint.
    pub checkpoint: bool,
    /// Every rank's pipeline position, by rank.
    pub pipelines: Vec<Option<PipelineState>>,
}

/// The per-step exchange of a data-parallel run.
#[derive(Debug)]
pub struct StepSync<B: Backend> {
    collective: Arc<Collective<B>>,
    world: World,
}

impl<B: Backend> StepSync<B> {
    /// Around a joined collective.
    pub fn new(collective: Collective<B>, world: World) -> Self {
        Self {
            collective: Arc::new(collective),
            world,
        }
    }

    /// The collective, shared with the step's global-batch operations
    /// ([`super::GlobalBatch::new`]).
    pub fn collective(&self) -> &Arc<Collective<B>> {
        &self.collective
    }

    /// The world this exchange spans.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Replaces `grads` by their mean over the ranks and returns what the ranks agree on.
    pub fn exchange<BA, M>(
        &self,
        module: &M,
        grads: &mut GradientsParams,
        mine: &Contribution,
        step: u64,
        device: &B::Device,
    ) -> Result<Agreed, CollectiveError>
    where
        BA: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<BA>,
    {
        let world = self.world.world_size as usize;
        // 1. Gradients, flattened in module order.
        let mut gather = Flatten::<BA> {
            grads,
            pieces: Vec::new(),
            layout: Vec::new(),
        };
        module.visit(&mut gather);
        let Flatten { pieces, layout, .. } = gather;
        let grad_len: usize = layout.iter().map(|l| l.len).sum();

        // 2. The small part: loss, parts, counts, flags, this rank's pipeline slot.
        let mut small = Vec::with_capacity(4 + mine.parts.len() + world * SLOT);
        small.push(mine.loss as f32);
        small.extend(mine.parts.iter().map(|&p| p as f32));
        small.push(mine.images as f32);
        small.push(f32::from(u8::from(mine.stop)));
        small.push(f32::from(u8::from(mine.checkpoint)));
        let slots_at = small.len();
        small.resize(slots_at + world * SLOT, 0.0);
        if let Some(p) = &mine.pipeline {
            let at = slots_at + self.world.rank as usize * SLOT;
            small[at..at + SLOT].copy_from_slice(&pack(p));
        }
        let mut all = pieces;
        all.push(Tensor::<B, 1>::from_floats(small.as_slice(), device));

        // 3. One all-reduce.
        let summed = self.collective.all_reduce_sum(
            Tensor::cat(all, 0),
            &format!("the all-reduce of step {step}"),
        )?;

        // 4. Gradients back, divided by the world.
        let scale = 1.0 / world as f64;
        let mut at = 0;
        for slot in &layout {
            let flat = summed.clone().slice(at..at + slot.len).mul_scalar(scale);
            slot.register(grads, flat);
            at += slot.len;
        }
        debug_assert_eq!(at, grad_len);
        let small: Vec<f32> = summed
            .slice(grad_len..grad_len + small.len())
            .into_data()
            .to_vec::<f32>()
            .unwrap_or_default();
        let n_parts = mine.parts.len();
        let value = |i: usize| small.get(i).copied().unwrap_or(0.0) as f64;
        let pipelines = (0..world)
            .map(|r| {
                let at = slots_at + r * SLOT;
                small
                    .get(at..at + SLOT)
                    .and_then(|s| unpack(s, mine.pipeline.as_ref(), r, world))
            })
            .collect();
        Ok(Agreed {
            loss: value(0) * scale,
            parts: (0..n_parts).map(|i| value(1 + i) * scale).collect(),
            images: value(1 + n_parts).round() as u64,
            stop: value(2 + n_parts) > 0.5,
            checkpoint: value(3 + n_parts) > 0.5,
            pipelines,
        })
    }

    /// Checks that every rank starts from the same weights (the same seed builds the same
    /// model; a rank that resumed from another checkpoint would not): their sum and sum of
    /// squares must agree.
    pub fn check_same_weights<BA, M>(
        &self,
        module: &M,
        device: &B::Device,
    ) -> Result<(), CollectiveError>
    where
        BA: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<BA>,
    {
        let mut fp = Fingerprint::<BA> {
            sum: 0.0,
            squares: 0.0,
            _b: std::marker::PhantomData,
        };
        module.visit(&mut fp);
        let world = self.world.world_size as usize;
        let mut mine = vec![0.0f32; 2 * world];
        let r = self.world.rank as usize;
        mine[2 * r] = fp.sum as f32;
        mine[2 * r + 1] = fp.squares as f32;
        let all: Vec<f32> = self
            .collective
            .all_reduce_sum(
                Tensor::<B, 1>::from_floats(mine.as_slice(), device),
                "comparing the initial weights",
            )?
            .into_data()
            .to_vec::<f32>()
            .unwrap_or_default();
        // Sums may be reduced in another order on another machine: compare loosely.
        let differs = |a: f32, b: f32| (a - b).abs() > 1e-4 * a.abs().max(b.abs()).max(1.0);
        for (other, pair) in all.chunks(2).enumerate() {
            if differs(pair[0], fp.sum as f32) || differs(pair[1], fp.squares as f32) {
                return Err(CollectiveError::Failed {
                    rank: self.world.rank,
                    what: "comparing the initial weights".into(),
                    message: format!(
                        "rank {other} starts from different weights (sum {} vs {}): every \
                         rank must use the same recipe, seed and checkpoint",
                        pair[0], fp.sum as f32
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Where one parameter's gradient sits in the flat buffer.
struct Slot {
    id: ParamId,
    dims: Vec<usize>,
    len: usize,
    /// Whether this rank had a gradient for it (registered back only then).
    present: bool,
}

impl Slot {
    fn register<B: Backend>(&self, grads: &mut GradientsParams, flat: Tensor<B, 1>) {
        if !self.present {
            return;
        }
        match self.dims.len() {
            1 => grads.register::<B, 1>(self.id, flat),
            2 => grads.register::<B, 2>(self.id, flat.reshape([self.dims[0], self.dims[1]])),
            3 => grads.register::<B, 3>(
                self.id,
                flat.reshape([self.dims[0], self.dims[1], self.dims[2]]),
            ),
            4 => grads.register::<B, 4>(
                self.id,
                flat.reshape([self.dims[0], self.dims[1], self.dims[2], self.dims[3]]),
            ),
            _ => {}
        }
    }
}

/// Takes every trainable parameter's gradient (zeros where this rank has none).
struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    pieces: Vec<Tensor<B::InnerBackend, 1>>,
    layout: Vec<Slot>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !param.is_require_grad() || !(1..=4).contains(&D) {
            return;
        }
        let dims = param.shape().as_slice().to_vec();
        let len = dims.iter().product();
        let (piece, present) = match self.grads.remove::<B::InnerBackend, D>(param.id) {
            Some(grad) => (grad.reshape([len]), true),
            None => (Tensor::zeros([len], &param.device()), false),
        };
        self.pieces.push(piece);
        self.layout.push(Slot {
            id: param.id,
            dims,
            len,
            present,
        });
    }
}

/// Sum and sum of squares of every float parameter.
struct Fingerprint<B: AutodiffBackend> {
    sum: f64,
    squares: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Fingerprint<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val().inner();
        self.sum += t.clone().sum().into_scalar().elem::<f64>();
        self.squares += t.powi_scalar(2).sum().into_scalar().elem::<f64>();
    }
}

fn pack(p: &PipelineState) -> [f32; SLOT] {
    let mut out = [0.0; SLOT];
    out[0] = 1.0;
    for (i, v) in [p.epoch, p.samples_consumed].into_iter().enumerate() {
        for k in 0..4 {
            out[1 + i * 4 + k] = ((v >> (16 * k)) & 0xFFFF) as f32;
        }
    }
    out
}

/// A slot back into a state; seed from this rank's own (all ranks share it).
fn unpack(
    s: &[f32],
    mine: Option<&PipelineState>,
    rank: usize,
    world: usize,
) -> Option<PipelineState> {
    if s[0] < 0.5 {
        return None;
    }
    let word = |i: usize| {
        (0..4).fold(0u64, |acc, k| {
            acc | ((s[1 + i * 4 + k].round() as u64 & 0xFFFF) << (16 * k))
        })
    };
    Some(PipelineState {
        seed: mine.map_or(0, |m| m.seed),
        epoch: word(0),
        rank: rank as u32,
        world_size: world as u32,
        samples_consumed: word(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_positions_survive_f32_sums() {
        let p = PipelineState {
            seed: 7,
            epoch: 70_000,
            rank: 1,
            world_size: 2,
            samples_consumed: 0x1234_5678_9ABC,
        };
        let packed = pack(&p);
        // Summed with a zero slot, as the other ranks contribute.
        let summed: Vec<f32> = packed.iter().map(|v| v + 0.0).collect();
        assert_eq!(unpack(&summed, Some(&p), 1, 2), Some(p));
        assert_eq!(unpack(&[0.0; SLOT], Some(&p), 0, 2), None);
    }
}
