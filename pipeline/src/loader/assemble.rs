//! Collation without a copy: handing each accepted sample a slot of a batch under
//! construction, so workers write their views straight into the pooled batch buffers.
//!
//! Workers report every sample once it is decoded (accepted) or rejected. In ordered mode
//! reports are resolved in sequence order, so a sample's slot is its rank among the
//! accepted samples: batches are the same whatever the number of workers or their timing.
//! An accepted worker whose predecessors are still decoding waits (counted as blocked on
//! output); a rejected one never waits. In unordered mode slots go in arrival order.
//!
//! A batch is complete when it is closed (full, or the epoch/stream ended) and every
//! worker holding one of its slots has finished writing. Whoever completes it sends it on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::slot::{BatchLayout, OpenBatch, SlotGrant};
use crate::pool::BufferPool;
use crate::state::PipelineState;

/// How often a worker waiting for its slot retries resolution (see [`Assembly::advance`]).
const RETRY_RESOLUTION: Duration = Duration::from_millis(2);

/// What the assembler needs to know about one sample of the stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    /// Position in the whole stream (all epochs), from 0; resolution order in ordered mode.
    pub seq: u64,
    pub epoch: u64,
    /// Position in this rank's stream of `epoch` (what `PipelineState` counts).
    pub seq_in_epoch: u64,
}

/// The answer of [`Assembly::take_grant`].
pub(crate) enum Grant {
    Ready(SlotGrant),
    NotYet,
    /// The loader is shutting down.
    Stopped,
}

/// The result of a resolved report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    Rejected,
}

struct State {
    next_seq: u64,
    /// Reports not yet resolved: in ordered mode at index `seq - next_seq` (holes are
    /// reports still to come), in unordered mode in arrival order. A ring that keeps its
    /// allocation: a map would allocate a node for nearly every sample.
    early: VecDeque<Option<(Ticket, Outcome)>>,
    /// Ordered mode: slots assigned to waiting workers, by sequence number.
    granted: HashMap<u64, (Arc<OpenBatch>, usize)>,
    open: Option<Arc<OpenBatch>>,
    next_batch_number: u64,
    /// `(epoch, first seq of the next epoch, samples in the epoch)` for epochs whose last
    /// sample was sent.
    epoch_ends: VecDeque<(u64, u64, u64)>,
    /// Reports resolved so far, and the last one.
    resolved_total: u64,
    last_resolved: Option<Ticket>,
    stream_end: Option<u64>,
    stopped: bool,
}

/// Shared by all workers: slot assignment and batch completion.
pub(crate) struct Assembly {
    state: Mutex<State>,
    granted: Condvar,
    ordered: bool,
    drop_last: bool,
    seed: u64,
    rank: u32,
    world_size: u32,
    /// One pool per view.
    pools: Vec<BufferPool>,
    layout: BatchLayout,
    first_seq: u64,
    out: async_channel::Sender<super::Output>,
}

impl std::fmt::Debug for Assembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembly")
            .field("ordered", &self.ordered)
            .finish_non_exhaustive()
    }
}

/// Settings of an [`Assembly`].
pub(crate) struct AssemblyConfig {
    pub ordered: bool,
    pub batch_size: usize,
    pub drop_last: bool,
    pub seed: u64,
    pub rank: u32,
    pub world_size: u32,
    pub pools: Vec<BufferPool>,
    pub shapes: Vec<(usize, usize)>,
    pub mask_shapes: Vec<Option<(usize, usize, bool)>>,
    pub device_augment: bool,
    pub first_seq: u64,
}

