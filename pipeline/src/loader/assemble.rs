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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::batch::{Batch, MaskBatch, ViewBatch};
use crate::pool::{BufferPool, PooledBuffer};
use crate::state::PipelineState;

/// What the assembler needs to know about one sample of the stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    /// Position in the whole stream (all epochs), from 0; resolution order in ordered mode.
    pub seq: u64,
    pub epoch: u64,
    /// Position in this rank's stream of `epoch` (what `PipelineState` counts).
    pub seq_in_epoch: u64,
}

/// What a worker records about its sample once written.
#[derive(Debug, Default, Clone)]
pub(crate) struct SlotMeta {
    pub label: i64,
    pub key: String,
    /// Identity of the sample (seeds its randomness with the run seed and epoch).
    pub sample_id: u64,
}

/// One sample's part of a view's masks (see [`MaskBatch`]).
#[derive(Debug)]
pub struct MaskSlot<'a> {
    /// `num_patches` entries, 1 = masked.
    pub mask: &'a mut [u8],
    /// `num_keep` entries (MAE), else empty.
    pub ids_keep: &'a mut [u32],
    /// `num_patches` entries (MAE), else empty.
    pub ids_restore: &'a mut [u32],
}

/// Base pointers of one view's mask arrays and the per-sample lengths.
#[derive(Clone, Copy)]
struct MaskPtrs {
    mask: *mut u8,
    ids_keep: *mut u32,
    ids_restore: *mut u32,
    num_patches: usize,
    num_keep: usize,
    /// Whether the view has keep/restore indices (MAE).
    indices: bool,
}

/// A batch being filled.
struct OpenBatch {
    /// Order in which batches are delivered.
    number: u64,
    /// Per view: base pointer of the pooled buffer and the bytes of one sample.
    views: Vec<(*mut u8, usize)>,
    buffers: Mutex<Option<Vec<PooledBuffer>>>,
    mask_ptrs: Vec<Option<MaskPtrs>>,
    masks: Mutex<Option<Vec<Option<MaskBatch>>>>,
    meta: Mutex<Vec<SlotMeta>>,
    /// Slots handed out; fixed once closed.
    len: AtomicUsize,
    /// Writers not yet finished, plus one until the batch is closed.
    outstanding: AtomicUsize,
    state: Mutex<PipelineState>,
}

// SAFETY: the raw pointers point into heap buffers owned by `buffers`, which stay alive
// (and are not moved out) until `outstanding` reaches zero; each slot's region is handed
// to exactly one `SlotGrant`, so no two threads write the same bytes.
unsafe impl Send for OpenBatch {}
unsafe impl Sync for OpenBatch {}

/// The right to write one sample's views into its slot of a batch.
pub(crate) struct SlotGrant {
    batch: Arc<OpenBatch>,
    slot: usize,
    assembly: Arc<Assembly>,
}

impl SlotGrant {
    /// The sample's region of each view's buffer (view order) and of each view's masks.
    pub fn parts(&mut self) -> (Vec<&mut [u8]>, Vec<Option<MaskSlot<'_>>>) {
        (self.views(), self.masks())
    }

    // Only `parts` (which takes `&mut self`) calls these two, once per grant.
    #[allow(clippy::mut_from_ref)]
    fn views(&self) -> Vec<&mut [u8]> {
        self.batch
            .views
            .iter()
            .map(|&(base, per_sample)| {
                // SAFETY: see `OpenBatch`; the region `slot * per_sample ..` lies within
                // the buffer (capacity `batch_size * per_sample`) and is ours alone.
                unsafe {
                    std::slice::from_raw_parts_mut(base.add(self.slot * per_sample), per_sample)
                }
            })
            .collect()
    }

