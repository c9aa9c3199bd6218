//! Integration tests of `tessera_shards`, built as one test binary.
//!
//! - `reference`: the reader against shards written by other tools, with manifests of what
//!   the WebDataset reference reader returns (`shared/testdata`).
//! - `writer`: round trips, determinism, atomicity, rotation, compressions.
//! - `index`: seeking with an index equals scanning, for every compression.
//! - `source`: shard list patterns.
//! - `steady_state`: no allocation per sample (installs a counting global allocator).
//! - `properties`: proptest round trips of arbitrary samples (issue 14).

mod util;

mod index;
mod properties;
mod reference;
mod source;
mod steady_state;
mod writer;
