//! The streaming graph from shards to training batches.
//!
//! ```text
//! shard list ─► order (seed, epoch, rank, worker) ─► reader (tokio) ─► shuffle buffer
//!   ─► CPU workers: decode ─► views (crop, resize, flip, colour, ...) ─► masks
//!   ─► collator: each view written into its slot of a pooled u8 batch ─► bounded queue
//! ```
//! Every arrow is a bounded queue and every stage keeps [`stats`], which is all
//! `tessera profile` needs to name the bottleneck. A sample's randomness is a pure
//! function of (seed, epoch, sample identity), so worker count and timing never change
//! what a sample becomes; [`state::PipelineState`] is a few integers from which the exact
//! stream continues.

pub mod batch;
pub mod decode;
pub mod error;
pub mod loader;
pub mod masks;
pub mod order;
pub mod pool;
pub mod preview;
pub mod profile;
pub mod recipe;
pub mod rng;
pub mod state;
pub mod stats;
pub mod transforms;

pub use batch::{Batch, Keys, KeysIter, MaskBatch, ViewBatch};
pub use error::PipelineError;
pub use recipe::Recipe;
pub use state::PipelineState;