impl Assembly {
    pub fn new(config: AssemblyConfig, out: async_channel::Sender<super::Output>) -> Self {
        Assembly {
            state: Mutex::new(State {
                next_seq: config.first_seq,
                early: VecDeque::new(),
                granted: HashMap::new(),
                open: None,
                next_batch_number: 0,
                epoch_ends: VecDeque::new(),
                resolved_total: 0,
                last_resolved: None,
                stream_end: None,
                stopped: false,
            }),
            granted: Condvar::new(),
            ordered: config.ordered,
            drop_last: config.drop_last,
            seed: config.seed,
            rank: config.rank,
            world_size: config.world_size,
            pools: config.pools,
            layout: BatchLayout {
                batch_size: config.batch_size,
                shapes: config.shapes,
                mask_shapes: config.mask_shapes,
                device_augment: config.device_augment,
            },
            first_seq: config.first_seq,
            out,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Report a decoded (accepted) or rejected sample; never waits, neither for other
    /// samples nor for buffers. An accepted sample's slot is then collected with
    /// [`take_grant`](Self::take_grant).
    pub fn submit(&self, ticket: Ticket, outcome: Outcome) {
        let mut state = self.lock();
        if self.ordered {
            let Some(offset) = ticket
                .seq
                .checked_sub(state.next_seq)
                .and_then(|o| usize::try_from(o).ok())
            else {
                return; // already resolved: a duplicate report (a caller bug); ignore it
            };
            if state.early.len() <= offset {
                state.early.resize(offset + 1, None);
            }
            state.early[offset] = Some((ticket, outcome));
        } else {
            state.early.push_back(Some((ticket, outcome)));
        }
        self.advance(&mut state);
    }

    /// Resolve the reports at the front of the queue, in order, for as long as each
    /// accepted one can get a slot: a batch is opened only with buffers free right now.
    ///
    /// Nothing here waits for a buffer. When a pool is empty its buffers sit in batches
    /// still being written, or finished and waiting for those; their writers must stay
    /// free to collect their slots and write them, or nothing would ever come back (the
    /// loader once hung so: a worker waited for a buffer, holding this lock, while another
    /// worker's slot in the batch holding the buffers waited for it). Resolution resumes
    /// from [`take_grant`](Self::take_grant), which waiting workers call again and again.
    fn advance(&self, state: &mut State) {
        let before = state.resolved_total;
        while !state.stopped
            && let Some(Some((t, o))) = state.early.front().copied()
        {
            if o == Outcome::Accepted && state.open.is_none() {
                let Some(batch) = self.try_open_batch(state.next_batch_number) else {
                    break;
                };
                state.next_batch_number += 1;
                state.open = Some(batch);
            }
            state.early.pop_front();
            if self.ordered {
                state.next_seq += 1;
            }
            if let Some(grant) = self.resolve(state, t, o) {
                state.granted.insert(t.seq, grant);
            }
            if self.ordered {
                self.close_finished_epochs(state);
            }
        }
        if state.resolved_total != before {
            self.granted.notify_all();
        }
    }

    /// The slot of accepted sample `seq`, once it is resolved (in ordered mode, after all
    /// its predecessors). With `wait`, blocks until then; without, returns
    /// [`Grant::NotYet`]. While it waits it retries resolution every few milliseconds:
    /// resolution may be held up only by a lack of free buffers, and buffers come back
    /// from the consumer, which does not signal this lock.
    pub fn take_grant(self: &Arc<Self>, seq: u64, wait: bool) -> Grant {
        let mut state = self.lock();
        loop {
            if let Some((batch, slot)) = state.granted.remove(&seq) {
                return Grant::Ready(self.grant(batch, slot));
            }
            if state.stopped {
                return Grant::Stopped;
            }
            self.advance(&mut state);
            if state.granted.contains_key(&seq) {
                continue;
            }
            if !wait {
                return Grant::NotYet;
            }
            state = self
                .granted
                .wait_timeout(state, RETRY_RESOLUTION)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn grant(self: &Arc<Self>, batch: Arc<OpenBatch>, slot: usize) -> SlotGrant {
        SlotGrant::new(batch, slot, Arc::clone(self))
    }

    /// Count one resolved report; an accepted sample gets the next slot.
    fn resolve(
        &self,
        state: &mut State,
        ticket: Ticket,
        outcome: Outcome,
    ) -> Option<(Arc<OpenBatch>, usize)> {
        state.resolved_total += 1;
        state.last_resolved = Some(ticket);
        let granted = match outcome {
            Outcome::Rejected => None,
            Outcome::Accepted => {
                // Opened by `advance` before it resolves an accepted report.
                let batch = state.open.clone()?;
                let slot = batch.len.fetch_add(1, Ordering::AcqRel);
                batch.outstanding.fetch_add(1, Ordering::AcqRel);
                if slot + 1 == self.layout.batch_size {
                    state.open = None;
                    self.close(&batch, ticket);
                }
                Some((batch, slot))
            }
        };
        if !self.ordered {
            self.close_finished_epochs(state);
        }
        granted
    }

    /// The sequencer sent the last sample of `epoch`; the next epoch starts at `end_seq`.
    /// In ordered mode the epoch's last (partial) batch closes once all its samples are
    /// resolved, so batches never straddle epochs.
    pub fn end_epoch(&self, epoch: u64, end_seq: u64, epoch_len: u64) {
        let mut state = self.lock();
        state.epoch_ends.push_back((epoch, end_seq, epoch_len));
        self.close_finished_epochs(&mut state);
    }

    /// The sequencer sent its last sample; the stream ends before `end_seq`.
    pub fn end_stream(&self, end_seq: u64) {
        let mut state = self.lock();
        state.stream_end = Some(end_seq);
        self.close_finished_epochs(&mut state);
    }

    /// Close the open batch when its epoch (ordered) or the stream (unordered: batches
    /// may straddle epochs there) has all its samples resolved.
    fn close_finished_epochs(&self, state: &mut State) {
        if self.ordered {
            while let Some(&(epoch, end_seq, epoch_len)) = state.epoch_ends.front() {
                if state.next_seq < end_seq {
                    return;
                }
                state.epoch_ends.pop_front();
                let last = Ticket {
                    seq: end_seq,
                    epoch,
                    seq_in_epoch: epoch_len,
                };
                self.close_open(state, last);
            }
        } else if let Some(end) = state.stream_end
            && state.resolved_total >= end - self.first_seq
        {
            state.stream_end = None;
            let last = state.last_resolved.unwrap_or(Ticket {
                seq: end,
                epoch: 0,
                seq_in_epoch: 0,
            });
            let last = Ticket {
                seq_in_epoch: last.seq_in_epoch + 1,
                ..last
            };
            self.close_open(state, last);
        }
    }

    /// Close the open (partial) batch, if any, as ending just before `after` (whose
    /// `seq_in_epoch` is the count of samples consumed).
    fn close_open(&self, state: &mut State, after: Ticket) {
        if let Some(batch) = state.open.take() {
            if self.drop_last {
                batch.len.store(0, Ordering::Release);
            }
            self.close_at(&batch, after.epoch, after.seq_in_epoch);
        }
    }

    /// A new batch if every pool has a buffer free now (taken ones go back otherwise).
    fn try_open_batch(&self, number: u64) -> Option<Arc<OpenBatch>> {
        let buffers = self
            .pools
            .iter()
            .map(|pool| pool.try_take())
            .collect::<Option<Vec<_>>>()?;
        let state = PipelineState {
            seed: self.seed,
            epoch: 0,
            rank: self.rank,
            world_size: self.world_size,
            samples_consumed: 0,
        };
        Some(Arc::new(OpenBatch::new(
            number,
            buffers,
            &self.layout,
            state,
        )))
    }

    /// No more slots for `batch`; `last` is the last sample resolved into its range.
    fn close(&self, batch: &Arc<OpenBatch>, last: Ticket) {
        self.close_at(batch, last.epoch, last.seq_in_epoch + 1);
    }

    /// No more slots for `batch`, which ends after `consumed` samples of `epoch`.
    fn close_at(&self, batch: &Arc<OpenBatch>, epoch: u64, consumed: u64) {
        batch.set_position(epoch, consumed);
        self.release(batch);
    }

    /// One writer (or the close) is done with `batch`; the last one sends it on.
    pub(super) fn release(&self, batch: &Arc<OpenBatch>) {
        if batch.outstanding.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let len = batch
            .len
            .load(Ordering::Acquire)
            .min(self.layout.batch_size);
        // Sends fail only when the consumer is gone; the batch is then dropped (buffers
        // return to their pools).
        let output = match batch.take(&self.layout, len) {
            Some(out) => super::Output::Batch(batch.number, out),
            // A dropped last batch gives its buffers back, and its number must still be
            // accounted for, or ordered delivery would wait for it forever.
            None => super::Output::Dropped(batch.number),
        };
        let _ = self.out.send_blocking(output);
    }

    /// Stop the run with `error` (fail-fast policy, or a failed resume).
    pub fn send_error(&self, error: super::LoaderError) {
        let _ = self.out.try_send(super::Output::Error(error));
    }

    /// Wake and release every waiting worker (shutdown). Nothing waits on the pools (see
    /// [`advance`](Self::advance)), so they need no waking.
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.granted.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::slot::SlotMeta;
    use crate::pool::BufferPool;

    fn ticket(seq: u64) -> Ticket {
        Ticket {
            seq,
            epoch: 0,
            seq_in_epoch: seq,
        }
    }

    /// A sample that needs a new batch when every buffer is taken must hold up neither its
    /// worker nor the others. Two buffers, one-sample batches: batch 0 waits for its writer,
    /// batch 1 is finished and held by the consumer, sample 2 needs a third buffer. Its
    /// report returns at once and its slot is "not yet"; sample 0's slot can still be
    /// collected and written, and once both batches are dropped sample 2 gets its batch.
    /// (The assembler used to wait for the buffer inside `submit`, with its lock held:
    /// `take_grant` for sample 0 then never returned, the hang seen in end-to-end tests.)
    #[test]
    fn waiting_for_a_buffer_does_not_block_slot_collection() {
        let (out_tx, out_rx) = async_channel::bounded(8);
        let assembly = Arc::new(Assembly::new(
            AssemblyConfig {
                ordered: true,
                batch_size: 1,
                drop_last: false,
                seed: 0,
                rank: 0,
                world_size: 1,
                pools: vec![BufferPool::new(2, 3)],
                shapes: vec![(1, 1)],
                mask_shapes: vec![None],
                device_augment: false,
                first_seq: 0,
            },
            out_tx,
        ));
        assembly.submit(ticket(0), Outcome::Accepted);
        assembly.submit(ticket(1), Outcome::Accepted);
        let Grant::Ready(second) = assembly.take_grant(1, false) else {
            panic!("sample 1 has its slot");
        };
        second.finish(SlotMeta::default(), "b");
        let batch_1 = out_rx.recv_blocking().expect("batch 1 delivered");

        // Sample 2 needs a third buffer: its report returns, its slot is not there yet.
        assembly.submit(ticket(2), Outcome::Accepted);
        assert!(matches!(assembly.take_grant(2, false), Grant::NotYet));

        // Sample 0's writer collects its slot meanwhile (this used to hang).
        let Grant::Ready(first) = assembly.take_grant(0, true) else {
            panic!("sample 0 has its slot");
        };
        first.finish(SlotMeta::default(), "a");
        let batch_0 = out_rx.recv_blocking().expect("batch 0 delivered");
        assert!(matches!(assembly.take_grant(2, false), Grant::NotYet));

        // The consumer drops both batches: a waiting sample 2 gets its batch.
        let waiting = {
            let assembly = Arc::clone(&assembly);
            std::thread::spawn(move || matches!(assembly.take_grant(2, true), Grant::Ready(_)))
        };
        drop((batch_0, batch_1));
        assert!(waiting.join().expect("no panic"), "sample 2 has its slot");
    }
}