    #[allow(clippy::mut_from_ref)]
    fn masks(&self) -> Vec<Option<MaskSlot<'_>>> {
        let slot = self.slot;
        self.batch
            .mask_ptrs
            .iter()
            .map(|ptrs| {
                ptrs.map(|p| {
                    let (n, k) = if p.indices {
                        (p.num_patches, p.num_keep)
                    } else {
                        (0, 0)
                    };
                    // SAFETY: as for `views`: the vectors of `OpenBatch::masks` have
                    // `batch_size` samples' worth of entries and stay put until completion.
                    unsafe {
                        MaskSlot {
                            mask: std::slice::from_raw_parts_mut(
                                p.mask.add(slot * p.num_patches),
                                p.num_patches,
                            ),
                            ids_keep: std::slice::from_raw_parts_mut(p.ids_keep.add(slot * k), k),
                            ids_restore: std::slice::from_raw_parts_mut(
                                p.ids_restore.add(slot * n),
                                n,
                            ),
                        }
                    }
                })
            })
            .collect()
    }

    /// Record the slot's label and key and release it; sends the batch on if it was the last.
    pub fn finish(self, meta: SlotMeta) {
        self.batch.meta.lock().unwrap_or_else(|e| e.into_inner())[self.slot] = meta;
        self.assembly.release(&self.batch);
    }
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
    /// Ordered mode: reports that arrived before their predecessors.
    early: BTreeMap<u64, (Ticket, Outcome)>,
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
    batch_size: usize,
    drop_last: bool,
    seed: u64,
    rank: u32,
    world_size: u32,
    /// One pool per view; `(height, width)` per view.
    pools: Vec<BufferPool>,
    shapes: Vec<(usize, usize)>,
    /// Per view: `(num_patches, num_keep, has keep/restore indices)` when it has masks.
    mask_shapes: Vec<Option<(usize, usize, bool)>>,
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
    pub first_seq: u64,
}

