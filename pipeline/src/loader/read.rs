//! Reading: shard bytes through tokio, tar parsing on reader threads, then the merge and
//! the shuffle buffer on the sequencer thread.
//!
//! ```text
//! tokio task per reader ─chunks─► parser thread per reader ─samples─► sequencer ─► workers
//!  (async file reads,            (the shard crate's sync       (round-robin merge,
//!   bounded read-ahead)           reader over a channel)        shuffle buffer, resume)
//! ```
//! The async side only moves bytes: it reads each shard in 1 MiB chunks into a bounded
//! channel (read-ahead = [`CHUNKS_AHEAD`] chunks per reader, across shard boundaries). The
//! parser thread wraps the channel in a blocking [`Read`] ([`ChannelReader`]) and runs
//! [`ShardReader`] over it, so parsing never blocks the runtime and the runtime never
//! waits on parsing. Samples come from a fixed set of recycled [`Sample`]s, which bounds
//! the memory held by everything between the readers and the workers.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tessera_shards::reader::ShardReader;
use tessera_shards::remote;
use tessera_shards::{Sample, ShardError};
use tokio::io::AsyncReadExt;

use super::assemble::{Assembly, Ticket};
use super::sample_pool::SamplePool;
use super::work::WorkItem;
use crate::order::{self, RoundRobin, ShuffleBuffer};
use crate::stats::{Activity, StageStats, Stats};

/// Bytes per chunk handed from the async reads to a parser.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;
/// Chunks a reader may have read ahead of its parser.
pub(crate) const CHUNKS_AHEAD: usize = 4;

/// A message from a reader task to its parser: bytes of the current shard, its end, or
/// why it could not be read.
#[derive(Debug)]
pub(crate) enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(std::io::Error),
}

/// A blocking [`Read`] over the chunks of one shard. Dropping it drains what is left of
/// the shard, so the next shard's chunks start clean even when parsing stopped early.
pub(crate) struct ChannelReader {
    chunks: async_channel::Receiver<Chunk>,
    spare: async_channel::Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    ended: bool,
    stage: Arc<StageStats>,
}

impl ChannelReader {
    fn next_chunk(&mut self) -> std::io::Result<bool> {
        let started = Instant::now();
        let message = self.chunks.recv_blocking();
        self.stage.add(Activity::BlockedOnInput, started.elapsed());
        match message {
            Ok(Chunk::Data(data)) => {
                let old = std::mem::replace(&mut self.current, data);
                let _ = self.spare.try_send(old);
                self.pos = 0;
                Ok(true)
            }
            Ok(Chunk::End) | Err(_) => {
                self.ended = true;
                Ok(false)
            }
            Ok(Chunk::Failed(e)) => {
                self.ended = true;
                Err(e)
            }
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            if self.ended || !self.next_chunk()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        while !self.ended {
            if !matches!(self.next_chunk(), Ok(true)) {
                break;
            }
        }
    }
}

/// Where one shard's bytes come from: a local file, or a remote object (`s3://`, ...)
/// that the shard crate streams with retries and resumes; a remote shard held by the
/// local shard cache is read as a file.
enum ShardBytes {
    File(tokio::fs::File),
    Remote {
        stream: remote::RemoteStream,
        current: remote::Bytes,
    },
}

impl ShardBytes {
    async fn open(path: &Path) -> std::io::Result<ShardBytes> {
        let Some(url) = remote::url_of(path) else {
            return Ok(ShardBytes::File(tokio::fs::File::open(path).await?));
        };
        if let Some(local) = remote::cache::lookup(url) {
            return Ok(ShardBytes::File(tokio::fs::File::open(local).await?));
        }
        let stream = remote::RemoteStream::open(url, 0).map_err(std::io::Error::other)?;
        Ok(ShardBytes::Remote {
            stream,
            current: remote::Bytes::new(),
        })
    }

    /// # Cancel safety
    /// Cancel safe: bytes are taken only when the future completes.
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ShardBytes::File(file) => file.read(buf).await,
            ShardBytes::Remote { stream, current } => {
                while current.is_empty() {
                    match stream.next_chunk().await.map_err(std::io::Error::other)? {
                        Some(chunk) => *current = chunk,
                        None => return Ok(0),
                    }
                }
                let n = buf.len().min(current.len());
                buf[..n].copy_from_slice(&current.split_to(n));
                Ok(n)
            }
        }
    }
}

