//! Building shards from raw image collections (`tessera shard`): the img2dataset of local
//! collections, for uncurated data where a share of the files is broken.
//!
//! - [`inputs`]: directories and list files → one sorted input list, labels, `--part I/N`.
//! - [`prepare`]: one file → sniffed, verified (fully decoded), optionally resized bytes,
//!   or a [`Reject`] with a fixed [`RejectReason`].
//! - [`ordered`]: worker threads whose results are consumed in input order.
//! - [`build`]: resume, de-duplicate, write shards ([`crate::writer`]) and the
//!   [`manifest`]; the workers' side is in `process`, file naming and clean-up in `names`.
//! - [`journal`]: per-shard records that make a killed build resumable.
//! - [`publish`]: building into an object store (`--out s3://...`): shard, index, record,
//!   in that order, with the journal in the store.
//! - [`sample_meta`]: each sample's `.json` (source path, size, format, transform).
//!
//! - [`url_list`] and [`fetch`]: URL lists as inputs (`--urls`): parsed, downloaded with
//!   bounded concurrency, per-host limits, retries and img2dataset's opt-out rules.
//!
//! Not done here: near-duplicate detection (only exact
//! byte equality), colour management (ICC profiles are kept in original bytes, ignored on
//! re-encode).

pub mod build;
pub mod error;
pub mod fetch;
pub mod inputs;
pub mod journal;
pub mod manifest;
mod names;
pub mod ordered;
pub mod prepare;
mod process;
pub mod publish;
pub mod reject;
pub mod sample_meta;
pub mod url_list;

pub use build::{BuildOptions, NoProgress, Progress, build};
pub use error::BuildError;
pub use inputs::{InputSpec, LabelSource, Part};
pub use manifest::Manifest;
pub use prepare::{ImageKind, PrepareOptions, Prepared, Preparer};
pub use reject::{Reject, RejectReason};
