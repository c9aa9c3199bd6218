//! Reusable batch buffers.
//!
//! Batches are large (a DINO batch of 64 is ~40 MB of u8) and made at hundreds per minute;
//! allocating each afresh costs page faults on every first touch. A pool hands out buffers
//! and takes them back when a [`PooledBuffer`] drops, so steady state allocates nothing.
//! The pool is bounded: when every buffer is in flight, `take` waits, which is also the
//! back-pressure that keeps memory flat when the consumer is slow.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex};

/// Prepares a pool's buffers for whoever consumes them: called once on each buffer right
/// after the pool allocates it, and once more just before the pool frees it.
///
/// The CUDA trainer page-locks the buffers with it (`cuMemHostRegister` in `prepare`,
/// `cuMemHostUnregister` in `release`): a pooled buffer never moves, is never freed before
/// the pool and is reused for every batch, so registering it once makes every upload of
/// every batch a DMA transfer from that memory. `release` runs only once every buffer is
/// back in the pool, so no loan (and no transfer from one) outlives the registration.
pub trait BufferHook: Send + Sync + std::fmt::Debug {
    /// Called on a buffer right after it is allocated.
    fn prepare(&self, buffer: &mut [u8]);
    /// Called on a buffer just before it is freed.
    fn release(&self, buffer: &mut [u8]);
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
    hook: Option<Arc<dyn BufferHook>>,
}

impl Drop for PoolInner {
    /// Every loan holds the pool, so by now every buffer is back in `free`.
    fn drop(&mut self) {
        if let Some(hook) = &self.hook {
            let free = self.free.get_mut().unwrap_or_else(|e| e.into_inner());
            for buffer in free.iter_mut() {
                hook.release(buffer);
            }
        }
    }
}

impl BufferPool {
    /// A pool of `count` buffers of `buffer_len` bytes, allocated up front.
    pub fn new(count: usize, buffer_len: usize) -> Self {
        Self::with_hook(count, buffer_len, None)
    }

    /// [`new`](Self::new), with `hook` preparing each buffer after allocation and
    /// releasing it before the pool frees it (see [`BufferHook`]).
    pub fn with_hook(count: usize, buffer_len: usize, hook: Option<Arc<dyn BufferHook>>) -> Self {
        let mut buffers: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; buffer_len]).collect();
        if let Some(hook) = &hook {
            for buf in &mut buffers {
                hook.prepare(buf);
            }
        }
        BufferPool {
            inner: Arc::new(PoolInner {
                free: Mutex::new(buffers),
                returned: Condvar::new(),
                buffer_len,
                count,
                hook,
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

/// Lets a loan be handed over as the owner of shared bytes (`bytes::Bytes::from_owner`),
/// which is how the trainer gives a batch buffer to the device without copying it.
impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
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

    /// Records the address of every buffer it prepares and releases.
    #[derive(Debug, Default)]
    struct Recorder {
        prepared: Mutex<Vec<usize>>,
        released: Mutex<Vec<usize>>,
    }

    impl BufferHook for Recorder {
        fn prepare(&self, buffer: &mut [u8]) {
            self.prepared.lock().unwrap().push(buffer.as_ptr() as usize);
        }
        fn release(&self, buffer: &mut [u8]) {
            self.released.lock().unwrap().push(buffer.as_ptr() as usize);
        }
    }

    #[test]
    fn the_hook_prepares_each_buffer_once_and_releases_it_after_the_last_loan() {
        let hook = Arc::new(Recorder::default());
        let pool = BufferPool::with_hook(3, 64, Some(hook.clone() as Arc<dyn BufferHook>));
        assert_eq!(hook.prepared.lock().unwrap().len(), 3);
        let loan = pool.take();
        let loan_address = loan.as_ptr() as usize;
        drop(pool);
        assert!(
            hook.released.lock().unwrap().is_empty(),
            "a buffer on loan keeps the pool (and its registration) alive"
        );
        drop(loan);
        let mut prepared = hook.prepared.lock().unwrap().clone();
        let mut released = hook.released.lock().unwrap().clone();
        prepared.sort_unstable();
        released.sort_unstable();
        assert_eq!(prepared, released, "every prepared buffer is released once");
        assert!(released.contains(&loan_address));
    }
}
