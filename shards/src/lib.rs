//! The WebDataset shard format, owned end to end by Tessera.
//!
//! A shard is a POSIX tar archive (optionally gzip- or zstd-compressed as a whole) whose
//! members are grouped into samples by key: `dir/key.ext` → sample `dir/key`, field `ext`.
//!
//! # Parts
//! - [`reader::ShardReader`] reads [`Sample`]s from any byte stream: plain, gzip or zstd
//!   (detected from the magic bytes), grouping members exactly as the WebDataset reference
//!   does, and filling a caller-owned `Sample` in place ([`reader::ShardReader::read_into`]).
//!   [`tar`] is the strict streaming tar layer below it (checksums, PAX `path`/`size`, GNU
//!   long names).
//! - [`writer::ShardFileWriter`] writes one shard deterministically and atomically;
//!   [`writer::ShardWriter`] rotates over `{prefix}-{000000}.tar[.zst|.gz]` by count or size.
//!   [`compression::Compression`] chooses the compression; [`atomic::AtomicFile`] is the
//!   temp-name/fsync/rename discipline shared by everything that writes files.
//! - [`index::ShardIndex`] (`<shard>.idx`) lets a reader start at sample N without scanning
//!   ([`reader::ShardReader::open_at`]); zstd shards we write are frame-per-sample so that
//!   seeking works on the compressed file.
//! - [`source::resolve`] turns a shard spec (paths, globs, `{000..146}` ranges, `{a,b}` lists,
//!   `::` joins, `@list` files) into an ordered list of paths.
//! - [`builder`] builds shards from raw image collections (behind `tessera shard`).
//! - [`remote`] reads shards from object stores and HTTP servers (`s3://`, `gs://`,
//!   `az://`, `http(s)://`) with retries, resumed streams and an optional cache, and
//!   uploads built shards to them.
//!
//! Every failure is a typed [`ShardError`] naming the shard and, for damaged data, the byte
//! offset in the tar stream.
//!
//! # Example
//! ```
//! use tessera_shards::compression::Compression;
//! use tessera_shards::reader::ShardReader;
//! use tessera_shards::writer::ShardFileWriter;
//! use tessera_shards::Sample;
//!
//! # fn main() -> Result<(), tessera_shards::ShardError> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("train-000000.tar.zst");
//! let mut writer = ShardFileWriter::create(&path, Compression::ZSTD)?.with_index(true);
//! writer.write_sample("cats/0001", &[("jpg", b"\xff\xd8..."), ("cls", b"3")])?;
//! writer.write_sample("cats/0002", &[("jpg", b"\xff\xd8..."), ("cls", b"3")])?;
//! let info = writer.finish()?; // now, and only now, the shard exists
//! assert_eq!(info.samples, 2);
//!
//! let mut reader = ShardReader::open_at(&path, 1)?; // seeks with the index
//! let mut sample = Sample::default(); // reused: no allocation per sample
//! while reader.read_into(&mut sample)? {
//!     assert_eq!(sample.key, "cats/0002");
//!     assert_eq!(sample.field("cls"), Some(&b"3"[..]));
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Not here
//! - No async API for reading samples: readers are blocking `std::io` and are meant to run
//!   on dedicated threads (the pipeline wraps them); only [`remote::RemoteStream`] offers
//!   remote bytes to async code.
//! - No member-level decompression (`x.txt.gz` fields stay compressed bytes) and no
//!   decoding of images: fields are bytes.
//!
//! Why our own tar code: the async tar crates carry CVE-2025-62518 (PAX `size=` ignored,
//! letting one member smuggle others), and WebDataset needs only a small, strict subset.

#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod atomic;
pub mod builder;
pub mod compression;
pub mod error;
pub mod index;
pub mod reader;
pub mod remote;
pub mod sample;
pub mod source;
pub mod tar;
pub mod writer;

pub use error::ShardError;
pub use sample::Sample;
