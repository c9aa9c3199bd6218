//! End-to-end tests through the `tessera` program. One test binary (faster to link);
//! each module covers one subcommand.
//!
//! - `util`: temp dirs, the program's path, `../shared` test data.
//! - `shard`, `inspect`: `tessera shard`, `index`, `inspect` (issue #2).
//! - `pipeline`: `tessera profile`, `preview` (issue #3).
//! - `train`: `tessera train`, `export`, `demo` (issue #4).
//! - `eval`: `tessera eval`, kNN and linear probe of a checkpoint (trainer issue #4).
//! - `methods`: the joint-embedding methods through `train`, `eval`, `export` (issue #9).
//! - `masked`: SimMIM, data2vec, MSN through `train` and `eval` (issue #10).

mod util;

#[cfg(feature = "train")]
mod eval;
mod inspect;
#[cfg(feature = "train")]
mod masked;
#[cfg(feature = "train")]
mod methods;
mod pipeline;
mod shard;
#[cfg(feature = "train")]
mod train;
