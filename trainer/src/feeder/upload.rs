//! Host batch → device tensors: u8 NHWC in, normalised f32 NCHW out, masks as Int/Float.
//!
//! # Host memory: no copy, page-locked on CUDA
//!
//! Each view's pooled buffer is handed to the backend as it is (`Bytes::from_shared` over
//! the loan, no copy) and goes back to the pipeline's pool once the device has read it:
//! [`HostUpload::release_host_buffers`] runs at the end of every [`Uploader::upload`], so
//! the pool's accounting, and with it the pipeline's back-pressure, is what it is without
//! a device. What the CUDA runtime does with such bytes (cubecl 0.10, burn 0.21), read from
//! `cubecl-runtime-0.10.0/src/client.rs`, `cubecl-common-0.10.0/src/stream_id.rs`,
//! `cubecl-cuda-0.10.0/src/compute/command.rs` and `cubecl-runtime-0.10.0/src/
//! memory_management/drop_queue/queue.rs`:
//!
//! - **One stream per OS thread.** `StreamId::current()` is a thread-local id, mapped onto
//!   a pool of CUDA streams. Tensors created on the uploader thread are written on its
//!   stream; their first use on the training thread's stream makes the server insert a
//!   cross-stream event wait, so upload and compute overlap.
//! - **No pinned staging of uploads.** `create_tensor` copies only file-backed `Bytes` into
//!   pinned memory; any other `Bytes` go straight to `cuMemcpyHtoDAsync`. From pageable
//!   memory the driver stages through its own bounce buffer and returns only once the host
//!   side is copied, on cubecl's single device thread, delaying the training thread's
//!   kernel launches (a ViT-B batch, 256 × 224² × 3 u8 = 38.5 MB, is several ms of copy).
//!   So the trainer page-locks the pool's buffers itself (`crate::pinned`, installed as the
//!   loader's `BufferHook`), and the copy becomes an asynchronous DMA transfer.
//! - **The bytes live on in a drop queue.** The server keeps every uploaded `Bytes` until a
//!   fence recorded at a later flush of that stream has passed; flushes happen on their own
//!   only after 64 uploads or 64 MiB. A pooled buffer held there would starve the pool and
//!   stall the pipeline, so the CUDA `release_host_buffers` waits for the uploader's stream
//!   on the uploader thread and then flushes it twice, which frees them.

use burn::prelude::*;
use burn::tensor::{AllocationProperty, Bytes, DType, TensorData};
use tessera_pipeline::batch::{MaskBatch, ViewBatch};
use tessera_pipeline::transforms::DeviceDraws;
use tessera_pipeline::{Batch, Keys, PipelineState};

use super::FeedError;

/// ImageNet channel statistics, as used by MAE, DINO and timm (`IMAGENET_DEFAULT_MEAN/STD`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Per-channel normalisation applied on the device: `(x / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// Channel means on the 0..1 scale (R, G, B).
    pub mean: [f32; 3],
    /// Channel standard deviations on the 0..1 scale (R, G, B). Must be positive.
    pub std: [f32; 3],
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }
}

/// A backend the [`Uploader`] can hand pooled host buffers to without copying them.
pub trait HostUpload: Backend {
    /// Called on the uploading thread after a batch's tensors were created from its pooled
    /// buffers; returns once the backend holds none of them any more, so that they are
    /// back in the pipeline's pool.
    fn release_host_buffers(device: &Self::Device) -> Result<(), FeedError>;
}

/// Flex copies or converts the bytes while the tensors are made (the u8 tensor itself is
/// consumed by the cast to f32), so nothing is held.
impl HostUpload for burn::backend::Flex {
    fn release_host_buffers(_device: &Self::Device) -> Result<(), FeedError> {
        Ok(())
    }
}

#[cfg(feature = "cuda")]
impl HostUpload for burn::backend::Cuda {
    fn release_host_buffers(device: &Self::Device) -> Result<(), FeedError> {
        use burn::cubecl::Runtime;
        use burn::cubecl::cuda::CudaRuntime;

        let failed = |e: &dyn std::fmt::Display| FeedError::Device(e.to_string());
        // Waits on this thread, for this thread's stream: the copy and the normalisation.
        <Self as Backend>::sync(device).map_err(|e| failed(&e))?;
        // The first flush puts this batch's bytes behind a fence (already passed, given the
        // sync); the second passes that fence and drops them.
        let client = CudaRuntime::client(device);
        client.flush().map_err(|e| failed(&e))?;
        client.flush().map_err(|e| failed(&e))
    }
}

/// A batch on the device, ready for an objective.
#[derive(Debug)]
pub struct DeviceBatch<B: Backend> {
    /// One normalised f32 tensor per recipe view. # Shapes `[n, 3, h, w]`.
    pub views: Vec<Tensor<B, 4>>,
    /// The masks of the views that have one (same order as `views`).
    pub masks: Vec<Option<DeviceMask<B>>>,
    /// Class label per sample, `-1` where the sample has none.
    pub labels: Vec<i64>,
    /// `__key__` of each sample.
    pub keys: Keys,
    /// The pipeline's state just after this batch: what a checkpoint taken after the step
    /// that consumes this batch must record.
    pub state: PipelineState,
    /// Number of samples.
    pub len: usize,
}

/// Patch masks of one view on the device.
///
/// # Shapes
/// `mask: [n, l]` (1 = masked/removed, 0 = visible), `ids_keep: [n, k]`,
/// `ids_restore: [n, l]` (MAE's `argsort(ids_shuffle)`).
#[derive(Debug)]
pub struct DeviceMask<B: Backend> {
    /// 1 = masked (hidden from the encoder, to be predicted), 0 = visible.
    pub mask: Tensor<B, 2>,
    /// Indices of the visible patches, ascending within a sample.
    pub ids_keep: Tensor<B, 2, Int>,
    /// Position of each patch in the (keep ++ masked) order (MAE masks; zeros for the
    /// kinds without indices, block and SimMIM).
    pub ids_restore: Tensor<B, 2, Int>,
}

