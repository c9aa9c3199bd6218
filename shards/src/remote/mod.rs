//! Shards in object stores and over HTTP: `s3://`, `gs://`, `az://`, `http(s)://`.
//!
//! A remote shard travels through the rest of the system as a [`std::path::Path`] whose
//! text is its URL (`s3://bucket/train-000000.tar`), so shard lists, orders and resume
//! states do not care where bytes come from; [`url_of`] tells the two apart, and the
//! openers ([`crate::reader::ShardReader::open`], [`crate::index::ShardIndex::load_for`],
//! [`source::resolve`](crate::source::resolve)) dispatch on it.
//!
//! # Parts
//! - [`store`]: one `object_store` client per bucket or host, built from the standard
//!   environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`; `AWS_ENDPOINT_URL` for S3-compatible
//!   servers), driven by a small runtime of this module's own, and [`store::retrying`]: every
//!   request retried with exponential backoff on timeouts, resets and 5xx, and never on a
//!   definite answer (404, 403, 401).
//! - [`stream::RemoteStream`]: one shard read as a stream of chunks from a byte offset, with
//!   bounded read-ahead, resuming a broken or stalled body with a ranged GET at the byte
//!   it reached (guarded by the object's ETag, so a changed object is an error, not a
//!   splice). [`stream::RemoteRead`] is the same as a blocking [`std::io::Read`].
//! - [`list`]: remote globs (by listing) and explicit names (by `HEAD`, concurrently).
//! - [`cache`]: an optional local cache of whole shards, least recently used evicted
//!   beyond a size cap, for multi-epoch runs.
//! - [`upload`]: writing objects (multipart for large ones) for `tessera shard --out s3://`.
//!
//! [`RemoteOptions`] (set once by the program with [`configure`]) holds the knobs;
//! [`stats`] counts bytes, requests, retries, resumes and the time readers waited on the
//! network, which `tessera profile` reports as a stage.
//!
//! # Not here
//! Writing shards in place on a store (the builder writes locally, then uploads whole
//! shards), listing HTTP servers (name HTTP shards with brace ranges), `tessera index` on
//! remote shards (index before uploading, or shard with `--out s3://...`, which does).

pub mod cache;
pub mod list;
pub mod store;
pub mod stream;
pub mod upload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

/// The chunks a [`RemoteStream`] hands out.
pub use bytes::Bytes;
pub use stream::{RemoteRead, RemoteStream};

/// URL schemes read through `object_store`.
pub const SCHEMES: &[&str] = &["s3", "gs", "az", "azure", "abfs", "abfss", "http", "https"];

/// How remote shards are read and written; [`configure`] sets them for the process.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Attempts after the first for one request or one broken stream before giving up
    /// (default 8; 0 fails on the first fault; large values wait out long outages, each
    /// wait doubling up to [`RemoteOptions::max_backoff`]).
    pub retries: u32,
    /// First wait before a retry (default 100 ms); each next wait doubles.
    pub backoff: Duration,
    /// Longest wait between retries (default 5 s).
    pub max_backoff: Duration,
    /// A request or a body that delivers nothing for this long is abandoned and resumed
    /// (default 30 s; too small cuts slow but healthy links, too large waits out dead ones).
    pub stall_timeout: Duration,
    /// Time to open a connection (default 10 s).
    pub connect_timeout: Duration,
    /// Bytes one shard stream may hold ahead of its reader (default 8 MiB, at least one
    /// chunk): the read-ahead bound. The pipeline's own bounded chunk queue comes on top.
    pub read_ahead_bytes: usize,
    /// Requests in flight for listing and `HEAD`s (default 16).
    pub concurrency: usize,
    /// Parts in flight for one multipart upload (default 4).
    pub upload_concurrency: usize,
    /// Objects at least this large are uploaded in parts (default 16 MiB, part size 8 MiB).
    pub multipart_threshold: u64,
    /// Local cache of whole shards, if any.
    pub cache: Option<cache::CacheOptions>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            retries: 8,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            read_ahead_bytes: 8 << 20,
            concurrency: 16,
            upload_concurrency: 4,
            multipart_threshold: 16 << 20,
            cache: None,
        }
    }
}

