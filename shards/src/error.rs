//! Typed errors of the shard format.
//!
//! Every variant names the shard (its URL or path) and, where it applies, the byte offset
//! in the *decompressed* tar stream, the sample key and the field, so a user can find the
//! damage with `dd`/`tar tv` and a caller can decide per variant what to do (skip the rest
//! of a shard, fall back from a stale index, report a missing file).

use std::path::PathBuf;

/// Everything that can go wrong reading, writing, indexing or listing shards.
///
/// `Send + Sync + 'static`, so it travels across threads and into `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// An I/O error opening, reading, writing or renaming a file.
    #[error("{url}")]
    Io {
        /// The shard or file concerned.
        url: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The stream ended in the middle of a tar header or member (a cut download, a full
    /// disk). Every complete sample before `offset` has been returned.
    #[error("{url}: truncated at byte {offset} of the tar stream ({what})")]
    Truncated {
        /// The shard.
        url: String,
        /// Offset in the decompressed tar stream where the damaged header or member starts.
        offset: u64,
        /// What was being read when the data ran out.
        what: String,
    },

    /// A tar header that does not parse: bad checksum, bad number, bad PAX record.
    #[error("{url}: malformed tar header at byte {offset}: {reason}")]
    MalformedHeader {
        /// The shard.
        url: String,
        /// Offset in the decompressed tar stream of the bad 512-byte header block.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// The gzip or zstd layer reported corrupt data.
    #[error("{url}: corrupt {compression} stream near byte {offset} of the tar stream")]
    Decompress {
        /// The shard.
        url: String,
        /// The compression format (`gzip`, `zstd`).
        compression: &'static str,
        /// How many decompressed bytes had been read when it failed.
        offset: u64,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },

    /// Two members of one sample have the same extension (`k.jpg` twice in a row).
    #[error("{url}: sample `{key}` has field `{field}` twice (member at byte {offset})")]
    DuplicateField {
        /// The shard.
        url: String,
        /// The sample key.
        key: String,
        /// The repeated field (extension).
        field: String,
        /// Offset of the second member's header.
        offset: u64,
    },

    /// A key the writer refuses because it would not read back as the same key.
    #[error("invalid sample key `{key}`: {reason}")]
    InvalidKey {
        /// The offending key.
        key: String,
        /// Why it cannot be written.
        reason: &'static str,
    },

    /// A field name the writer refuses because it would not read back unchanged.
    #[error("sample `{key}`: invalid field name `{field}`: {reason}")]
    InvalidField {
        /// The sample key.
        key: String,
        /// The offending field name.
        field: String,
        /// Why it cannot be written.
        reason: &'static str,
    },

    /// A compression spec that is not `none`, `gzip[:level]` or `zstd[:level]`.
    #[error("unknown compression `{spec}`: expected none, gzip[:0-9] or zstd[:1-22]")]
    UnknownCompression {
        /// What was given.
        spec: String,
    },

    /// An index file that cannot be read or parsed.
    #[error("index {}: line {line}: {reason}", path.display())]
    IndexFormat {
        /// The index file.
        path: PathBuf,
        /// 1-based line number (0 for the file as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },

    /// An index that does not describe its shard (the shard changed after indexing).
    #[error("index {} does not match its shard: {reason}", path.display())]
    IndexMismatch {
        /// The index file.
        path: PathBuf,
        /// What differs.
        reason: String,
    },

    /// A request to start at a sample the shard does not have.
    #[error("{url}: sample {index} requested but the shard has {samples} samples")]
    SampleOutOfRange {
        /// The shard.
        url: String,
        /// The requested sample index.
        index: u64,
        /// How many samples the shard has.
        samples: u64,
    },

    /// A shard list pattern that does not parse (unbalanced braces, bad range).
    #[error("shard pattern `{pattern}`: {reason}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        reason: String,
    },

    /// A glob that matched nothing.
    #[error("shard pattern `{pattern}` matched no files")]
    NoMatch {
        /// The glob.
        pattern: String,
    },

    /// Shards named explicitly (or by a range or list file) that do not exist.
    #[error("{} shard(s) missing: {}", paths.len(), display_paths(paths))]
    Missing {
        /// Every missing path, in list order.
        paths: Vec<PathBuf>,
    },

    /// A URL scheme this build does not read (`ftp://`, ...).
    #[error(
        "unsupported shard url `{url}`: expected a path or an s3://, gs://, az://, http:// or https:// url"
    )]
    UnsupportedUrl {
        /// The URL.
        url: String,
    },

    /// A remote URL that does not parse or names no bucket or host.
    #[error("shard url `{url}`: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// A request to an object store or HTTP server failed for good: a definite answer
    /// (not found, denied) or transient faults beyond the retry budget.
    #[error("{url}: {action}: {hint} (after {attempts} attempt(s))")]
    Remote {
        /// The object concerned.
        url: String,
        /// What was being done (`reading`, `listing`, `uploading`, ...).
        action: &'static str,
        /// Attempts made, the first included.
        attempts: u32,
        /// The likely cause in the user's terms (missing bucket, wrong credentials, ...).
        hint: String,
        /// The store client's error.
        #[source]
        source: object_store::Error,
    },

    /// A remote object whose body kept ending (or stalling) before its size, beyond the
    /// retry budget. Every byte before `offset` was delivered once.
    #[error(
        "{url}: the shard ended early: byte {offset} of {size} reached, {attempts} resume(s) failed in a row (last: {reason})"
    )]
    EndedEarly {
        /// The object.
        url: String,
        /// Bytes delivered.
        offset: u64,
        /// The object's size.
        size: u64,
        /// Failed attempts in a row.
        attempts: u32,
        /// The last fault.
        reason: String,
    },
}

