//! The recycled [`Sample`]s between the readers and the workers.
//!
//! A fixed set of samples bounds what everything from the parsers to the workers holds:
//! a parser takes a free sample to fill, and a worker (or the sequencer, for a sample it
//! skips) gives it back once decoded. Two choices keep the memory they hold flat over a
//! long run (issue 14's slow-consumer soak found RSS rising for minutes without them):
//!
//! - **Last in, first out.** The pool is sized for a full shuffle buffer plus every
//!   queue, but a run often needs far fewer samples at once (a data set smaller than the
//!   shuffle buffer, a consumer that keeps the queues short). Taking the most recently
//!   returned sample keeps the set of samples in use, and so the buffers that ever grow,
//!   as small as the run allows (and warm in cache). A first-in-first-out queue cycled
//!   through the whole pool, growing the buffers of every sample in it one by one.
//! - **Slack released on return** ([`Sample::release_slack`]): a buffer far larger than
//!   what it last held is freed, so one huge image does not pin its size in the pool.

use std::sync::{Arc, Condvar, Mutex};

use tessera_shards::Sample;

/// A bounded stack of free samples, shared by the threads of one loader.
#[derive(Debug, Clone)]
pub(crate) struct SamplePool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    returned: Condvar,
}

#[derive(Debug)]
struct State {
    free: Vec<Sample>,
    closed: bool,
}

impl SamplePool {
    /// A pool of `count` empty samples.
    pub fn new(count: usize) -> SamplePool {
        SamplePool {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    free: (0..count).map(|_| Sample::default()).collect(),
                    closed: false,
                }),
                returned: Condvar::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently returned sample, waiting for one if none is free; `None` once
    /// the pool is closed (the loader is shutting down).
    pub fn take(&self) -> Option<Sample> {
        let mut state = self.state();
        loop {
            if state.closed {
                return None;
            }
            if let Some(sample) = state.free.pop() {
                return Some(sample);
            }
            state = self
                .inner
                .returned
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Give a used sample back (its content is no longer needed).
    pub fn give(&self, mut sample: Sample) {
        sample.clear();
        sample.release_slack();
        self.state().free.push(sample);
        self.inner.returned.notify_one();
    }

    /// Wake every waiting `take` with `None`, now and from now on.
    pub fn close(&self) {
        self.state().closed = true;
        self.inner.returned.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_sample_given_back_is_the_first_taken() {
        let pool = SamplePool::new(3);
        let mut a = pool.take().unwrap();
        a.key.push('a');
        a.push_field("jpg").extend_from_slice(&[1; 100]);
        let address = a.fields()[0].data.as_ptr();
        let b = pool.take().unwrap();
        pool.give(b);
        pool.give(a);
        let mut again = pool.take().unwrap();
        assert!(
            again.is_empty() && again.key.is_empty(),
            "given back cleared"
        );
        assert_eq!(
            again.push_field("jpg").as_ptr(),
            address,
            "the most recent sample comes back, with its buffer"
        );
    }

    #[test]
    fn close_wakes_a_waiting_take() {
        let pool = SamplePool::new(1);
        let held = pool.take().unwrap();
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.take())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        pool.close();
        assert!(waiter.join().unwrap().is_none());
        pool.give(held);
        assert!(pool.take().is_none(), "closed stays closed");
    }
}
