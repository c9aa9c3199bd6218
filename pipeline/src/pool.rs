//! Reusable batch buffers.
//!
//! Batches are large (a DINO batch of 64 is ~40 MB of u8) and made at hundreds per minute;
//! allocating each afresh costs page faults on every first touch. A pool hands out buffers
//! and takes them back when a [`PooledBuffer`] drops, so steady state allocates nothing.
//! The pool is bounded: when every buffer is in flight, `take` waits, which is also the
//! back-pressure that keeps memory flat when the consumer is slow.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex};

/// A fixed set of equally sized byte buffers.
#[derive(Debug, Clone)]
pub struct BufferPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    free: Mutex<Vec<Vec<u8>>>,
    returned: Condvar,
    buffer_len: usize,
}

impl BufferPool {
    /// A pool of `count` buffers of `buffer_len` bytes, allocated up front.
    pub fn new(count: usize, buffer_len: usize) -> Self {
        let free = (0..count).map(|_| vec![0u8; buffer_len]).collect();
        BufferPool {
            inner: Arc::new(PoolInner { free: Mutex::new(free), returned: Condvar::new(), buffer_len }),
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
                return PooledBuffer { buf, pool: Arc::clone(&self.inner) };
            }
            free = self.inner.returned.wait(free).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Buffers currently free (for statistics).
    pub fn free_count(&self) -> usize {
        self.inner.free.lock().unwrap_or_else(|e| e.into_inner()).len()
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