/// Creates device tensors from host batches; holds the normalisation constants on the device.
#[derive(Debug)]
pub struct Uploader<B: Backend> {
    device: B::Device,
    /// `1 / (255 std)`. # Shapes `[1, 3, 1, 1]`.
    scale: Tensor<B, 4>,
    /// `-mean / std`. # Shapes `[1, 3, 1, 1]`.
    shift: Tensor<B, 4>,
}

impl<B: HostUpload> Uploader<B> {
    /// Constants for `normalize` on `device`.
    pub fn new(device: &B::Device, normalize: Normalize) -> Self {
        let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * normalize.std[c]));
        let shift: [f32; 3] = std::array::from_fn(|c| -normalize.mean[c] / normalize.std[c]);
        let as_tensor = |v: [f32; 3]| Tensor::<B, 1>::from_floats(v, device).reshape([1, 3, 1, 1]);
        Uploader {
            device: device.clone(),
            scale: as_tensor(scale),
            shift: as_tensor(shift),
        }
    }

    /// Upload one host batch. Its pooled buffers are back in the pool when this returns.
    pub fn upload(&self, batch: Batch) -> Result<DeviceBatch<B>, FeedError> {
        let Batch {
            views,
            masks,
            labels,
            keys,
            state,
            augment,
        } = batch;
        let len = views.first().map(|v| v.len).unwrap_or(labels.len());
        let views = views
            .into_iter()
            .enumerate()
            .map(|(i, view)| {
                let draws = augment
                    .as_ref()
                    .map(|a| a.get(i).map_or(&[][..], Vec::as_slice));
                self.upload_view(i, view, draws)
            })
            .collect::<Result<Vec<_>, _>>();
        let masks = masks
            .into_iter()
            .enumerate()
            .map(|(i, m)| m.map(|m| self.upload_mask(i, m)).transpose())
            .collect::<Result<Vec<_>, _>>();
        // Whatever failed above, the views that did go up must give their buffers back.
        B::release_host_buffers(&self.device)?;
        let (views, masks) = (views?, masks?);
        Ok(DeviceBatch {
            views,
            masks,
            labels,
            keys,
            state,
            len,
        })
    }

    /// u8 NHWC → f32 NCHW, augmented where the batch left that to the device
    /// ([`super::augment`]), normalised, all on the device. The pooled buffer itself is the
    /// tensor's host data (see the module doc).
    fn upload_view(
        &self,
        index: usize,
        view: ViewBatch,
        draws: Option<&[DeviceDraws]>,
    ) -> Result<Tensor<B, 4>, FeedError> {
        let ViewBatch {
            data,
            len,
            height,
            width,
        } = view;
        let bytes = len * height * width * 3;
        if data.len() < bytes {
            return Err(FeedError::ViewTooShort {
                view: index,
                bytes: data.len(),
                len,
                height,
                width,
            });
        }
        // The loan is the owner: the buffer goes back to the pool when the backend drops
        // these bytes. `Native` (not `Pinned`) because the bytes may be pageable; cubecl
        // 0.10 treats both alike (only `File` bytes are staged), and the driver finds out
        // for itself whether memory is registered.
        let shared = bytes::Bytes::from_owner(data).slice(..bytes);
        let host = TensorData::from_bytes(
            Bytes::from_shared(shared, AllocationProperty::Native),
            [len, height, width, 3],
            DType::U8,
        );
        let pixels = Tensor::<B, 4, Int>::from_data(host, (&self.device, DType::U8)); // [n, h, w, 3] u8
        let pixels = pixels.float().permute([0, 3, 1, 2]); // [n, 3, h, w]
        let pixels = match draws {
            Some(draws) if draws.len() != len => {
                return Err(FeedError::AugmentShape {
                    view: index,
                    draws: draws.len(),
                    len,
                });
            }
            Some(draws) => super::augment::apply_draws(pixels, draws, &self.device),
            None => pixels,
        };
        Ok(pixels * self.scale.clone() + self.shift.clone())
    }

    /// The mask vectors become the tensors' host data (moved, not copied).
    fn upload_mask(&self, index: usize, m: MaskBatch) -> Result<DeviceMask<B>, FeedError> {
        let (n, l, k) = (m.len, m.num_patches, m.num_keep);
        // Block and SimMIM masks carry no keep/restore indices (empty vectors).
        let indexed = !m.ids_restore.is_empty();
        if m.mask.len() != n * l
            || m.ids_keep.len() != n * k
            || (indexed && m.ids_restore.len() != n * l)
        {
            return Err(FeedError::MaskShape {
                view: index,
                len: n,
                num_patches: l,
                num_keep: k,
                mask_len: m.mask.len(),
                keep_len: m.ids_keep.len(),
                restore_len: m.ids_restore.len(),
            });
        }
        let mask = Tensor::<B, 2, Int>::from_data(
            TensorData::new(m.mask, [n, l]),
            (&self.device, DType::U8),
        )
        .float();
        let ids_keep =
            Tensor::<B, 2, Int>::from_data(TensorData::new(m.ids_keep, [n, k]), &self.device);
        let ids_restore = if indexed {
            Tensor::<B, 2, Int>::from_data(TensorData::new(m.ids_restore, [n, l]), &self.device)
        } else {
            Tensor::<B, 2, Int>::zeros([n, l], &self.device)
        };
        Ok(DeviceMask {
            mask,
            ids_keep,
            ids_restore,
        })
    }
}