impl RemoteOptions {
    /// The wait before retry number `attempt` (1-based): `backoff · 2^(attempt-1)`, capped.
    pub fn backoff_for(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

fn options_cell() -> &'static RwLock<RemoteOptions> {
    static OPTIONS: OnceLock<RwLock<RemoteOptions>> = OnceLock::new();
    OPTIONS.get_or_init(|| RwLock::new(RemoteOptions::default()))
}

/// Set the options for every remote read and write that starts after this call.
pub fn configure(options: RemoteOptions) {
    match options_cell().write() {
        Ok(mut guard) => *guard = options,
        Err(poisoned) => *poisoned.into_inner() = options,
    }
}

/// The options in force.
pub fn options() -> RemoteOptions {
    match options_cell().read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// The URL text of a remote shard location, `None` for a local path.
pub fn url_of(path: &Path) -> Option<&str> {
    let text = path.to_str()?;
    is_url(text).then_some(text)
}

/// Does `spec` start with `scheme://` (any scheme, known or not)?
pub fn is_url(spec: &str) -> bool {
    spec.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// A remote location as the path type the shard lists carry.
pub fn as_path(url: &str) -> PathBuf {
    PathBuf::from(url)
}

/// Process-wide counters of remote I/O (monotonic; take two snapshots for a rate).
#[derive(Debug, Default)]
struct Counters {
    bytes: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    resumes: AtomicU64,
    waited_ns: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    uploaded_bytes: AtomicU64,
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(Counters::default)
}

/// What remote I/O has done so far in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RemoteStats {
    /// Body bytes received from stores and servers.
    pub bytes: u64,
    /// Requests sent (`GET`, `HEAD`, `LIST`, `PUT`, parts), retries included.
    pub requests: u64,
    /// Requests repeated after a timeout, reset or 5xx.
    pub retries: u64,
    /// Bodies that broke or stalled and were resumed at the byte they reached.
    pub resumes: u64,
    /// Nanoseconds readers spent waiting for bytes that had not arrived yet.
    pub waited_ns: u64,
    /// Shards opened from the local cache.
    pub cache_hits: u64,
    /// Shards fetched while a cache was configured.
    pub cache_misses: u64,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
}

impl RemoteStats {
    /// Faults survived: retries plus resumes.
    pub fn faults(&self) -> u64 {
        self.retries + self.resumes
    }

    /// The counts since `earlier`.
    pub fn since(&self, earlier: &RemoteStats) -> RemoteStats {
        RemoteStats {
            bytes: self.bytes - earlier.bytes,
            requests: self.requests - earlier.requests,
            retries: self.retries - earlier.retries,
            resumes: self.resumes - earlier.resumes,
            waited_ns: self.waited_ns - earlier.waited_ns,
            cache_hits: self.cache_hits - earlier.cache_hits,
            cache_misses: self.cache_misses - earlier.cache_misses,
            uploaded_bytes: self.uploaded_bytes - earlier.uploaded_bytes,
        }
    }
}

/// A snapshot of the process-wide remote I/O counters.
pub fn stats() -> RemoteStats {
    let c = counters();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    RemoteStats {
        bytes: get(&c.bytes),
        requests: get(&c.requests),
        retries: get(&c.retries),
        resumes: get(&c.resumes),
        waited_ns: get(&c.waited_ns),
        cache_hits: get(&c.cache_hits),
        cache_misses: get(&c.cache_misses),
        uploaded_bytes: get(&c.uploaded_bytes),
    }
}

pub(crate) fn count_bytes(n: u64) {
    counters().bytes.fetch_add(n, Ordering::Relaxed);
}
pub(crate) fn count_request() {
    counters().requests.fetch_add(1, Ordering::Relaxed);
}
pub(crate) fn count_retry() {
    counters().retries.fetch_add(1, Ordering::Relaxed);
}
pub(crate) fn count_resume() {
    counters().resumes.fetch_add(1, Ordering::Relaxed);
}
pub(crate) fn count_wait(d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    counters().waited_ns.fetch_add(ns, Ordering::Relaxed);
}
pub(crate) fn count_cache(hit: bool) {
    let c = counters();
    if hit { &c.cache_hits } else { &c.cache_misses }.fetch_add(1, Ordering::Relaxed);
}
pub(crate) fn count_upload(n: u64) {
    counters().uploaded_bytes.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_urls_from_paths() {
        assert!(is_url("s3://b/k.tar"));
        assert!(is_url("https://h:8080/a/{0..3}.tar"));
        assert!(!is_url("data/train-000000.tar"));
        assert!(!is_url("/abs/a://b"));
        assert_eq!(url_of(Path::new("gs://b/x.tar")), Some("gs://b/x.tar"));
        assert_eq!(url_of(Path::new("x.tar")), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let o = RemoteOptions::default();
        assert_eq!(o.backoff_for(1), Duration::from_millis(100));
        assert_eq!(o.backoff_for(2), Duration::from_millis(200));
        assert_eq!(o.backoff_for(4), Duration::from_millis(800));
        assert_eq!(o.backoff_for(30), Duration::from_secs(5));
    }
}
