//! Checkpoint integrity: the size and SHA-256 of every record file, written into
//! `state.json` when a checkpoint is saved and checked before a checkpoint is trusted.
//!
//! ```text
//! state.json  { "step": …, "pipeline": …, "rng": …, "config": …,
//!               "files": { "model.mpk":  { "bytes": 1183744, "sha256": "9f2c…" },
//!                          "optim.mpk":  { … }, "method.mpk": { … } } }
//! ```
//!
//! [`verify`] reads `state.json` (a truncated one does not parse) and checks each listed
//! file's size, then its digest; the loaders check the bytes they decode against the same
//! record, so a damaged file never reaches burn, whose decode errors on damaged bytes are
//! misleading (they speak of a record format change since burn 0.14). [`newest`] walks a
//! run's complete checkpoints newest first and returns the first that verifies, with the
//! newer ones it passed over and why, so `--resume` falls back to the newest intact one.
//!
//! Checkpoints written before digests were recorded have no `files`: they are checked for
//! the presence of their files only.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{METHOD_FILE, MODEL_FILE, OPTIM_FILE, STATE_FILE, TrainerState, step_dirs};
use crate::error::{Error, Result};

/// Size and SHA-256 of one checkpoint file, as `state.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, lowercase hex.
    pub sha256: String,
}

impl FileDigest {
    /// The digest of `contents`.
    pub fn of(contents: &[u8]) -> Self {
        FileDigest {
            bytes: contents.len() as u64,
            sha256: hex::encode(Sha256::digest(contents)),
        }
    }
}

/// The digests of a checkpoint's files, by file name.
pub type Digests = BTreeMap<String, FileDigest>;

/// What is wrong with one file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The file is not there.
    #[error("missing")]
    Missing,
    /// The file's length differs from the recorded one.
    #[error("{actual} bytes where state.json records {expected} (truncated or incomplete)")]
    Size {
        /// The recorded length.
        expected: u64,
        /// The length on disk.
        actual: u64,
    },
    /// Same length, other bytes.
    #[error("its SHA-256 is not the one state.json records (the bytes changed after saving)")]
    Checksum,
    /// `state.json` records digests, but none for this file (its list was damaged).
    #[error("state.json records no digest for it (its list of files is damaged)")]
    Unrecorded,
}

/// A checkpoint [`newest`] passed over, and why.
#[derive(Debug)]
pub struct Skipped {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// What is wrong with it (names the file).
    pub error: Error,
}

/// The newest checkpoint of a run that verifies, and the newer ones that did not.
#[derive(Debug, Default)]
pub struct Newest {
    /// The checkpoint to use; `None` when the run has no checkpoint that verifies.
    pub dir: Option<PathBuf>,
    /// Complete checkpoints newer than `dir` that failed verification, newest first.
    pub skipped: Vec<Skipped>,
}

/// The newest complete checkpoint of the run in `run_dir` that verifies. Each newer one
/// that does not is logged (a warning naming the file and what is wrong) and listed in
/// [`Newest::skipped`]. Partial (`.tmp-`) directories are ignored.
pub fn newest(run_dir: &Path) -> Result<Newest> {
    let mut found = step_dirs(&run_dir.join(super::CHECKPOINTS_DIR))?;
    let mut skipped = Vec::new();
    while let Some((_, dir)) = found.pop() {
        match verify(&dir) {
            Ok(_) => {
                return Ok(Newest {
                    dir: Some(dir),
                    skipped,
                });
            }
            Err(error) => {
                tracing::warn!(
                    "checkpoint {} skipped: {}",
                    dir.display(),
                    tessera_shards::error::Chain(&error)
                );
                skipped.push(Skipped { dir, error });
            }
        }
    }
    Ok(Newest { dir: None, skipped })
}

/// Checks the checkpoint in `dir`: `state.json` parses and every file it lists has the
/// recorded size and SHA-256. Returns the parsed state.
pub fn verify(dir: &Path) -> Result<TrainerState> {
    let (state, digests) = read_state(dir)?;
    match digests {
        Some(digests) => {
            // Every record must be listed: `load` refuses a record without its digest.
            if let Some(name) = [MODEL_FILE, OPTIM_FILE, METHOD_FILE]
                .into_iter()
                .find(|name| !digests.contains_key(*name))
            {
                return Err(damaged(dir.join(name), Damage::Unrecorded));
            }
            for (name, digest) in &digests {
                check_file(&dir.join(name), digest)?;
            }
        }
        None => {
            for name in [MODEL_FILE, OPTIM_FILE, METHOD_FILE] {
                let path = dir.join(name);
                if !path.is_file() {
                    return Err(damaged(path, Damage::Missing));
                }
            }
        }
    }
    Ok(state)
}

/// `state.json` of the checkpoint in `dir` and its digests (`None` for a checkpoint
/// written before digests were recorded).
pub(super) fn read_state(dir: &Path) -> Result<(TrainerState, Option<Digests>)> {
    /// The digest part of `state.json` (the rest is [`TrainerState`]).
    #[derive(Deserialize)]
    struct Files {
        files: Option<Digests>,
    }
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(damaged(path, Damage::Missing));
        }
        Err(e) => return Err(Error::io("reading", path)(e)),
    };
    let parse = |source| Error::State {
        path: path.clone(),
        source,
    };
    let state = serde_json::from_slice(&bytes).map_err(parse)?;
    let Files { files } = serde_json::from_slice(&bytes).map_err(parse)?;
    Ok((state, files))
}

/// Reads the file `name` of the checkpoint in `dir` and checks it against `digests`
/// (when the checkpoint has them). The bytes returned are the ones checked.
pub(super) fn read_verified(dir: &Path, name: &str, digests: Option<&Digests>) -> Result<Vec<u8>> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(damaged(path, Damage::Missing));
        }
        Err(e) => return Err(Error::io("reading", path)(e)),
    };
    if let Some(digests) = digests {
        let Some(expected) = digests.get(name) else {
            return Err(damaged(path, Damage::Unrecorded));
        };
        let actual = FileDigest::of(&bytes);
        if actual.bytes != expected.bytes {
            let damage = Damage::Size {
                expected: expected.bytes,
                actual: actual.bytes,
            };
            return Err(damaged(path, damage));
        }
        if actual.sha256 != expected.sha256 {
            return Err(damaged(path, Damage::Checksum));
        }
    }
    Ok(bytes)
}

/// Size first (cheap, catches truncation), then the digest, streamed.
fn check_file(path: &Path, expected: &FileDigest) -> Result<()> {
    let actual = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(damaged(path.to_path_buf(), Damage::Missing));
        }
        Err(e) => return Err(Error::io("reading", path)(e)),
    };
    if actual != expected.bytes {
        let damage = Damage::Size {
            expected: expected.bytes,
            actual,
        };
        return Err(damaged(path.to_path_buf(), damage));
    }
    let mut hasher = Sha256::new();
    File::open(path)
        .and_then(|mut file| std::io::copy(&mut file, &mut hasher))
        .map_err(Error::io("reading", path))?;
    if hex::encode(hasher.finalize()) != expected.sha256 {
        return Err(damaged(path.to_path_buf(), Damage::Checksum));
    }
    Ok(())
}

fn damaged(path: PathBuf, damage: Damage) -> Error {
    Error::DamagedCheckpoint { path, damage }
}
