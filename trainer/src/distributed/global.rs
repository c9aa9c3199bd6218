//! The global batch: sums and gathers across ranks *inside* the forward and backward
//! passes, for methods whose loss couples the samples of a batch (contrastive negatives,
//! batch statistics, SyncBatchNorm).
//!
//! One primitive, [`GlobalBatch::all_reduce_sum`]: the element-wise sum of a tensor over the
//! ranks, differentiable. The adjoint of a sum over ranks is a sum over ranks, so its
//! backward all-reduces the upstream gradients: rank `r` receives `sum_r' dL_r'/dS`, the
//! gradient of every rank's loss with respect to the shared sum `S`. It is a custom burn
//! autodiff op (`Backward` of burn-autodiff 0.21, written like burn's own float ops); every
//! rank runs the same graph, and burn's backward walks a graph in an order fixed by its
//! shape, so the backward all-reduces meet in the same order on every rank. On a
//! non-autodiff backend (a momentum teacher, statistics that need no gradient) it is the
//! plain all-reduce. From it:
//!
//! - [`GlobalBatch::gather_rows`]: `[n, d]` per rank to `[W n, d]`, rank `r`'s rows at
//!   `r n .. (r + 1) n`: each rank pads its rows into its slot of zeros and the padded
//!   tensors are summed. Backward: each rank gets the sum over ranks of the gradients of
//!   its slot.
//! - SyncBatchNorm ([`crate::backbone::BatchNorm`] in train mode): `[sum x, sum x^2,
//!   count]` per channel summed over the ranks, while the loop has entered
//!   [`GlobalBatch::enter_batch_norm`].
//!
//! Methods reach it through [`crate::objectives::StepContext`] (`ctx.gather_rows(z)`,
//! `ctx.all_reduce_sum(t)`), which is the identity in a single process: single-process
//! results are bit for bit those of code that never gathers.
//!
//! # Why the gradient is exactly the single-process one
//!
//! Take `W` ranks with `B` samples each and a loss that is a mean over rows,
//! `L = 1/(W B) sum_i l_i(z_i; Z)`, where row `i`'s term depends on its own embedding and
//! on the gathered `Z` (all rows, or statistics of them). Rank `r` computes
//! `L_r = 1/B sum_{i in r} l_i` over its own rows against the gathered `Z`, so
//! `L = 1/W sum_r L_r`. Let `S = sum_r L_r`. Rank `r`'s embedding `z_j` (`j` in `r`) reaches
//! `S` through its own row (only rank `r` uses it as a row) and through its slot of `Z` on
//! every rank; the gather's backward hands rank `r` the sum over ranks of the gradients of
//! its slot, so autodiff on rank `r` computes `dS/dz_j` in full, and from it
//! `g_r = sum_{j in r} dS/dz_j dz_j/dtheta`: the part of `dS/dtheta` that passes through
//! rank `r`'s samples. Every path from `theta` to `S` passes through exactly one rank's
//! samples, so `sum_r g_r = dS/dtheta`, and the step's gradient exchange, which averages over
//! ranks, gives `1/W sum_r g_r = d(1/W S)/dtheta = dL/dtheta`: the gradient of one process
//! with batch `W B`. The same argument covers statistics summed over ranks (BatchNorm's
//! mean and variance): the statistic is a function of every rank's samples and its
//! all-reduce's backward collects every rank's `dL_r'/dstat` before each rank carries it
//! back through its own samples.
//!
//! A failed operation (a dead peer) leaves the local tensor in place of the sum and poisons
//! the collective: the step's gradient exchange then fails with that error before anything
//! touches the weights.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};

use super::{Collective, World};

/// The ranks of a data-parallel run, for operations over the global batch. Cheap to clone
/// (shared). See the module docs.
#[derive(Clone)]
pub struct GlobalBatch {
    reduce: Arc<dyn Reduce>,
    rank: usize,
    world_size: usize,
    sync_batch_norm: bool,
}

impl std::fmt::Debug for GlobalBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalBatch")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("sync_batch_norm", &self.sync_batch_norm)
            .finish()
    }
}

