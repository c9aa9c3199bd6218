//! End-to-end tests through the `tessera` program. One test binary (faster to link);
//! each module covers one subcommand.
//!
//! - `util`: temp dirs, the program's path, `../shared` test data.
//! - `shard`, `inspect`: `tessera shard`, `index`, `inspect` (issue #2).
//! - `pipeline`: `tessera profile`, `preview` (issue #3).
//! - `train`: `tessera train`, `export`, `demo` (issue #4).
//! - `eval`: `tessera eval`, kNN and linear probe of a checkpoint (trainer issue #4).
//! - `methods`: the joint-embedding methods through `train`, `eval`, `export` (issue #9).
//! - `reliability`: special input files, a full disk, signals, damaged checkpoints (issue #14).

mod util;

#[cfg(feature = "train")]
mod distributed;
mod eval;
mod inspect;
#[cfg(feature = "train")]
mod methods;
mod pipeline;
#[cfg(all(feature = "train", unix))]
mod reliability;
mod shard;
#[cfg(feature = "train")]
mod train;
