//! Errors that stop `tessera shard` as a whole. Bad *inputs* never do: they become
//! [`super::Reject`]s in the manifest. These are about the job itself: a missing input
//! root, a malformed labels file, an output directory we cannot write, a journal that
//! belongs to a different command.

use std::path::PathBuf;

use crate::ShardError;

/// Why a shard build could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An input named on the command line (directory, list, labels file) cannot be read.
    #[error("input {}", path.display())]
    Input {
        /// The input.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A line of the `--labels-csv` file is malformed.
    #[error("labels {} line {line}: {reason}", path.display())]
    LabelsCsv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },

    /// A line (a row of a Parquet list) of a `--urls` list is malformed, or the whole list.
    #[error("url list {}{}: {reason}", path.display(), line_of(*line))]
    UrlList {
        /// The list file.
        path: PathBuf,
        /// 1-based line (Parquet: row) number; 0 when the whole file is at fault.
        line: usize,
        /// What is wrong.
        reason: String,
    },

    /// Creating, writing or cleaning the output directory failed.
    #[error("output {}", path.display())]
    Output {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Writing or indexing a shard failed.
    #[error(transparent)]
    Shard(#[from] ShardError),

    /// A progress journal that does not parse.
    #[error("journal {}", path.display())]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// The output directory holds shards of this prefix made by a different command
    /// (other inputs or options), which a resume would mix with this one.
    #[error(
        "{} was written by a different `tessera shard` command ({what} differs); \
         use another --out or --prefix, or delete the old shards",
        path.display()
    )]
    ForeignShards {
        /// The journal that does not match.
        path: PathBuf,
        /// What differs.
        what: &'static str,
    },

    /// Options that contradict each other or are out of range.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option, as spelled on the command line.
        option: &'static str,
        /// What is wrong and what would be right.
        reason: String,
    },

    /// A worker thread died (a bug: decoders' panics are caught per input).
    #[error("a shard worker thread panicked")]
    WorkerPanicked,
}

/// ` line N` for [`BuildError::UrlList`], nothing for line 0 (the whole file).
fn line_of(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" line {line}")
    }
}
