//! The epoch loop on the sequencer thread: per epoch, split the shards among the readers,
//! start their tokio tasks and parser threads (or seek to a resume point), run the merge
//! and shuffle, and tell the assembly when the stream ends.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tessera_shards::Sample;

use super::read::{self, Chunk, EpochInput, Parser, ReaderStart, Sequencer};
use super::{GraphOptions, LoaderError, spawn};
use crate::order::{self, RoundRobin};
use crate::stats::Stats;

/// Samples waiting between one reader and the sequencer.
pub(super) const SAMPLES_PER_READER: usize = 16;

/// The current epoch's reader channels (for shutdown and queue statistics).
#[derive(Debug, Default)]
pub(super) struct EpochChannels {
    pub(super) chunks: Vec<async_channel::Receiver<Chunk>>,
    pub(super) samples: Vec<async_channel::Receiver<Sample>>,
}

impl EpochChannels {
    pub(super) fn close(&self) {
        for c in &self.chunks {
            c.close();
        }
        for c in &self.samples {
            c.close();
        }
    }
}

/// Runs the epochs on the sequencer thread: per epoch, starts the readers (tokio tasks
/// and parser threads) and runs the merge and shuffle.
pub(super) struct EpochDriver {
    pub(super) options: GraphOptions,
    pub(super) readers: usize,
    pub(super) start_epoch: u64,
    pub(super) consumed: u64,
    pub(super) samples: super::SamplePool,
    pub(super) epoch_channels: Arc<Mutex<EpochChannels>>,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) io_stage: Arc<crate::stats::StageStats>,
    pub(super) parse_stage: Arc<crate::stats::StageStats>,
    pub(super) stats: Arc<Stats>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) sequencer: Sequencer,
}

impl EpochDriver {
    pub(super) fn run(self) {
        let o = &self.options;
        let mut seq = 0;
        let mut epoch = self.start_epoch;
        let mut consumed = self.consumed;
        while o.epochs.is_none_or(|n| epoch < n) && !self.stop.load(Ordering::Relaxed) {
            let lists = match order::split_shards(
                o.shards.len(),
                o.seed,
                epoch,
                o.rank,
                o.world_size,
                self.readers,
            ) {
                Ok(lists) => lists,
                Err(e) => {
                    tracing::error!("{e}");
                    break;
                }
            };
            let lists: Vec<Vec<PathBuf>> = lists
                .iter()
                .map(|l| l.iter().map(|&i| o.shards[i].clone()).collect())
                .collect();
            let (starts, merge, first_position, resume) = if consumed > 0 {
                match read::resume_point(&lists, o.shuffle_buffer, o.seed, epoch, o.rank, consumed)
                {
                    Ok(p) => (
                        p.readers,
                        p.merge,
                        p.first_position,
                        Some((p.buffer, p.next_position)),
                    ),
                    Err(e) => {
                        self.sequencer.assembly.send_error(LoaderError::Resume(e));
                        break;
                    }
                }
            } else {
                let starts: Vec<ReaderStart> = lists
                    .into_iter()
                    .map(|shards| ReaderStart {
                        shards,
                        first_sample: 0,
                    })
                    .collect();
                // One merge slot per reader this rank really has: `split_shards` gives a
                // rank fewer readers when it has fewer shards than `readers` (with several
                // ranks, fewer than the whole list). Sizing it from the whole list made the
                // merge ask for a reader that does not exist, a panic (issue 14, found by
                // the epoch property test).
                let merge = RoundRobin::new(starts.len());
                (starts, merge, 0, None)
            };
            let (input, parsers) = self.start_readers(starts, merge, first_position, resume);
            let next = self.sequencer.run_epoch(epoch, input, seq, consumed);
            for parser in parsers {
                let _ = parser.join();
            }
            match next {
                Some(next) => seq = next,
                None => return,
            }
            epoch += 1;
            consumed = 0;
        }
        self.sequencer.assembly.end_stream(seq);
    }

    fn start_readers(
        &self,
        starts: Vec<ReaderStart>,
        mut merge: RoundRobin,
        first_position: u64,
        resume: Option<(order::ShuffleBuffer<u64>, u64)>,
    ) -> (EpochInput, Vec<JoinHandle<()>>) {
        let mut channels = EpochChannels::default();
        let mut receivers = Vec::new();
        let mut parsers = Vec::new();
        for (r, start) in starts.into_iter().enumerate() {
            let (chunk_tx, chunk_rx) = async_channel::bounded(read::CHUNKS_AHEAD);
            let (spare_tx, spare_rx) = async_channel::bounded(read::CHUNKS_AHEAD + 2);
            let (sample_tx, sample_rx) = async_channel::bounded(SAMPLES_PER_READER);
            if start.shards.is_empty() {
                merge.finish(r);
            }
            let async_shards = if start.first_sample > 0 {
                start.shards[1..].to_vec()
            } else {
                start.shards.clone()
            };
            self.handle.spawn(read::read_shards(
                async_shards,
                chunk_tx,
                spare_rx,
                Arc::clone(&self.io_stage),
            ));
            channels.chunks.push(chunk_rx.clone());
            channels.samples.push(sample_rx.clone());
            receivers.push(sample_rx);
            let parser = Parser {
                start,
                chunks: chunk_rx,
                spare: spare_tx,
                samples: self.samples.clone(),
                out: sample_tx,
                stage: Arc::clone(&self.parse_stage),
                stats: Arc::clone(&self.stats),
            };
            match spawn(format!("tessera-reader-{r}"), move || parser.run()) {
                Ok(handle) => parsers.push(handle),
                Err(e) => tracing::error!("{e}"),
            }
        }
        *self
            .epoch_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = channels;
        (
            EpochInput {
                readers: receivers,
                merge,
                first_position,
                resume,
            },
            parsers,
        )
    }
}
