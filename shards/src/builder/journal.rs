//! The progress journal that makes `tessera shard` resumable after any kill.
//!
//! After a shard is renamed into place and indexed, a small record is written (atomically)
//! to `OUT/.tessera-shard/<shard file name>.json`: which inputs the shard consumed
//! (`first_input..end_input` in the part's sorted list), what it holds, the content hashes
//! it kept (so de-duplication continues identically) and the rejects and duplicates met
//! on the way. A shard without its record is not finished: a rerun rewrites it. Records
//! carry a fingerprint of the command (inputs and every option that changes the output),
//! so a rerun never mixes shards of two different commands.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::BuildError;
use super::reject::RejectReason;
use crate::atomic::AtomicFile;

/// The hidden directory, inside the output directory, holding the records.
pub const JOURNAL_DIR: &str = ".tessera-shard";

/// A rejected input as reported in records, the manifest and `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectRecord {
    /// The input's source path (relative to its input root).
    pub path: String,
    /// The category.
    pub reason: RejectReason,
    /// What exactly went wrong.
    pub detail: String,
}

/// An input whose bytes equal an earlier input's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DuplicateRecord {
    /// The duplicate (not written).
    pub path: String,
    /// The earlier input that was written.
    pub duplicate_of: String,
}

/// What one finished shard holds and consumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRecord {
    /// Fingerprint of the command that wrote it ([`fingerprint`]).
    pub plan: String,
    /// The shard's file name.
    pub shard: String,
    /// Shard number within this part.
    pub number: u64,
    /// First input (position in the part's list) this shard consumed.
    pub first_input: usize,
    /// One past the last input it consumed.
    pub end_input: usize,
    /// Samples written.
    pub samples: u64,
    /// Size of the shard file.
    pub bytes: u64,
    /// sha256 of the shard file.
    pub sha256: String,
    /// Bytes of input read for this shard (originals, before any resize).
    pub input_bytes: u64,
    /// `[input position, sha256 of its bytes]` of every sample written, for de-duplication.
    pub kept: Vec<(usize, String)>,
    /// Inputs rejected among `first_input..end_input`.
    pub rejects: Vec<RejectRecord>,
    /// Duplicates skipped among `first_input..end_input`.
    pub duplicates: Vec<DuplicateRecord>,
}

/// The record file of shard `shard_name` in `out`.
pub fn record_path(out: &Path, shard_name: &str) -> PathBuf {
    out.join(JOURNAL_DIR).join(format!("{shard_name}.json"))
}

impl ShardRecord {
    /// Write the record atomically.
    pub fn write(&self, out: &Path) -> Result<(), BuildError> {
        let path = record_path(out, &self.shard);
        let dir = out.join(JOURNAL_DIR);
        fs::create_dir_all(&dir).map_err(|source| BuildError::Output { path: dir, source })?;
        let mut file = AtomicFile::create(&path)?;
        let json = serde_json::to_vec(self).map_err(|source| BuildError::Journal {
            path: path.clone(),
            source,
        })?;
        file.write_all(&json).map_err(|source| BuildError::Output {
            path: path.clone(),
            source,
        })?;
        file.commit()?;
        Ok(())
    }

    /// The record of shard `shard_name`, if one was written.
    pub fn read(out: &Path, shard_name: &str) -> Result<Option<ShardRecord>, BuildError> {
        let path = record_path(out, shard_name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| BuildError::Journal { path, source }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BuildError::Output { path, source }),
        }
    }
}

/// Hex sha256 over `parts`, each length-prefixed so no two lists collide.
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let record = ShardRecord {
            plan: fingerprint([b"a".as_slice(), b"b"]),
            shard: "x-000000.tar".into(),
            number: 0,
            first_input: 0,
            end_input: 3,
            samples: 2,
            bytes: 10240,
            sha256: "00".into(),
            input_bytes: 5,
            kept: vec![(0, "ab".into()), (2, "cd".into())],
            rejects: vec![RejectRecord {
                path: "b.jpg".into(),
                reason: RejectReason::Empty,
                detail: "zero".into(),
            }],
            duplicates: vec![],
        };
        record.write(dir.path()).unwrap();
        assert_eq!(
            ShardRecord::read(dir.path(), "x-000000.tar").unwrap(),
            Some(record)
        );
        assert_eq!(ShardRecord::read(dir.path(), "x-000001.tar").unwrap(), None);
        assert_ne!(
            fingerprint([b"ab".as_slice(), b""]),
            fingerprint([b"a".as_slice(), b"b"])
        );
    }
}
