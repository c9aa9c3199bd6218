//! Reusable batch buffers.
//!
//! Batches are large (a DINO batch of 64 is ~40 MB of u8) and made at hundreds per minute;
//! allocating each afresh costs page faults on every first touch. A pool hands out buffers
//! and takes them back when a [`PooledBuffer`] drops, so steady state allocates nothing.
//! The pool is bounded: when every buffer is in flight, `take` waits, which is also the
//! back-pressure that keeps memory flat when the consumer is slow.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex};

/// Called once on every pooled buffer after allocation (e.g. to page-lock it for CUDA).
#[derive(Clone)]
pub struct BufferHook(pub Arc<dyn Fn(&mut [u8]) + Send + Sync>);

impl std::fmt::Debug for BufferHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BufferHook")
    }
}

/// A fixed set of equally sized byte buffers.
#[derive(Debug, Clone)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    /// Buffers not on loan.
    free: Mutex<Vec<Vec<u8>>>,
    returned: Condvar,
    buffer_len: usize,
    count: usize,
}

impl BufferPool {
    /// A pool of `count` buffers of `buffer_len` bytes, allocated up front.
    pub fn new(count: usize, buffer_len: usize) -> Self {
        Self::with_hook(count, buffer_len, None)
    }

    /// [`new`](Self::new), calling `hook` once on each buffer right after allocation.
    ///
    /// Meant for page-locking the buffers under CUDA (`cuMemHostRegister`): a pooled
    /// buffer never moves, is never freed before the pool, and is reused for every batch,
    /// so registering it once would make every upload of a batch a DMA transfer. Nothing
    /// installs such a hook yet: the trainer copies each view out of the pool before
    /// uploading it, so pinning the pool alone would gain nothing, and unregistering
    /// would need a second hook when the pool is dropped (see `tessera_trainer::feeder`).
    pub fn with_hook(count: usize, buffer_len: usize, hook: Option<&BufferHook>) -> Self {
        let mut buffers: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; buffer_len]).collect();
        if let Some(hook) = hook {
            for buf in &mut buffers {
                (hook.0)(buf.as_mut_slice());
            }
        }
        BufferPool {
            inner: Arc::new(PoolInner {
                free: Mutex::new(buffers),
                returned: Condvar::new(),
                buffer_len,
                count,
            }),
        }
    }

    /// Length of every buffer in this pool.
    pub fn buffer_len(&self) -> usize {
        self.inner.buffer_len
    }

    /// Take a buffer, waiting until one is returned if all are in use.
    pub fn take(&self) -> PooledBuffer {
        let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(buf) = free.pop() {
                return PooledBuffer {
                    buf,
                    pool: Arc::clone(&self.inner),
                };
            }
            free = self
                .inner
                .returned
                .wait(free)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Take a free buffer if there is one, without waiting.
    pub fn try_take(&self) -> Option<PooledBuffer> {
        let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
        let buf = free.pop()?;
        Some(PooledBuffer {
            buf,
            pool: Arc::clone(&self.inner),
        })
    }

    /// Buffers currently free (for statistics).
    pub fn free_count(&self) -> usize {
        self.inner
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Buffers this pool owns in all.
    pub fn capacity(&self) -> usize {
        self.inner.count
    }
}

/// A buffer on loan from a [`BufferPool`]; goes back on drop.
#[derive(Debug)]
pub struct PooledBuffer {
    buf: Vec<u8>,
    pool: Arc<PoolInner>,
}

impl Deref for PooledBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut free = self.pool.free.lock().unwrap_or_else(|e| e.into_inner());
        free.push(buf);
        self.pool.returned.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_return_to_the_pool() {
        let pool = BufferPool::new(2, 16);
        let a = pool.take();
        let b = pool.take();
        assert_eq!(pool.free_count(), 0);
        drop(a);
        assert_eq!(pool.free_count(), 1);
        let c = pool.take();
        assert_eq!(c.len(), 16);
        drop((b, c));
        assert_eq!(pool.free_count(), 2);
    }
}