impl GlobalBatch {
    /// Over a joined collective of inner backend `I`: tensors of `I` and of `Autodiff<I>`
    /// (gradients flow) can be summed. `sync_batch_norm`: whether BatchNorm in train mode
    /// uses global statistics while [`GlobalBatch::enter_batch_norm`] is in effect.
    pub fn new<I: Backend>(
        collective: Arc<Collective<I>>,
        world: &World,
        sync_batch_norm: bool,
    ) -> Self {
        GlobalBatch {
            reduce: Arc::new(Reducer {
                collective,
                step: Arc::new(AtomicU64::new(0)),
            }),
            rank: world.rank as usize,
            world_size: world.world_size as usize,
            sync_batch_norm,
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Whether BatchNorm is synchronised over the ranks (`[train] sync_batch_norm`).
    pub fn syncs_batch_norm(&self) -> bool {
        self.sync_batch_norm
    }

    /// Names the optimiser step in the errors of later operations.
    pub fn set_step(&self, step: u64) {
        self.reduce.set_step(step);
    }

    /// The element-wise sum of `x` over the ranks; differentiable on the run's autodiff
    /// backend (the backward sums the upstream gradients over the ranks).
    ///
    /// # Shapes
    /// `x`: any shape, the same on every rank; returns that shape.
    ///
    /// # Panics
    /// When `B` is neither the run's autodiff backend nor its inner backend (a programming
    /// error: the run has no collective for it).
    pub fn all_reduce_sum<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let primitive: FloatTensor<B> = x.into_primitive().tensor();
        let summed = match self.reduce.sum(Box::new(primitive)) {
            Ok(summed) => summed.downcast::<FloatTensor<B>>().ok(),
            Err(_) => None,
        };
        match summed {
            Some(t) => Tensor::from_primitive(TensorPrimitive::Float(*t)),
            None => {
                panic!("a global-batch all-reduce on a backend the run's collective does not serve")
            }
        }
    }

    /// Every rank's rows, rank by rank: `[n, d]` here, `[W n, d]` out, this rank's rows at
    /// `rank n .. (rank + 1) n`. Differentiable: each rank's rows get the gradients that all
    /// ranks' losses send to them. Every rank must bring the same `n` (the loop's batches
    /// are equal).
    ///
    /// # Shapes
    /// `z`: `[n, d]`; returns `[world_size n, d]`.
    pub fn gather_rows<B: Backend>(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let [n, d] = z.dims();
        let (r, w) = (self.rank, self.world_size);
        let device = z.device();
        let mut slots = Vec::with_capacity(3);
        if r > 0 {
            slots.push(Tensor::zeros([r * n, d], &device)); // [r n, d]
        }
        slots.push(z);
        if r + 1 < w {
            slots.push(Tensor::zeros([(w - r - 1) * n, d], &device)); // [(w - r - 1) n, d]
        }
        // x + 0 is exact: the gathered rows are bit for bit each rank's.
        self.all_reduce_sum(Tensor::cat(slots, 0)) // [w n, d]
    }

    /// Makes BatchNorm in train mode use global statistics on this thread until the
    /// returned guard drops (when `[train] sync_batch_norm` is on; otherwise nothing).
    /// The loop enters it around each micro-batch's forward pass.
    pub fn enter_batch_norm(&self) -> BatchNormScope {
        let previous = if self.sync_batch_norm {
            SYNC_BATCH_NORM.with(|c| c.replace(Some(self.clone())))
        } else {
            SYNC_BATCH_NORM.with(|c| c.borrow().clone())
        };
        BatchNormScope { previous }
    }
}

thread_local! {
    /// The ranks BatchNorm synchronises over on this thread, while a step is inside
    /// [`GlobalBatch::enter_batch_norm`].
    static SYNC_BATCH_NORM: RefCell<Option<GlobalBatch>> = const { RefCell::new(None) };
}

/// The ranks that BatchNorm in train mode synchronises its statistics over right now on
/// this thread: `None` in a single process, outside a step, or with
/// `[train] sync_batch_norm = false`.
pub fn batch_norm_ranks() -> Option<GlobalBatch> {
    SYNC_BATCH_NORM.with(|c| c.borrow().clone())
}

/// Restores the previous BatchNorm synchronisation when dropped.
#[derive(Debug)]
#[must_use = "BatchNorm is synchronised only while the scope lives"]
pub struct BatchNormScope {
    previous: Option<GlobalBatch>,
}

impl Drop for BatchNormScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SYNC_BATCH_NORM.with(|c| *c.borrow_mut() = previous);
    }
}

