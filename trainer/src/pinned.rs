//! Page-locked batch buffers for CUDA uploads (`cuda` feature).
//!
//! cubecl 0.10 copies whatever host bytes it is given with `cuMemcpyHtoDAsync` (see
//! [`crate::feeder`]). From pageable memory that call is a host-side copy through the
//! driver's bounce buffer on cubecl's device thread; from page-locked memory it is a DMA
//! transfer that returns at once. [`PageLock`] is the loader's
//! [`BufferHook`](tessera_pipeline::pool::BufferHook): it registers each pooled batch buffer
//! with the driver once (`cuMemHostRegister`), when the pool allocates it, and unregisters it
//! when the pool frees it, after every loan, and so every transfer from it, has ended.
//!
//! Registration is an optimisation, never a requirement: a buffer the driver refuses to
//! register (an old driver, a locked-memory limit) stays pageable, which is slower and
//! equally correct, and the refusal is logged once.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::{result, sys};
use tessera_pipeline::pool::BufferHook;

use crate::device::DeviceError;

/// Page-locks pooled buffers for CUDA device `index` (see the module doc).
#[derive(Debug)]
pub struct PageLock {
    index: usize,
    device: sys::CUdevice,
    /// The device's primary context: the one cubecl runs on. A registration needs a
    /// current context; `CU_MEMHOSTREGISTER_PORTABLE` makes it count for every context.
    context: Context,
    /// Addresses of the buffers registered, so that only those are unregistered.
    registered: Mutex<HashSet<usize>>,
    /// Whether a refused registration was logged already.
    warned: AtomicBool,
}

/// A `CUcontext` handle. The driver API lets any thread make a context current, so sharing
/// the handle between threads is sound.
#[derive(Debug, Clone, Copy)]
struct Context(sys::CUcontext);
// SAFETY: a CUcontext is an opaque driver handle valid on every thread of the process.
unsafe impl Send for Context {}
// SAFETY: as above; the hook only passes it to `cuCtxSetCurrent`.
unsafe impl Sync for Context {}

impl PageLock {
    /// Retain device `index`'s primary context. Call [`crate::device::cuda_device`] first:
    /// it checks that a driver is present, without which the driver calls here panic.
    pub fn new(index: usize) -> Result<Self, DeviceError> {
        let init = |e: result::DriverError| DeviceError::Init {
            index,
            message: e.to_string(),
        };
        result::init().map_err(init)?;
        let ordinal = i32::try_from(index).map_err(|_| DeviceError::Init {
            index,
            message: "device index out of range".into(),
        })?;
        let device = result::device::get(ordinal).map_err(init)?;
        // SAFETY: `device` comes from `device::get`; the retain is undone in `Drop`.
        let context = unsafe { result::primary_ctx::retain(device) }.map_err(init)?;
        Ok(PageLock {
            index,
            device,
            context: Context(context),
            registered: Mutex::new(HashSet::new()),
            warned: AtomicBool::new(false),
        })
    }

    fn make_current(&self) -> Result<(), result::DriverError> {
        // SAFETY: the context is retained for as long as `self` lives.
        unsafe { result::ctx::set_current(self.context.0) }
    }

    fn warn_once(&self, what: &str, err: result::DriverError) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "CUDA device {}: {what} failed ({err}); batch buffers stay pageable, uploads are slower",
                self.index
            );
        }
    }
}

impl BufferHook for PageLock {
    fn prepare(&self, buffer: &mut [u8]) {
        if buffer.is_empty() {
            return;
        }
        if let Err(err) = self.make_current() {
            return self.warn_once("making the primary context current", err);
        }
        // SAFETY: `buffer` is a live allocation of `buffer.len()` bytes that the pool never
        // moves or frees before calling `release` on it.
        let registered = unsafe {
            sys::cuMemHostRegister_v2(
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                sys::CU_MEMHOSTREGISTER_PORTABLE,
            )
        }
        .result();
        match registered {
            Ok(()) => {
                let mut set = self.registered.lock().unwrap_or_else(|e| e.into_inner());
                set.insert(buffer.as_ptr() as usize);
            }
            Err(err) => self.warn_once("page-locking a batch buffer", err),
        }
    }

    fn release(&self, buffer: &mut [u8]) {
        let was_registered = {
            let mut set = self.registered.lock().unwrap_or_else(|e| e.into_inner());
            set.remove(&(buffer.as_ptr() as usize))
        };
        if !was_registered {
            return;
        }
        let unregistered = self.make_current().and_then(|()| {
            // SAFETY: this address was registered by `prepare` and is unregistered once.
            unsafe { sys::cuMemHostUnregister(buffer.as_mut_ptr().cast()) }.result()
        });
        if let Err(err) = unregistered {
            tracing::warn!(
                "CUDA device {}: unregistering a batch buffer failed: {err}",
                self.index
            );
        }
    }
}

impl Drop for PageLock {
    fn drop(&mut self) {
        // SAFETY: balances the retain in `new`; cubecl holds its own reference.
        if let Err(err) = unsafe { result::primary_ctx::release(self.device) } {
            tracing::warn!(
                "CUDA device {}: releasing the primary context: {err}",
                self.index
            );
        }
    }
}
