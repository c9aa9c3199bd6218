//! What the pipeline hands to the trainer.

use crate::pool::PooledBuffer;
use crate::state::PipelineState;

/// One batch: a u8 tensor per view, optional masks, labels and keys.
///
/// Pixel data stay u8 (N, H, W, C=3); normalisation happens on the trainer's device.
/// Buffers come from a pool and go back to it when the batch is dropped.
#[derive(Debug)]
pub struct Batch {
    /// One entry per view of the recipe, in recipe order.
    pub views: Vec<ViewBatch>,
    /// Masks for the views that have them (same order as `views`; `None` where a view has none).
    pub masks: Vec<Option<MaskBatch>>,
    /// Class label per sample, `-1` where the sample has none.
    pub labels: Vec<i64>,
    /// `__key__` of each sample.
    pub keys: Vec<String>,
    /// The pipeline's state just after the last sample of this batch.
    pub state: PipelineState,
}

/// The pixels of one view for a whole batch: `len` samples of `height x width x 3` u8.
#[derive(Debug)]
pub struct ViewBatch {
    pub data: PooledBuffer,
    pub len: usize,
    pub height: usize,
    pub width: usize,
}

/// Patch masks for one view, `len` samples of `num_patches` each (row-major patch grid).
#[derive(Debug, Clone)]
pub struct MaskBatch {
    pub len: usize,
    pub num_patches: usize,
    /// 1 = masked (hidden from the encoder / to be predicted), 0 = visible. `len * num_patches`.
    pub mask: Vec<u8>,
    /// MAE only: indices of the visible patches, `len * num_keep`, ascending within a sample.
    pub ids_keep: Vec<u32>,
    /// MAE only: `len * num_patches`; position of each patch in the (keep ++ masked) order,
    /// as in the official MAE code (`ids_restore = argsort(ids_shuffle)`).
    pub ids_restore: Vec<u32>,
    /// MAE only: number of visible patches per sample (0 for other mask kinds).
    pub num_keep: usize,
}
