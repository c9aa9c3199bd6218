//! The pipeline's position: a few integers from which the exact sample stream continues.

use serde::{Deserialize, Serialize};

/// Where a pipeline is in its stream. Saved in checkpoints; `Loader::resume` continues
/// from it, seeking with the shard indexes instead of re-reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineState {
    pub seed: u64,
    pub epoch: u64,
    pub rank: u32,
    pub world_size: u32,
    /// Samples this rank has delivered in batches during `epoch` (rejected samples included:
    /// they are consumed positions of the stream).
    pub samples_consumed: u64,
}
