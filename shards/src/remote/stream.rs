//! One remote shard as a stream of chunks, resumed at the byte it reached when it breaks.
//!
//! ```text
//! pump task (remote runtime) ──chunks (bounded: read-ahead)──► RemoteStream / RemoteRead
//!   GET [offset..] ─► body ─► 1 MiB chunks          (async next_chunk / blocking Read)
//!   body error, stall, early end ─► GET [reached..] with If-Match: first ETag
//! ```
//! The pump keeps at most [`RemoteOptions::read_ahead_bytes`] in the channel; when the
//! reader is slower it stops reading the body (TCP back-pressure), and a connection the
//! server drops meanwhile is just one more resume. A body that delivers nothing for
//! [`RemoteOptions::stall_timeout`] is abandoned and resumed. Bytes are delivered once
//! and in order: a resumed body starts exactly at the first byte not yet delivered, and
//! the ETag guard turns an object replaced mid-read into an error instead of a splice.
//! Faults in a row beyond [`RemoteOptions::retries`] end the stream with the error
//! ([`ShardError::EndedEarly`] when the body kept ending before the object's size).
//!
//! [`RemoteOptions::read_ahead_bytes`]: super::RemoteOptions::read_ahead_bytes
//! [`RemoteOptions::stall_timeout`]: super::RemoteOptions::stall_timeout
//! [`RemoteOptions::retries`]: super::RemoteOptions::retries

use std::io::Read;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStoreExt};
use tokio::sync::mpsc;

use super::cache::{self, CacheFill};
use super::store::{self, ObjectUrl};
use crate::ShardError;

/// Size of the chunks handed to the reader.
const CHUNK: usize = 1 << 20;

/// A remote object read from a byte offset as chunks (see the module docs).
#[derive(Debug)]
pub struct RemoteStream {
    url: String,
    chunks: mpsc::Receiver<Result<Bytes, ShardError>>,
    pump: tokio::task::JoinHandle<()>,
    /// The pump also fills the cache: let it finish the object when the reader stops early
    /// (a tar reader stops at the end-of-archive blocks, before the file's padding).
    caching: bool,
}

impl Drop for RemoteStream {
    fn drop(&mut self) {
        if !self.caching {
            self.pump.abort();
        }
    }
}

impl RemoteStream {
    /// Start reading `url` at byte `offset`. Returns at once; the first request runs in
    /// the background and its failure arrives as the first chunk's error. With a cache
    /// configured and `offset == 0`, a full read also fills the cache.
    pub fn open(url: &str, offset: u64) -> Result<RemoteStream, ShardError> {
        let object = ObjectUrl::parse(url)?;
        let options = super::options();
        let depth = (options.read_ahead_bytes / CHUNK).max(1);
        let (tx, chunks) = mpsc::channel(depth);
        let fill = if offset == 0 {
            cache::begin_fill(url)
        } else {
            None
        };
        let caching = fill.is_some();
        let pump = store::runtime().spawn(pump(object, offset, tx, fill));
        Ok(RemoteStream {
            url: url.to_string(),
            chunks,
            pump,
            caching,
        })
    }

    /// The URL being read.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The next chunk, `None` at the end of the object.
    ///
    /// # Cancel safety
    /// Cancel safe: a chunk is taken from the channel only when the future completes.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ShardError> {
        let started = Instant::now();
        let next = self.chunks.recv().await;
        super::count_wait(started.elapsed());
        next.transpose()
    }

    /// [`RemoteStream::next_chunk`] for a thread outside any async runtime.
    pub fn blocking_next_chunk(&mut self) -> Result<Option<Bytes>, ShardError> {
        let started = Instant::now();
        let next = self.chunks.blocking_recv();
        super::count_wait(started.elapsed());
        next.transpose()
    }
}

