//! The WebDataset shard format, owned end to end by Tessera.
//!
//! A shard is a POSIX tar archive (optionally gzip- or zstd-compressed as a whole) whose
//! members are grouped into samples by key: `dir/key.ext` → sample `dir/key`, field `ext`.
//! This crate reads such shards from any byte stream ([`reader`]), writes them atomically
//! ([`writer`]), keeps a small per-shard [`index`] for seeking, resolves shard lists
//! ([`source`]), and builds shards from raw image collections ([`builder`], behind
//! `tessera shard`).
//!
//! Why our own tar code: the async tar crates carry CVE-2025-62518 (PAX `size=` ignored,
//! letting one member smuggle others), and WebDataset needs only a small, strict subset.

pub mod builder;
pub mod compression;
pub mod error;
pub mod index;
pub mod reader;
pub mod sample;
pub mod source;
pub mod tar;
pub mod writer;

pub use error::ShardError;
pub use sample::Sample;
