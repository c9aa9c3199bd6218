//! Data-parallel training: one process per device, gradients averaged with burn-collective.
//!
//! - [`World`]: rank, world size and master address from torchrun's or Slurm's environment
//!   (or flags);
//! - [`Collective`]: burn-collective's all-reduce, behind a timeout, so that a dead rank
//!   stops the others with an error instead of a hang;
//! - [`StepSync`]: the one exchange per optimiser step (mean gradients, mean loss, stop and
//!   checkpoint requests, every rank's pipeline position for the checkpoint);
//! - [`GlobalBatch`]: sums and gathers over the ranks inside the forward and backward passes
//!   (contrastive negatives, batch statistics, SyncBatchNorm), differentiable, on the same
//!   collective.
//!
//! Each rank reads its own shards (the pipeline's rank split), so the global batch is
//! `batch_size x world_size` and the learning-rate rule uses it. Rank 0 writes the run
//! directory; every rank's pipeline position is in its checkpoint.

mod collective;
mod global;
mod sync;
mod world;

pub use collective::{Collective, CollectiveError};
pub use global::{BatchNormScope, GlobalBatch, batch_norm_ranks};
pub use sync::{Agreed, Contribution, StepSync};
pub use world::{DEFAULT_PORT, Master, World, WorldError, first_host};
