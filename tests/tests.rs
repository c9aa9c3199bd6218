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
//! - `dino`: DINO and iBOT through `train`, `eval`, `attention` (issue #10).
//! - `swav`: SwAV's multi-crop training, evaluation and exact resume (issue #10).
//! - `report`: TensorBoard event files, `tessera report`, `--json` (issue #15).
//! - `remote`, `remote_net`: shards over HTTP and in an S3-compatible store, through a
//!   fault-injecting proxy; the servers (issue #12).
//! - `masked`: SimMIM, data2vec, MSN through `train` and `eval` (issue #10).
//! - `reliability_inputs`: inputs that change while read, unreadable, very deep or very
//!   many (issue #14).

mod util;

#[cfg(feature = "train")]
mod dino;
#[cfg(feature = "train")]
mod distributed;
#[cfg(feature = "train")]
mod eval;
mod inspect;
#[cfg(feature = "train")]
mod masked;
#[cfg(feature = "train")]
mod methods;
mod pipeline;
#[cfg(all(feature = "train", unix))]
mod reliability;
#[cfg(unix)]
mod reliability_inputs;
mod remote;
mod remote_net;
#[cfg(feature = "train")]
mod report;
mod shard;
#[cfg(feature = "train")]
mod swav;
#[cfg(feature = "train")]
mod train;