impl Assembly {
    pub fn new(config: AssemblyConfig, out: async_channel::Sender<super::Output>) -> Self {
        Assembly {
            state: Mutex::new(State {
                next_seq: config.first_seq,
                early: BTreeMap::new(),
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
            batch_size: config.batch_size,
            drop_last: config.drop_last,
            seed: config.seed,
            rank: config.rank,
            world_size: config.world_size,
            pools: config.pools,
            shapes: config.shapes,
            mask_shapes: config.mask_shapes,
            first_seq: config.first_seq,
            out,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Report a decoded (accepted) or rejected sample; never waits for other samples.
    /// An accepted sample's slot is then collected with [`take_grant`](Self::take_grant).
    pub fn submit(&self, ticket: Ticket, outcome: Outcome) {
        let mut state = self.lock();
        if !self.ordered {
            if let Some(grant) = self.resolve(&mut state, ticket, outcome) {
                state.granted.insert(ticket.seq, grant);
            }
            return;
        }
        state.early.insert(ticket.seq, (ticket, outcome));
        loop {
            let next = state.next_seq;
            let Some((t, o)) = state.early.remove(&next) else {
                break;
            };
            state.next_seq += 1;
            if let Some(grant) = self.resolve(&mut state, t, o) {
                state.granted.insert(t.seq, grant);
            }
            self.close_finished_epochs(&mut state);
        }
        self.granted.notify_all();
    }

    /// The slot of accepted sample `seq`, once all its predecessors are resolved (ordered
    /// mode). With `wait`, blocks until then; without, returns [`Grant::NotYet`].
    pub fn take_grant(self: &Arc<Self>, seq: u64, wait: bool) -> Grant {
        let mut state = self.lock();
        loop {
            if let Some((batch, slot)) = state.granted.remove(&seq) {
                return Grant::Ready(self.grant(batch, slot));
            }
            if state.stopped {
                return Grant::Stopped;
            }
            if !wait {
                return Grant::NotYet;
            }
            state = self.granted.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn grant(self: &Arc<Self>, batch: Arc<OpenBatch>, slot: usize) -> SlotGrant {
        SlotGrant {
            batch,
            slot,
            assembly: Arc::clone(self),
        }
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
                if state.open.is_none() {
                    let batch = self.open_batch(state.next_batch_number)?;
                    state.next_batch_number += 1;
                    state.open = Some(batch);
                }
                let batch = state.open.clone()?;
                let slot = batch.len.fetch_add(1, Ordering::AcqRel);
                batch.outstanding.fetch_add(1, Ordering::AcqRel);
                if slot + 1 == self.batch_size {
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
        } else if let Some(end) = state.stream_end {
            if state.resolved_total >= end - self.first_seq {
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

    /// A new batch with buffers from the pools; `None` when shutting down.
    fn open_batch(&self, number: u64) -> Option<Arc<OpenBatch>> {
        let mut buffers = Vec::with_capacity(self.pools.len());
        for pool in &self.pools {
            buffers.push(pool.take_unless_closed()?);
        }
        let views = buffers
            .iter_mut()
            .zip(&self.shapes)
            .map(|(buf, &(h, w))| (buf.as_mut_ptr(), h * w * 3))
            .collect();
        let n = self.batch_size;
        let mut masks: Vec<Option<MaskBatch>> = self
            .mask_shapes
            .iter()
            .map(|shape| {
                shape.map(|(num_patches, num_keep, indices)| MaskBatch {
                    len: n,
                    num_patches,
                    mask: vec![0; n * num_patches],
                    ids_keep: if indices {
                        vec![0; n * num_keep]
                    } else {
                        Vec::new()
                    },
                    ids_restore: if indices {
                        vec![0; n * num_patches]
                    } else {
                        Vec::new()
                    },
                    num_keep: if indices { num_keep } else { 0 },
                })
            })
            .collect();
        let mask_ptrs = masks
            .iter_mut()
            .zip(&self.mask_shapes)
            .map(|(m, shape)| {
                let (m, &(num_patches, num_keep, indices)) = (m.as_mut()?, shape.as_ref()?);
                Some(MaskPtrs {
                    mask: m.mask.as_mut_ptr(),
                    ids_keep: m.ids_keep.as_mut_ptr(),
                    ids_restore: m.ids_restore.as_mut_ptr(),
                    num_patches,
                    num_keep,
                    indices,
                })
            })
            .collect();
        Some(Arc::new(OpenBatch {
            number,
            views,
            buffers: Mutex::new(Some(buffers)),
            mask_ptrs,
            masks: Mutex::new(Some(masks)),
            meta: Mutex::new(vec![SlotMeta::default(); self.batch_size]),
            len: AtomicUsize::new(0),
            outstanding: AtomicUsize::new(1),
            state: Mutex::new(PipelineState {
                seed: self.seed,
                epoch: 0,
                rank: self.rank,
                world_size: self.world_size,
                samples_consumed: 0,
            }),
        }))
    }

    /// No more slots for `batch`; `last` is the last sample resolved into its range.
    fn close(&self, batch: &Arc<OpenBatch>, last: Ticket) {
        self.close_at(batch, last.epoch, last.seq_in_epoch + 1);
    }

    /// No more slots for `batch`, which ends after `consumed` samples of `epoch`.
    fn close_at(&self, batch: &Arc<OpenBatch>, epoch: u64, consumed: u64) {
        {
            let mut state = batch.state.lock().unwrap_or_else(|e| e.into_inner());
            state.epoch = epoch;
            state.samples_consumed = consumed;
        }
        self.release(batch);
    }

    /// One writer (or the close) is done with `batch`; the last one sends it on.
    fn release(&self, batch: &Arc<OpenBatch>) {
        if batch.outstanding.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let len = batch.len.load(Ordering::Acquire).min(self.batch_size);
        let Some(buffers) = batch
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        if len == 0 {
            return; // an empty (or dropped last) batch: the buffers go back to the pools
        }
        let mut meta = std::mem::take(&mut *batch.meta.lock().unwrap_or_else(|e| e.into_inner()));
        meta.truncate(len);
        let mut masks = batch
            .masks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        for m in masks.iter_mut().flatten() {
            m.len = len;
            m.mask.truncate(len * m.num_patches);
            m.ids_keep.truncate(len * m.num_keep);
            if !m.ids_restore.is_empty() {
                m.ids_restore.truncate(len * m.num_patches);
            }
        }
        let views = buffers
            .into_iter()
            .zip(&self.shapes)
            .map(|(data, &(height, width))| ViewBatch {
                data,
                len,
                height,
                width,
            })
            .collect();
        let labels = meta.iter().map(|m| m.label).collect();
        let keys = meta.into_iter().map(|m| m.key).collect();
        let state = *batch.state.lock().unwrap_or_else(|e| e.into_inner());
        let out = Batch {
            views,
            masks,
            labels,
            keys,
            state,
        };
        // Fails only when the consumer is gone; the batch is then dropped (buffers return).
        let _ = self
            .out
            .send_blocking(super::Output::Batch(batch.number, out));
    }

    /// Stop the run with `error` (fail-fast policy, or a failed resume).
    pub fn send_error(&self, error: super::LoaderError) {
        let _ = self.out.try_send(super::Output::Error(error));
    }

    /// Wake and release every waiting worker (shutdown).
    pub fn stop(&self) {
        // Pools first: a worker may hold the state lock while it waits for a buffer.
        for pool in &self.pools {
            pool.close();
        }
        self.lock().stopped = true;
        self.granted.notify_all();
    }
}
