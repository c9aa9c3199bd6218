//! File names of one build: shards, their indexes and records, the manifest, and the
//! temporary files of a killed run, so a rerun can clean up exactly what is its own (and
//! never another part's, which may be writing into the same directory).

use std::fs;
use std::path::Path;

use super::build::BuildOptions;
use super::error::BuildError;
use super::inputs::Part;
use super::journal::JOURNAL_DIR;

/// Shard, manifest and temporary-file names of this build.
pub(super) struct ShardNames {
    /// `{prefix}` or `{prefix}-part{I}`.
    base: String,
    extension: &'static str,
    part: Part,
}

impl ShardNames {
    pub(super) fn new(options: &BuildOptions) -> Self {
        let base = if options.part.count > 1 {
            let width = options.part.count.to_string().len().max(3);
            format!("{}-part{:0width$}", options.prefix, options.part.index)
        } else {
            options.prefix.clone()
        };
        ShardNames {
            base,
            extension: options.compression.extension(),
            part: options.part,
        }
    }

    pub(super) fn name(&self, number: u64) -> String {
        format!("{}-{number:06}{}", self.base, self.extension)
    }

    pub(super) fn manifest_name(&self) -> String {
        if self.part.count > 1 {
            format!("manifest-part{}.json", self.part.index)
        } else {
            "manifest.json".to_string()
        }
    }

    /// The shard number of `file_name` if it is one of ours (shard or index).
    pub(super) fn number_of(&self, file_name: &str) -> Option<u64> {
        let rest = file_name.strip_prefix(&self.base)?.strip_prefix('-')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let tail = &rest[digits..];
        let tail = tail.strip_suffix(".idx").unwrap_or(tail);
        (digits >= 6 && tail == self.extension)
            .then(|| rest[..digits].parse().ok())
            .flatten()
    }

    /// Remove our shards, indexes and records numbered `from` and up, and every temporary
    /// file a killed run may have left (`.{name}.tmp-{pid}`).
    pub(super) fn remove_from(&self, out: &Path, from: u64) -> Result<(), BuildError> {
        let journal = out.join(JOURNAL_DIR);
        for dir in [out, journal.as_path()] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // Temporary files are `.{final name}.tmp-{pid}`.
                let (temporary, final_name) = match name.strip_prefix('.') {
                    Some(hidden) => match hidden.split_once(".tmp-") {
                        Some((final_name, _)) => (true, final_name),
                        None => continue,
                    },
                    None => (false, name.as_str()),
                };
                let shard_name = if dir == journal {
                    final_name.strip_suffix(".json")
                } else {
                    Some(final_name)
                };
                let number = shard_name.and_then(|n| self.number_of(n));
                let stale = if temporary {
                    number.is_some() || (dir == out && final_name == self.manifest_name())
                } else {
                    number.is_some_and(|n| n >= from)
                };
                if stale {
                    let path = entry.path();
                    tracing::debug!(path = %path.display(), "removing leftover of an interrupted run");
                    fs::remove_file(&path).map_err(|source| BuildError::Output { path, source })?;
                }
            }
        }
        Ok(())
    }
}
