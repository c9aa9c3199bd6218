//! A local cache of whole remote shards, least recently used evicted beyond a size cap.
//!
//! A multi-epoch run reads every shard once per epoch; with a cache the first epoch's
//! streams also write each shard into `DIR/<sha256 of the URL>.shard` (through a temporary
//! name, renamed only once the whole object has arrived), and later opens read the local
//! file. Each hit refreshes the file's modification time; after each new file the oldest
//! files are removed until the total is under [`CacheOptions::max_bytes`]. Shards are
//! assumed immutable once written (what `tessera shard` produces): the cache does not
//! revalidate against the store. A failure to write the cache only loses the cache entry
//! (logged), never the read.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// Where the cache lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheOptions {
    /// The cache directory (created when missing).
    pub dir: PathBuf,
    /// Bytes the cached shards may take together; a shard larger than this is not cached.
    pub max_bytes: u64,
}

const SUFFIX: &str = ".shard";

fn entry_path(dir: &Path, url: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(url.as_bytes()));
    dir.join(format!("{digest}{SUFFIX}"))
}

/// The cached copy of `url`, if the cache is configured and holds it (counts a hit or a
/// miss, and marks the entry as just used).
pub fn lookup(url: &str) -> Option<PathBuf> {
    let options = super::options().cache?;
    let path = entry_path(&options.dir, url);
    let hit = path.is_file();
    super::count_cache(hit);
    if !hit {
        return None;
    }
    if let Ok(file) = File::options().append(true).open(&path) {
        let _ = file.set_modified(SystemTime::now());
    }
    Some(path)
}

/// A shard being copied into the cache while it streams.
#[derive(Debug)]
pub(crate) struct CacheFill {
    temp: PathBuf,
    path: PathBuf,
    file: Option<File>,
    written: u64,
    options: CacheOptions,
}

/// Start caching `url` (when a cache is configured).
pub(crate) fn begin_fill(url: &str) -> Option<CacheFill> {
    let options = super::options().cache?;
    if let Err(e) = fs::create_dir_all(&options.dir) {
        tracing::warn!("shard cache {}: {e}; not caching", options.dir.display());
        return None;
    }
    let path = entry_path(&options.dir, url);
    static FILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = FILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let file = match File::create(&temp) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!("shard cache {}: {e}; not caching", temp.display());
            return None;
        }
    };
    Some(CacheFill {
        temp,
        path,
        file: Some(file),
        written: 0,
        options,
    })
}

impl CacheFill {
    /// Append the next bytes of the shard.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        self.written += bytes.len() as u64;
        if self.written > self.options.max_bytes {
            self.abandon();
            return;
        }
        if let Some(file) = self.file.as_mut()
            && let Err(e) = file.write_all(bytes)
        {
            tracing::warn!("shard cache {}: {e}; not caching", self.temp.display());
            self.abandon();
        }
    }

    fn abandon(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }

    /// The whole object (`size` bytes) has been written: publish it and evict.
    pub(crate) fn finish(mut self, size: u64) {
        let Some(file) = self.file.take() else { return };
        if self.written != size {
            let _ = fs::remove_file(&self.temp);
            return;
        }
        let published = file
            .sync_all()
            .and_then(|()| fs::rename(&self.temp, &self.path));
        if let Err(e) = published {
            tracing::warn!("shard cache {}: {e}; not caching", self.path.display());
            let _ = fs::remove_file(&self.temp);
            return;
        }
        evict(&self.options.dir, self.options.max_bytes);
    }
}

impl Drop for CacheFill {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Remove the least recently used entries until the cache holds at most `max_bytes`.
pub fn evict(dir: &Path, max_bytes: u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(SUFFIX))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let path = dir.path().join(format!("{name}{SUFFIX}"));
            fs::write(&path, vec![0u8; 100]).unwrap();
            let age = std::time::Duration::from_secs(100 - 10 * i as u64);
            File::options()
                .append(true)
                .open(&path)
                .unwrap()
                .set_modified(now - age)
                .unwrap();
        }
        // `a` is the oldest, but is used again: `b` goes first.
        File::options()
            .append(true)
            .open(dir.path().join(format!("a{SUFFIX}")))
            .unwrap()
            .set_modified(now)
            .unwrap();
        evict(dir.path(), 200);
        let left: Vec<bool> = ["a", "b", "c"]
            .iter()
            .map(|n| dir.path().join(format!("{n}{SUFFIX}")).exists())
            .collect();
        assert_eq!(left, [true, false, true]);
    }
}
