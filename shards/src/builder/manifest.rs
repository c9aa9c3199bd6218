//! `manifest.json` (`manifest-part{I}.json` with `--part`): what a build produced, read by
//! people and by tooling. Everything but `throughput` is a pure function of the inputs
//! and options (a resumed build reports the same shards, rejects and duplicates).

use std::collections::BTreeMap;

use serde::Serialize;

use super::journal::{DuplicateRecord, RejectRecord};
use super::reject::RejectReason;

/// One shard in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSummary {
    /// File name, relative to the output directory.
    pub path: String,
    /// Samples.
    pub samples: u64,
    /// File size.
    pub bytes: u64,
    /// sha256 of the file.
    pub sha256: String,
}

/// How fast this run went (work done by earlier, killed runs not counted).
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Wall-clock seconds of this run.
    pub seconds: f64,
    /// Inputs consumed by this run.
    pub inputs: u64,
    /// Input bytes read by this run.
    pub input_bytes: u64,
    /// Inputs per second.
    pub images_per_s: f64,
    /// Input megabytes (10^6) per second.
    pub mb_per_s: f64,
}

/// `manifest.json` (or `manifest-part{I}.json`): what the build produced.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// Always `tessera-shard-manifest`.
    pub format: &'static str,
    /// This part, `I/N`.
    pub part: String,
    /// Inputs in this part.
    pub inputs: u64,
    /// Samples written.
    pub samples: u64,
    /// Every shard, in order.
    pub shards: Vec<ShardSummary>,
    /// Class names by index, when labels are names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// The seed the inputs were shuffled with (`--shuffle`); absent: sorted order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shuffle_seed: Option<u64>,
    /// Every rejected input.
    pub rejected: Vec<RejectRecord>,
    /// Rejects per category.
    pub rejected_by_reason: BTreeMap<RejectReason, u64>,
    /// Every skipped duplicate.
    pub duplicates: Vec<DuplicateRecord>,
    /// Shards found complete from an earlier run and kept.
    pub resumed_shards: u64,
    /// Speed of this run.
    pub throughput: Throughput,
}