/// The collective behind a [`GlobalBatch`], with its backend erased so that a
/// [`crate::objectives::StepContext`] needs no type parameter.
trait Reduce: Send + Sync {
    /// Sums a boxed `FloatTensor` of `Autodiff<I>` or of `I` over the ranks, boxed as it
    /// came; the box back when its type is neither.
    fn sum(&self, tensor: Box<dyn Any>) -> Result<Box<dyn Any>, Box<dyn Any>>;
    /// See [`GlobalBatch::set_step`].
    fn set_step(&self, step: u64);
}

/// [`Reduce`] over a collective of inner backend `I`; also the state of the backward op.
struct Reducer<I: Backend> {
    collective: Arc<Collective<I>>,
    step: Arc<AtomicU64>,
}

impl<I: Backend> Clone for Reducer<I> {
    fn clone(&self) -> Self {
        Reducer {
            collective: self.collective.clone(),
            step: self.step.clone(),
        }
    }
}

impl<I: Backend> std::fmt::Debug for Reducer<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reducer")
            .field("collective", &self.collective)
            .field("step", &self.step.load(Ordering::Relaxed))
            .finish()
    }
}

impl<I: Backend> Reducer<I> {
    /// The plain all-reduce of a primitive of any shape; the local tensor when the
    /// collective fails (the failure is kept in the collective and stops the step).
    fn sum_inner(&self, tensor: FloatTensor<I>, pass: &str) -> FloatTensor<I> {
        let shape = tensor.shape();
        let flat = I::float_reshape(tensor.clone(), Shape::new([shape.num_elements()]));
        let flat = Tensor::<I, 1>::from_primitive(TensorPrimitive::Float(flat));
        let what = format!(
            "a global-batch all-reduce ({pass}) of step {}",
            self.step.load(Ordering::Relaxed)
        );
        match self.collective.all_reduce_sum(flat, &what) {
            Ok(sum) => I::float_reshape(sum.into_primitive().tensor(), shape),
            Err(e) => {
                tracing::error!(error = %e, "global-batch all-reduce failed");
                tensor
            }
        }
    }

    /// The differentiable all-reduce on `Autodiff<I>`.
    fn sum_autodiff(&self, tensor: FloatTensor<Autodiff<I>>) -> FloatTensor<Autodiff<I>> {
        let summed = self.sum_inner(tensor.primitive.clone(), "forward");
        match AllReduceSum
            .prepare::<NoCheckpointing>([tensor.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(self.clone(), summed),
            OpsKind::UnTracked(prep) => prep.finish(summed),
        }
    }
}

impl<I: Backend> Reduce for Reducer<I> {
    fn sum(&self, tensor: Box<dyn Any>) -> Result<Box<dyn Any>, Box<dyn Any>> {
        let tensor = match tensor.downcast::<FloatTensor<Autodiff<I>>>() {
            Ok(t) => return Ok(Box::new(self.sum_autodiff(*t))),
            Err(other) => other,
        };
        match tensor.downcast::<FloatTensor<I>>() {
            Ok(t) => Ok(Box::new(self.sum_inner(*t, "no gradient"))),
            Err(other) => Err(other),
        }
    }

    fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }
}

/// The backward of the all-reduce-sum: the all-reduce-sum of the upstream gradient.
#[derive(Debug)]
struct AllReduceSum;

impl<I: Backend> Backward<I, 1> for AllReduceSum {
    type State = Reducer<I>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let reducer = ops.state;
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            reducer.sum_inner(grad, "backward")
        });
    }
}
