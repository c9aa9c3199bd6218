//! The trainer's error type: what went wrong, with the file, key or shape it concerns.

use std::path::PathBuf;

/// Everything the trainer core can fail at. Variants carry the path, key or shape involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `[model]` or `[train]` section of a recipe does not parse or is out of range.
    #[error("invalid [{section}] config: key `{key}`: {message}")]
    Config {
        /// The recipe section (`model` or `train`).
        section: &'static str,
        /// The offending key, dotted (`train.batch_size`), or `-` when the whole table is wrong.
        key: String,
        /// What is wrong and what would be right.
        message: String,
    },
    /// A TOML table could not be deserialised (unknown key, wrong type); `source` names the key.
    #[error("invalid [{section}] config")]
    ConfigParse {
        /// The recipe section (`model` or `train`).
        section: &'static str,
        /// The deserialiser's error, which names the key and the expected type.
        #[source]
        source: toml::de::Error,
    },
    /// A batch tensor has a shape the model cannot take.
    #[error("{what}: expected shape {expected:?}, got {actual:?}")]
    Shape {
        /// Which input (`images`, `ids_keep`, ...).
        what: &'static str,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape it was given.
        actual: Vec<usize>,
    },
    /// Reading or writing a file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done (`writing`, `renaming`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A burn record (model or optimiser state) could not be encoded or decoded.
    #[error("burn record {path}: {message}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// burn's message (`RecorderError` carries only a string).
        message: String,
    },
    /// A checkpoint's `state.json` could not be encoded or decoded.
    #[error("checkpoint state {path}")]
    State {
        /// The state file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A checkpoint file is not what the checkpoint's `state.json` records: missing,
    /// truncated or changed since it was saved.
    #[error("checkpoint file {path} is damaged: {damage}")]
    DamagedCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        damage: crate::checkpoint::Damage,
    },
    /// Writing a checkpoint failed (a full disk); its partial copy was removed and the
    /// earlier checkpoints are as they were.
    #[error("could not write checkpoint {path} (earlier checkpoints are untouched)")]
    SaveCheckpoint {
        /// The checkpoint directory it would have been.
        path: PathBuf,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// Resuming found checkpoints but none that verifies.
    #[error("no checkpoint of {path} is intact (the newest is {newest})")]
    NoIntactCheckpoint {
        /// The run directory.
        path: PathBuf,
        /// The newest checkpoint.
        newest: PathBuf,
        /// What is wrong with the newest.
        #[source]
        source: Box<Error>,
    },
    /// A directory given as a checkpoint holds no complete checkpoint.
    #[error("no complete checkpoint in {path}")]
    NoCheckpoint {
        /// The run or checkpoint directory searched.
        path: PathBuf,
    },
    /// A checkpoint was written by a run whose model or schedule differs from this one.
    #[error("checkpoint {path} does not match this run: {what}")]
    CheckpointMismatch {
        /// The checkpoint directory.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// An optimiser's saved state does not fit the model or the update rule it is loaded into.
    #[error("optimiser state of parameter `{param}`: {what}")]
    OptimState {
        /// The parameter's dotted name, or its id when the model has no such parameter
        /// (`-` when the whole record is wrong).
        param: String,
        /// What does not fit.
        what: String,
    },
    /// Writing or reading a safetensors file failed.
    #[error("safetensors {path}")]
    Safetensors {
        /// The safetensors file.
        path: PathBuf,
        /// The safetensors error.
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A saved feature queue's write pointer is not one of its rows.
    #[error("feature queue pointer {pointer} is outside its {capacity} rows")]
    QueuePointer {
        /// The saved pointer.
        pointer: usize,
        /// The number of rows in the saved queue.
        capacity: usize,
    },
    /// A timm state dict (safetensors) does not fit the model it is loaded into.
    #[error("timm weights {path}: `{key}`: {problem}")]
    TimmWeights {
        /// The safetensors file (or a label for weights built in memory).
        path: PathBuf,
        /// The timm key concerned (the first one, when several are).
        key: String,
        /// What is wrong with it.
        problem: TimmProblem,
    },
    /// A picture of the run could not be drawn or written.
    #[error("picture")]
    Picture(#[from] crate::pictures::PictureError),
    /// A tensor could not be read back from the device as `f32`.
    #[error("reading tensor `{name}` from the device: {message}")]
    TensorData {
        /// The parameter name (timm naming for export).
        name: String,
        /// burn's message.
        message: String,
    },
}

/// What is wrong with one key of a timm state dict, for [`Error::TimmWeights`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimmProblem {
    /// The model has this parameter but the file does not.
    #[error("missing from the file ({others} other keys missing too)")]
    Missing {
        /// How many further keys are missing.
        others: usize,
    },
    /// The file has this key but the model has no such parameter.
    #[error("not a parameter of the model ({others} other unexpected keys)")]
    Unexpected {
        /// How many further keys are unexpected.
        others: usize,
    },
    /// Both have the key, with different shapes (PyTorch layout).
    #[error("shape {actual:?} in the file, the model needs {expected:?}")]
    Shape {
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// The tensor's dtype is not a float type we read (f32, f16, bf16).
    #[error("dtype {dtype} (expected F32, F16 or BF16)")]
    Dtype {
        /// safetensors' name of the dtype.
        dtype: String,
    },
    /// The number of values does not match the shape.
    #[error("{values} values for shape {shape:?}")]
    Length {
        /// The declared shape.
        shape: Vec<usize>,
        /// The values given.
        values: usize,
    },
}

/// Shorthand for results of the trainer core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn config(
        section: &'static str,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Error {
        Error::Config {
            section,
            key: key.into(),
            message: message.into(),
        }
    }
}
