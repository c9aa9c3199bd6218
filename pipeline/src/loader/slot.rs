//! A batch under construction, and the grants that let workers write into it.
//!
//! An [`OpenBatch`] holds one pooled buffer per view and the batch's mask arrays; each
//! accepted sample gets a [`SlotGrant`] for its slot (its index in the batch), through
//! which the worker writes the sample's views and masks in place: no per-sample buffer,
//! no copy at collation. When the last writer finishes, [`OpenBatch::take`] turns the
//! batch into the [`Batch`] the consumer receives. Which sample gets which slot, and when
//! a batch closes, is [`super::assemble`]'s business.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use super::assemble::Assembly;
use crate::batch::{Batch, Keys, MaskBatch, ViewBatch};
use crate::pool::PooledBuffer;
use crate::state::PipelineState;
use crate::transforms::DeviceDraws;

/// The shape of every batch of a run.
#[derive(Debug, Clone)]
pub(crate) struct BatchLayout {
    pub batch_size: usize,
    /// `(height, width)` per view.
    pub shapes: Vec<(usize, usize)>,
    /// Per view: `(num_patches, num_keep, has keep/restore indices)` when it has masks.
    pub mask_shapes: Vec<Option<(usize, usize, bool)>>,
    /// Whether slots carry [`DeviceDraws`] per view (device augmentation).
    pub device_augment: bool,
}

/// What a worker records about its sample once written.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SlotMeta {
    pub label: i64,
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

/// The per-sample records of a batch: labels, and keys in one string.
#[derive(Debug, Default)]
struct Records {
    meta: Vec<SlotMeta>,
    keys: Keys,
}

/// A batch being filled.
pub(crate) struct OpenBatch {
    /// Order in which batches are delivered.
    pub number: u64,
    /// Per view: base pointer of the pooled buffer and the bytes of one sample.
    views: Vec<(*mut u8, usize)>,
    buffers: Mutex<Option<Vec<PooledBuffer>>>,
    mask_ptrs: Vec<Option<MaskPtrs>>,
    masks: Mutex<Option<Vec<Option<MaskBatch>>>>,
    /// Per view: base pointer of its `batch_size` device draws (empty without device
    /// augmentation); the vectors live in `augment`.
    augment_ptrs: Vec<*mut DeviceDraws>,
    augment: Mutex<Option<Vec<Vec<DeviceDraws>>>>,
    records: Mutex<Records>,
    /// Slots handed out; fixed once closed.
    pub len: AtomicUsize,
    /// Writers not yet finished, plus one until the batch is closed.
    pub outstanding: AtomicUsize,
    state: Mutex<PipelineState>,
}

// SAFETY: the raw pointers point into heap buffers owned by `buffers` and `masks`, which
// stay alive (and are not moved out) until `outstanding` reaches zero; each slot's region
// is handed to exactly one `SlotGrant`, so no two threads write the same bytes.
unsafe impl Send for OpenBatch {}
unsafe impl Sync for OpenBatch {}

impl OpenBatch {
    /// An empty batch over `buffers` (one per view, each `batch_size` samples long).
    pub fn new(
        number: u64,
        mut buffers: Vec<PooledBuffer>,
        layout: &BatchLayout,
        state: PipelineState,
    ) -> Self {
        let views = buffers
            .iter_mut()
            .zip(&layout.shapes)
            .map(|(buf, &(h, w))| (buf.as_mut_ptr(), h * w * 3))
            .collect();
        let n = layout.batch_size;
        let mut masks: Vec<Option<MaskBatch>> = layout
            .mask_shapes
            .iter()
            .map(|shape| {
                shape.map(|(num_patches, num_keep, indices)| {
                    let (keep, restore) = if indices {
                        (n * num_keep, n * num_patches)
                    } else {
                        (0, 0)
                    };
                    MaskBatch {
                        len: n,
                        num_patches,
                        mask: vec![0; n * num_patches],
                        ids_keep: vec![0; keep],
                        ids_restore: vec![0; restore],
                        num_keep: if indices { num_keep } else { 0 },
                    }
                })
            })
            .collect();
        let mask_ptrs = masks
            .iter_mut()
            .zip(&layout.mask_shapes)
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
        let mut augment: Vec<Vec<DeviceDraws>> = if layout.device_augment {
            vec![vec![DeviceDraws::default(); n]; layout.shapes.len()]
        } else {
            Vec::new()
        };
        let augment_ptrs = augment.iter_mut().map(|v| v.as_mut_ptr()).collect();
        OpenBatch {
            number,
            views,
            buffers: Mutex::new(Some(buffers)),
            mask_ptrs,
            masks: Mutex::new(Some(masks)),
            augment_ptrs,
            augment: Mutex::new(layout.device_augment.then_some(augment)),
            records: Mutex::new(Records {
                meta: vec![SlotMeta::default(); n],
                keys: Keys::with_slots(n),
            }),
            len: AtomicUsize::new(0),
            outstanding: AtomicUsize::new(1),
            state: Mutex::new(state),
        }
    }