/// Read `shards` in order into `chunks` (async; runs on the tokio runtime).
///
/// # Cancel safety
/// Dropping the future stops reading; the parser then sees the channel closed, which it
/// treats as the end of the shard.
pub(crate) async fn read_shards(
    shards: Vec<PathBuf>,
    chunks: async_channel::Sender<Chunk>,
    spare: async_channel::Receiver<Vec<u8>>,
    stage: Arc<StageStats>,
) {
    let mut clock = stage.clock();
    for path in shards {
        match ShardBytes::open(&path).await {
            Ok(mut file) => loop {
                let mut buf = spare.try_recv().unwrap_or_default();
                buf.resize(CHUNK_BYTES, 0);
                let mut filled = 0;
                let mut failed = None;
                while filled < CHUNK_BYTES {
                    match file.read(&mut buf[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                buf.truncate(filled);
                clock.switch(Activity::BlockedOnOutput);
                let sent = if filled > 0 {
                    chunks.send(Chunk::Data(buf)).await.is_ok()
                } else {
                    true
                };
                let last = failed.is_some() || filled < CHUNK_BYTES;
                let sent = sent
                    && match failed {
                        Some(e) => chunks.send(Chunk::Failed(e)).await.is_ok(),
                        None if last => chunks.send(Chunk::End).await.is_ok(),
                        None => true,
                    };
                clock.switch(Activity::Busy);
                clock.stage().item_done();
                if !sent {
                    return;
                }
                if last {
                    break;
                }
            },
            Err(e) => {
                if chunks.send(Chunk::Failed(e)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Where one reader starts: its shards, and the first sample to read of the first one.
#[derive(Debug, Clone)]
pub(crate) struct ReaderStart {
    pub shards: Vec<PathBuf>,
    /// Index of the first sample of `shards[0]` (0 unless resuming).
    pub first_sample: u64,
}

/// Parse the shards of one reader into samples (a dedicated thread).
pub(crate) struct Parser {
    pub start: ReaderStart,
    pub chunks: async_channel::Receiver<Chunk>,
    pub spare: async_channel::Sender<Vec<u8>>,
    /// Free samples to fill; a sample not sent on goes back here.
    pub samples: SamplePool,
    pub out: async_channel::Sender<Sample>,
    pub stage: Arc<StageStats>,
    pub stats: Arc<Stats>,
}

impl Parser {
    pub fn run(self) {
        for (k, path) in self.start.shards.iter().enumerate() {
            let opened = if k == 0 && self.start.first_sample > 0 {
                // Resume: the shard crate seeks with the index (sync I/O, on this thread).
                ShardReader::open_at(path, self.start.first_sample)
            } else {
                let reader = ChannelReader {
                    chunks: self.chunks.clone(),
                    spare: self.spare.clone(),
                    current: Vec::new(),
                    pos: 0,
                    ended: false,
                    stage: Arc::clone(&self.stage),
                };
                ShardReader::new(reader, path.display().to_string())
            };
            let mut reader = match opened {
                Ok(reader) => reader,
                Err(e) => {
                    self.shard_error(&e);
                    continue;
                }
            };
            loop {
                let started = Instant::now();
                let Some(mut sample) = self.samples.take() else {
                    return;
                };
                self.stage.add(Activity::BlockedOnOutput, started.elapsed());
                let started = Instant::now();
                let read = reader.read_into(&mut sample);
                self.stage.add(Activity::Busy, started.elapsed());
                match read {
                    Ok(true) => {
                        self.stage.item_done();
                        let started = Instant::now();
                        if self.out.send_blocking(sample).is_err() {
                            return;
                        }
                        self.stage.add(Activity::BlockedOnOutput, started.elapsed());
                    }
                    Ok(false) => {
                        self.samples.give(sample);
                        break;
                    }
                    Err(e) => {
                        self.samples.give(sample);
                        self.shard_error(&e);
                        break;
                    }
                }
            }
        }
    }

    fn shard_error(&self, e: &ShardError) {
        self.stats
            .shard_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            "shard error (its complete samples were used): {}",
            tessera_shards::error::Chain(e)
        );
    }
}

/// The number of samples of a shard: from its index when there is a valid one, otherwise
/// by reading it (only needed to resume mid-epoch).
pub(crate) fn shard_len(path: &Path) -> Result<u64, ShardError> {
    if let Ok(Some(index)) = tessera_shards::index::ShardIndex::load_for(path)
        && index.check_shard(path).is_ok()
    {
        return Ok(index.samples.len() as u64);
    }
    let mut reader = ShardReader::open(path)?;
    let mut sample = Sample::default();
    let mut n = 0;
    // A damaged shard counts its complete samples, as the live stream sees them.
    while let Ok(true) = reader.read_into(&mut sample) {
        n += 1;
    }
    Ok(n)
}

/// Where the stream of one epoch resumes: what each reader starts with, and the shuffle
/// state to rebuild from the first samples read.
#[derive(Debug)]
pub(crate) struct ResumePoint {
    pub readers: Vec<ReaderStart>,
    /// The merge continues from here.
    pub merge: RoundRobin,
    /// First merged position the readers deliver.
    pub first_position: u64,
    /// Positions the shuffle buffer held (slot order) and the next new position.
    pub buffer: ShuffleBuffer<u64>,
    pub next_position: u64,
}

/// Work out how to continue an epoch after `consumed` samples: replay the merge and the
/// shuffle on positions (integers only), then seek each reader to its first needed sample.
pub(crate) fn resume_point(
    lists: &[Vec<PathBuf>],
    shuffle_capacity: usize,
    seed: u64,
    epoch: u64,
    rank: u32,
    consumed: u64,
) -> Result<ResumePoint, ShardError> {
    let mut lens = Vec::with_capacity(lists.len());
    for list in lists {
        let mut per_shard = Vec::with_capacity(list.len());
        for path in list {
            per_shard.push(shard_len(path)?);
        }
        lens.push(per_shard);
    }
    let totals: Vec<u64> = lens.iter().map(|l| l.iter().sum()).collect();
    let total: u64 = totals.iter().sum();
    let (buffer, next_position) =
        order::replay_shuffle(shuffle_capacity, seed, epoch, rank, total, consumed);
    let first_position = buffer
        .items()
        .iter()
        .copied()
        .min()
        .unwrap_or(next_position)
        .min(next_position);
    let (taken, merge) = RoundRobin::replay(&totals, first_position);
    let readers = lists
        .iter()
        .zip(&lens)
        .zip(&taken)
        .map(|((list, per_shard), &local)| {
            let mut skip = local;
            let mut first = 0;
            while first < list.len() && skip >= per_shard[first] {
                skip -= per_shard[first];
                first += 1;
            }
            ReaderStart {
                shards: list[first.min(list.len())..].to_vec(),
                first_sample: skip,
            }
        })
        .collect();
    Ok(ResumePoint {
        readers,
        merge,
        first_position,
        buffer,
        next_position,
    })
}

/// The sequencer's view of one epoch's readers.
pub(crate) struct EpochInput {
    pub readers: Vec<async_channel::Receiver<Sample>>,
    pub merge: RoundRobin,
    /// Merged position of the first sample the readers deliver.
    pub first_position: u64,
    /// Set when resuming: the shuffle buffer of positions and the first new position.
    pub resume: Option<(ShuffleBuffer<u64>, u64)>,
}

/// Settings the sequencer needs.
pub(crate) struct Sequencer {
    pub shuffle_capacity: usize,
    pub seed: u64,
    pub rank: u32,
    pub out: async_channel::Sender<WorkItem>,
    /// Where samples skipped on resume go back.
    pub free: SamplePool,
    pub assembly: Arc<Assembly>,
    pub stage: Arc<StageStats>,
}

impl Sequencer {
    /// Merge, shuffle and number one epoch's samples, starting at `seq` (stream position)
    /// and `consumed` (samples of this epoch already delivered). Returns the next `seq`,
    /// or `None` when the workers are gone (shutdown).
    pub fn run_epoch(
        &self,
        epoch: u64,
        mut input: EpochInput,
        mut seq: u64,
        consumed: u64,
    ) -> Option<u64> {
        let mut clock = self.stage.clock();
        let mut seq_in_epoch = consumed;
        let mut position = input.first_position;
        let mut emit = |sample: Sample, clock: &mut crate::stats::StageClock| -> bool {
            let ticket = Ticket {
                seq,
                epoch,
                seq_in_epoch,
            };
            seq += 1;
            seq_in_epoch += 1;
            clock.switch(Activity::BlockedOnOutput);
            let ok = self.out.send_blocking(WorkItem { ticket, sample }).is_ok();
            clock.switch(Activity::Busy);
            clock.stage().item_done();
            ok
        };
        // Resume: refill the buffer with the samples the replay says it held; drop the
        // ones already delivered.
        let mut buffer = match input.resume.take() {
            None => ShuffleBuffer::new(self.shuffle_capacity, self.seed, epoch, self.rank),
            Some((positions, next_position)) => {
                let wanted: HashMap<u64, ()> = positions.items().iter().map(|&p| (p, ())).collect();
                let mut held: HashMap<u64, Sample> = HashMap::with_capacity(wanted.len());
                while position < next_position {
                    let Some(sample) = self.next_merged(&mut input, &mut clock) else {
                        break;
                    };
                    if wanted.contains_key(&position) {
                        held.insert(position, sample);
                    } else {
                        self.free.give(sample);
                    }
                    position += 1;
                }
                positions.map_items(|p| held.remove(&p).unwrap_or_default())
            }
        };
        while let Some(sample) = self.next_merged(&mut input, &mut clock) {
            if let Some(out) = buffer.push(sample)
                && !emit(out, &mut clock)
            {
                return None;
            }
        }
        while let Some(out) = buffer.drain_one() {
            if !emit(out, &mut clock) {
                return None;
            }
        }
        self.assembly.end_epoch(epoch, seq, seq_in_epoch);
        Some(seq)
    }

    /// The next sample of the round-robin merge, `None` when every reader is done.
    fn next_merged(
        &self,
        input: &mut EpochInput,
        clock: &mut crate::stats::StageClock,
    ) -> Option<Sample> {
        loop {
            let r = input.merge.current()?;
            clock.switch(Activity::BlockedOnInput);
            let received = input.readers[r].recv_blocking();
            clock.switch(Activity::Busy);
            match received {
                Ok(sample) => {
                    input.merge.advance();
                    return Some(sample);
                }
                Err(_) => input.merge.finish(r),
            }
        }
    }
}