/// Read the object into `tx` from `offset`, resuming broken bodies (see the module docs).
async fn pump(
    object: ObjectUrl,
    mut offset: u64,
    tx: mpsc::Sender<Result<Bytes, ShardError>>,
    mut fill: Option<CacheFill>,
) {
    let options = super::options();
    let mut etag: Option<String> = None;
    let mut size: Option<u64> = None;
    let mut pending = BytesMut::with_capacity(CHUNK);
    // Faults since the last byte arrived: progress earns a fresh budget.
    let mut faults = 0u32;
    loop {
        if size.is_some_and(|size| offset >= size) {
            break;
        }
        let get_options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            if_match: etag.clone(),
            ..GetOptions::default()
        };
        let opened = store::retrying(&object, "reading", || {
            object.store.get_opts(&object.key, get_options.clone())
        })
        .await;
        let result = match opened {
            Ok(result) => result,
            Err(error) => {
                let _ = tx.send(Err(error)).await;
                return;
            }
        };
        if etag.is_none() {
            etag = result.meta.e_tag.clone();
        }
        size = Some(result.meta.size);
        let mut body = result.into_stream();
        let mut progressed = false;
        let fault = loop {
            match tokio::time::timeout(options.stall_timeout, body.next()).await {
                Ok(Some(Ok(bytes))) => {
                    offset += bytes.len() as u64;
                    super::count_bytes(bytes.len() as u64);
                    progressed = true;
                    pending.extend_from_slice(&bytes);
                    if pending.len() >= CHUNK {
                        let chunk = pending.split().freeze();
                        if let Some(f) = fill.as_mut() {
                            f.write(&chunk);
                        }
                        // The reader went away: stop, unless the cache wants the rest.
                        if tx.send(Ok(chunk)).await.is_err() && fill.is_none() {
                            return;
                        }
                    }
                }
                Ok(None) if size.is_some_and(|size| offset >= size) => break None,
                Ok(None) => break Some(format!("the body ended at byte {offset}")),
                Ok(Some(Err(e))) => break Some(crate::error::Chain(&e).to_string()),
                Err(_) => break Some(format!("no data for {:?}", options.stall_timeout)),
            }
        };
        let Some(why) = fault else { break };
        if progressed {
            faults = 0;
        }
        faults += 1;
        if faults > options.retries {
            let error = ShardError::EndedEarly {
                url: object.url.clone(),
                offset,
                size: size.unwrap_or(0),
                attempts: faults,
                reason: why,
            };
            let _ = tx.send(Err(error)).await;
            return;
        }
        super::count_resume();
        tracing::debug!(
            "{}: stream broke at byte {offset} ({why}); resuming",
            object.url
        );
        tokio::time::sleep(options.backoff_for(faults)).await;
    }
    if !pending.is_empty() {
        let chunk = pending.split().freeze();
        if let Some(f) = fill.as_mut() {
            f.write(&chunk);
        }
        let _ = tx.send(Ok(chunk)).await;
    }
    if let Some(f) = fill {
        f.finish(offset);
    }
}

/// A remote object as a blocking [`Read`] (for reader threads; never call it from an
/// async task).
#[derive(Debug)]
pub struct RemoteRead {
    stream: RemoteStream,
    current: Bytes,
    ended: bool,
}

impl RemoteRead {
    /// Read `url` from byte `offset` (see [`RemoteStream::open`]).
    pub fn open(url: &str, offset: u64) -> Result<RemoteRead, ShardError> {
        Ok(RemoteRead {
            stream: RemoteStream::open(url, offset)?,
            current: Bytes::new(),
            ended: false,
        })
    }
}

impl Read for RemoteRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.stream.blocking_next_chunk() {
                Ok(Some(chunk)) => self.current = chunk,
                Ok(None) => self.ended = true,
                Err(e) => {
                    self.ended = true;
                    return Err(std::io::Error::other(e));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Open a shard for blocking reads from `offset`: from the local cache when it holds the
/// whole shard, otherwise from the store.
pub fn open_read(url: &str, offset: u64) -> Result<Box<dyn Read + Send>, ShardError> {
    if let Some(path) = cache::lookup(url) {
        let mut file = std::fs::File::open(&path).map_err(|e| ShardError::io(url, e))?;
        if offset > 0 {
            use std::io::Seek;
            file.seek(std::io::SeekFrom::Start(offset))
                .map_err(|e| ShardError::io(url, e))?;
        }
        return Ok(Box::new(file));
    }
    Ok(Box::new(RemoteRead::open(url, offset)?))
}

/// Fetch a small object whole (an index, a manifest); `None` when it does not exist.
pub fn fetch_small(url: &str) -> Result<Option<Bytes>, ShardError> {
    let object = ObjectUrl::parse(url)?;
    let fetched = store::block_on(async {
        store::retrying(&object, "reading", || async {
            object
                .store
                .get_opts(&object.key, GetOptions::default())
                .await?
                .bytes()
                .await
        })
        .await
    });
    match fetched {
        Ok(bytes) => {
            super::count_bytes(bytes.len() as u64);
            Ok(Some(bytes))
        }
        Err(ShardError::Remote {
            source: object_store::Error::NotFound { .. },
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The size in bytes of a remote object (`HEAD`).
pub fn size_of(url: &str) -> Result<u64, ShardError> {
    let object = ObjectUrl::parse(url)?;
    store::block_on(async {
        store::retrying(&object, "looking up", || object.store.head(&object.key)).await
    })
    .map(|meta| meta.size)
}