    /// Where the stream stands after this batch: `consumed` samples of `epoch`.
    pub fn set_position(&self, epoch: u64, consumed: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.epoch = epoch;
        state.samples_consumed = consumed;
    }

    /// The finished batch of its first `len` slots; `None` when `len` is 0 or it was
    /// taken already (the buffers then go back to their pools when dropped).
    pub fn take(&self, layout: &BatchLayout, len: usize) -> Option<Batch> {
        let buffers = self
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        if len == 0 {
            return None;
        }
        let Records { mut meta, mut keys } =
            std::mem::take(&mut *self.records.lock().unwrap_or_else(|e| e.into_inner()));
        meta.truncate(len);
        keys.truncate(len);
        let mut masks = self
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
        let mut augment = self
            .augment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for draws in augment.iter_mut().flatten() {
            draws.truncate(len);
        }
        let views = buffers
            .into_iter()
            .zip(&layout.shapes)
            .map(|(data, &(height, width))| ViewBatch {
                data,
                len,
                height,
                width,
            })
            .collect();
        Some(Batch {
            views,
            masks,
            labels: meta.iter().map(|m| m.label).collect(),
            keys,
            state: *self.state.lock().unwrap_or_else(|e| e.into_inner()),
            augment,
        })
    }
}

/// The right to write one sample's views and masks into its slot of a batch.
pub struct SlotGrant {
    batch: Arc<OpenBatch>,
    slot: usize,
    assembly: Arc<Assembly>,
}

impl std::fmt::Debug for SlotGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGrant")
            .field("batch", &self.batch.number)
            .field("slot", &self.slot)
            .finish()
    }
}

impl SlotGrant {
    pub(crate) fn new(batch: Arc<OpenBatch>, slot: usize, assembly: Arc<Assembly>) -> Self {
        SlotGrant {
            batch,
            slot,
            assembly,
        }
    }

    /// Number of views (and of mask entries) in the batch.
    pub fn views(&self) -> usize {
        self.batch.views.len()
    }

    /// The sample's region of view `index`'s buffer: `height * width * 3` bytes, HWC.
    ///
    /// # Panics
    /// If `index` is not below [`views`](Self::views).
    pub fn view(&mut self, index: usize) -> &mut [u8] {
        let (base, per_sample) = self.batch.views[index];
        // SAFETY: see `OpenBatch`; the region `slot * per_sample ..` lies within the
        // buffer (capacity `batch_size * per_sample`) and is this grant's alone; `&mut
        // self` keeps two borrows of it from coexisting.
        unsafe { std::slice::from_raw_parts_mut(base.add(self.slot * per_sample), per_sample) }
    }

    /// The sample's part of view `index`'s masks, if that view has masks.
    ///
    /// # Panics
    /// If `index` is not below [`views`](Self::views).
    pub fn mask(&mut self, index: usize) -> Option<MaskSlot<'_>> {
        let p = self.batch.mask_ptrs[index]?;
        let slot = self.slot;
        let (n, k) = if p.indices {
            (p.num_patches, p.num_keep)
        } else {
            (0, 0)
        };
        // SAFETY: as for `view`: the vectors of `OpenBatch::masks` have `batch_size`
        // samples' worth of entries and stay put until the batch completes.
        unsafe {
            Some(MaskSlot {
                mask: std::slice::from_raw_parts_mut(
                    p.mask.add(slot * p.num_patches),
                    p.num_patches,
                ),
                ids_keep: std::slice::from_raw_parts_mut(p.ids_keep.add(slot * k), k),
                ids_restore: std::slice::from_raw_parts_mut(p.ids_restore.add(slot * n), n),
            })
        }
    }

    /// The sample's device draws for view `index`, when the batch carries them (device
    /// augmentation), else `None`.
    pub fn device_draws(&mut self, index: usize) -> Option<&mut DeviceDraws> {
        let base = *self.batch.augment_ptrs.get(index)?;
        // SAFETY: as for `view`: `OpenBatch::augment` holds `batch_size` draws per view and
        // stays put until the batch completes; this slot's entry is this grant's alone.
        Some(unsafe { &mut *base.add(self.slot) })
    }

    /// Record the slot's label and key and release it; sends the batch on if it was the last.
    pub(crate) fn finish(self, meta: SlotMeta, key: &str) {
        {
            let mut records = self.batch.records.lock().unwrap_or_else(|e| e.into_inner());
            records.meta[self.slot] = meta;
            records.keys.set(self.slot, key);
        }
        self.assembly.release(&self.batch);
    }
}
