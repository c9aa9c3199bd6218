//! Building into an object store: `tessera shard --out s3://bucket/prefix`.
//!
//! The build runs as on local disk, in a local staging directory, and each finished shard
//! is published in the order that keeps the store consistent at every instant:
//! 1. the shard (one `PUT`, or a multipart upload for large ones: the store shows an
//!    object only once it is whole);
//! 2. its index (`.idx`);
//! 3. its journal record, `PREFIX/.tessera-shard/<shard>.json` (the journal lives beside
//!    the output, in the store);
//!
//! and the local copies of the shard and index are removed. The manifest (and
//! `classes.json`) go last. On a rerun the store's journal is the truth: the staging
//! journal is replaced by the records found in the store, a recorded shard counts as done
//! only if the store holds it at its recorded size, and the build resumes after the last
//! such shard, exactly as a local build resumes. A kill between two steps leaves at worst
//! a shard without its record, which the rerun writes again under the same name with the
//! same bytes: no sample is lost or written twice.

use std::fs;
use std::path::Path;

use super::error::BuildError;
use super::journal::JOURNAL_DIR;
use crate::ShardError;
use crate::atomic::AtomicFile;
use crate::index::index_path;
use crate::remote;

/// Where a build publishes: an object-store URL prefix.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    prefix: String,
}

impl Publisher {
    /// Publish under `url` (`s3://bucket/prefix`, `gs://...`, `az://...`).
    pub(crate) fn new(url: &str) -> Result<Publisher, BuildError> {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        if scheme.starts_with("http") || !remote::SCHEMES.contains(&scheme) {
            return Err(BuildError::InvalidOption {
                option: "--out",
                reason: format!(
                    "`{url}`: shards can be written to s3://, gs:// or az:// (HTTP servers \
                     are read-only)"
                ),
            });
        }
        Ok(Publisher {
            prefix: url.trim_end_matches('/').to_string(),
        })
    }

    /// The URL of `name` under the prefix.
    pub(crate) fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// Replace the staging journal in `out` with the records held by the store.
    pub(crate) fn pull_journal(&self, out: &Path) -> Result<(), BuildError> {
        let local = out.join(JOURNAL_DIR);
        if local.exists() {
            fs::remove_dir_all(&local).map_err(|source| BuildError::Output {
                path: local.clone(),
                source,
            })?;
        }
        fs::create_dir_all(&local).map_err(|source| BuildError::Output {
            path: local.clone(),
            source,
        })?;
        for url in remote::list::list_prefix(&self.url(JOURNAL_DIR))? {
            let Some(name) = url.rsplit('/').next().filter(|n| n.ends_with(".json")) else {
                continue;
            };
            let Some(bytes) = remote::stream::fetch_small(&url)? else {
                continue;
            };
            let path = local.join(name);
            let mut file = AtomicFile::create(&path)?;
            std::io::Write::write_all(&mut file, &bytes)
                .map_err(|e| ShardError::io(path.display(), e))?;
            file.commit()?;
        }
        Ok(())
    }

    /// Does the store hold shard `name` at `bytes` bytes?
    pub(crate) fn holds(&self, name: &str, bytes: u64) -> Result<bool, BuildError> {
        match remote::stream::size_of(&self.url(name)) {
            Ok(size) => Ok(size == bytes),
            Err(ShardError::Remote {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Upload a finished shard, then its index, and remove the local copies.
    pub(crate) fn publish_shard(&self, out: &Path, name: &str) -> Result<(), BuildError> {
        let shard = out.join(name);
        remote::upload::upload_file(&shard, &self.url(name))?;
        let index = index_path(&shard);
        if index.exists() {
            let index_name = format!("{name}.idx");
            remote::upload::upload_file(&index, &self.url(&index_name))?;
            let _ = fs::remove_file(&index);
        }
        let _ = fs::remove_file(&shard);
        Ok(())
    }

    /// Upload the staging file `out/relative` to the same relative name in the store.
    pub(crate) fn publish_file(&self, out: &Path, relative: &str) -> Result<(), BuildError> {
        remote::upload::upload_file(&out.join(relative), &self.url(relative))?;
        Ok(())
    }
}