impl ShardError {
    /// Shorthand for [`ShardError::Io`].
    pub(crate) fn io(url: impl std::fmt::Display, source: std::io::Error) -> Self {
        ShardError::Io {
            url: url.to_string(),
            source,
        }
    }
}

/// Shows an error and its causes, `error: cause: root cause`, as `anyhow`'s `{:#}` does.
///
/// The error types of this workspace keep a cause out of their own message (it is their
/// [`source`](std::error::Error::source), so a chain printer shows it once); a log line or
/// report that holds a single error as text uses this to show the whole story.
///
/// ```
/// use tessera_shards::error::Chain;
/// let error = tessera_shards::ShardError::Io {
///     url: "shard-000000.tar".into(),
///     source: std::io::Error::from_raw_os_error(28),
/// };
/// assert!(Chain(&error).to_string().starts_with("shard-000000.tar: No space left on device"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    const SHOWN: usize = 5;
    let mut s: Vec<String> = paths
        .iter()
        .take(SHOWN)
        .map(|p| p.display().to_string())
        .collect();
    if paths.len() > SHOWN {
        s.push(format!("and {} more", paths.len() - SHOWN));
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static() {
        fn assert_bounds<T: Send + Sync + 'static>() {}
        assert_bounds::<ShardError>();
    }

    #[test]
    fn missing_lists_paths() {
        let e = ShardError::Missing {
            paths: vec!["a.tar".into(), "b.tar".into()],
        };
        assert_eq!(e.to_string(), "2 shard(s) missing: a.tar, b.tar");
    }

    /// Issue 14: a full disk printed "No space left on device (os error 28)" twice, since
    /// `Display` repeated the source that `source()` also returns and `{:#}` prints both.
    #[test]
    fn the_cause_is_printed_once_in_a_chain() {
        let full = || std::io::Error::from_raw_os_error(28);
        let os = full().to_string();
        let errors: Vec<Box<dyn std::error::Error + 'static>> = vec![
            Box::new(ShardError::io("out/shard-000000.tar", full())),
            Box::new(ShardError::Decompress {
                url: "a.tar.zst".into(),
                compression: "zstd",
                offset: 7,
                source: full(),
            }),
            Box::new(crate::builder::BuildError::Shard(ShardError::io(
                "out/shard-000000.tar",
                full(),
            ))),
            Box::new(crate::builder::BuildError::Output {
                path: "out".into(),
                source: full(),
            }),
            Box::new(crate::builder::BuildError::Input {
                path: "in".into(),
                source: full(),
            }),
        ];
        for error in &errors {
            let chain = Chain(error.as_ref()).to_string();
            assert_eq!(chain.matches(&os).count(), 1, "{chain}");
            assert!(!error.to_string().contains(&os), "{error}");
        }
        // A real ENOSPC where the machine has /dev/full.
        if let Ok(mut dev_full) = std::fs::OpenOptions::new().write(true).open("/dev/full") {
            use std::io::Write;
            let source = dev_full
                .write_all(&[0; 4096])
                .and_then(|()| dev_full.flush())
                .unwrap_err();
            let error = ShardError::io("/dev/full", source);
            let chain = Chain(&error).to_string();
            assert_eq!(chain, format!("/dev/full: {os}"));
        }
    }
}
