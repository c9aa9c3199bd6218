//! One module per subcommand: its `Args` (clap) and its `run`.

pub mod index;
pub mod inspect;
pub mod preview;
pub mod profile;
pub mod remote;
pub mod shard;

#[cfg(feature = "train")]
pub mod attention;
#[cfg(feature = "train")]
pub mod demo;
#[cfg(feature = "train")]
pub mod eval;
#[cfg(feature = "train")]
pub mod export;
#[cfg(feature = "train")]
pub mod launch;
#[cfg(feature = "train")]
pub mod malloc;
#[cfg(feature = "train")]
pub mod report;
#[cfg(feature = "train")]
pub mod threads;
#[cfg(feature = "train")]
pub mod train;
