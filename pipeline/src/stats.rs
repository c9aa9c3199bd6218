//! Counters every stage of the loader keeps, and the snapshot `tessera profile` reads.
//!
//! Each stage counts the items it finished and splits its threads' time three ways:
//! busy (doing its own work), blocked on input (waiting for the stage before it) and blocked
//! on output (waiting for room in the queue after it). A stage that is busy nearly all the
//! time is the bottleneck; one that mostly waits on its input is starved by the one before.
//! Queues are sampled periodically for depth. Everything is lock-free atomics except the
//! reject table, which is touched once per rejected sample.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Live counters of one stage, shared by all its threads.
#[derive(Debug)]
pub struct StageStats {
    name: &'static str,
    threads: usize,
    items: AtomicU64,
    busy_ns: AtomicU64,
    input_ns: AtomicU64,
    output_ns: AtomicU64,
}

/// What a thread of a stage is doing, for [`StageClock::switch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Its own work.
    Busy,
    /// Waiting for the stage before it.
    BlockedOnInput,
    /// Waiting for room after it.
    BlockedOnOutput,
}

impl StageStats {
    /// Count one finished item.
    pub fn item_done(&self) {
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `d` to the total of `activity`.
    pub fn add(&self, activity: Activity, d: Duration) {
        let ns = d.as_nanos() as u64;
        let counter = match activity {
            Activity::Busy => &self.busy_ns,
            Activity::BlockedOnInput => &self.input_ns,
            Activity::BlockedOnOutput => &self.output_ns,
        };
        counter.fetch_add(ns, Ordering::Relaxed);
    }

    /// A clock for one thread of this stage, starting busy.
    pub fn clock(self: &Arc<Self>) -> StageClock {
        StageClock {
            stage: Arc::clone(self),
            since: Instant::now(),
            activity: Activity::Busy,
        }
    }
}

/// Times one thread of a stage: call [`switch`](Self::switch) whenever it starts waiting or
/// working; the time since the last switch goes to the previous activity.
#[derive(Debug)]
pub struct StageClock {
    stage: Arc<StageStats>,
    since: Instant,
    activity: Activity,
}

impl StageClock {
    /// Charge the time since the last switch to the current activity and start `next`.
    pub fn switch(&mut self, next: Activity) {
        let now = Instant::now();
        self.stage.add(self.activity, now - self.since);
        self.since = now;
        self.activity = next;
    }

    /// The stage's counters.
    pub fn stage(&self) -> &StageStats {
        &self.stage
    }
}

impl Drop for StageClock {
    fn drop(&mut self) {
        self.switch(Activity::Busy);
    }
}

/// A queue whose depth is sampled.
struct QueueGauge {
    name: &'static str,
    capacity: usize,
    len: Box<dyn Fn() -> usize + Send + Sync>,
    samples: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
}

impl std::fmt::Debug for QueueGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueGauge")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// All counters of one loader.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    stages: Mutex<Vec<Arc<StageStats>>>,
    queues: Mutex<Vec<Arc<QueueGauge>>>,
    rejects: Mutex<BTreeMap<&'static str, u64>>,
    /// Samples that reached a batch.
    pub samples: AtomicU64,
    /// Batches handed to the consumer.
    pub batches: AtomicU64,
    /// Shards that ended in an error (truncated, unreadable) after their good samples.
    pub shard_errors: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            stages: Mutex::default(),
            queues: Mutex::default(),
            rejects: Mutex::default(),
            samples: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            shard_errors: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Register a stage run by `threads` threads.
    pub fn stage(&self, name: &'static str, threads: usize) -> Arc<StageStats> {
        let stage = Arc::new(StageStats {
            name,
            threads: threads.max(1),
            items: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            input_ns: AtomicU64::new(0),
            output_ns: AtomicU64::new(0),
        });
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&stage));
        stage
    }

    /// Register a queue of `capacity` whose current length `len` reports.
    pub fn queue(
        &self,
        name: &'static str,
        capacity: usize,
        len: impl Fn() -> usize + Send + Sync + 'static,
    ) {
        let gauge = Arc::new(QueueGauge {
            name,
            capacity,
            len: Box::new(len),
            samples: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        });
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(gauge);
    }

    /// Sample every queue's depth once (the loader calls this periodically).
    pub fn sample_queues(&self) {
        for q in self.queues.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let len = (q.len)() as u64;
            q.samples.fetch_add(1, Ordering::Relaxed);
            q.sum.fetch_add(len, Ordering::Relaxed);
            q.max.fetch_max(len, Ordering::Relaxed);
        }
    }

    /// Count one rejected sample under `reason`.
    pub fn reject(&self, reason: &'static str) {
        *self
            .rejects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// A consistent-enough copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let elapsed = self.started.elapsed();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let stages = self
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| {
                let total = secs * s.threads as f64;
                let frac =
                    |c: &AtomicU64| (c.load(Ordering::Relaxed) as f64 / 1e9 / total).min(1.0);
                StageSnapshot {
                    name: s.name.to_string(),
                    threads: s.threads,
                    items: s.items.load(Ordering::Relaxed),
                    busy_fraction: frac(&s.busy_ns),
                    blocked_on_input_fraction: frac(&s.input_ns),
                    blocked_on_output_fraction: frac(&s.output_ns),
                }
            })
            .collect();
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|q| {
                let n = q.samples.load(Ordering::Relaxed);
                QueueSnapshot {
                    name: q.name.to_string(),
                    capacity: q.capacity,
                    depth: (q.len)(),
                    mean_depth: if n == 0 {
                        0.0
                    } else {
                        q.sum.load(Ordering::Relaxed) as f64 / n as f64
                    },
                    max_depth: q.max.load(Ordering::Relaxed) as usize,
                }
            })
            .collect();
        let rejects = self
            .rejects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        StatsSnapshot {
            elapsed_seconds: elapsed.as_secs_f64(),
            samples: self.samples.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            shard_errors: self.shard_errors.load(Ordering::Relaxed),
            rejects,
            stages,
            queues,
        }
    }
}

/// A copy of a loader's counters at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// Seconds since the loader started.
    pub elapsed_seconds: f64,
    /// Samples delivered in batches.
    pub samples: u64,
    /// Batches delivered.
    pub batches: u64,
    /// Shards that ended in an error after their complete samples.
    pub shard_errors: u64,
    /// Rejected samples by reason.
    pub rejects: BTreeMap<String, u64>,
    /// Stages in pipeline order.
    pub stages: Vec<StageSnapshot>,
    /// Queues in pipeline order.
    pub queues: Vec<QueueSnapshot>,
}

impl StatsSnapshot {
    /// All rejected samples.
    pub fn rejected(&self) -> u64 {
        self.rejects.values().sum()
    }
}

/// One stage's counters; fractions are of `elapsed * threads`.
#[derive(Debug, Clone, Serialize)]
pub struct StageSnapshot {
    pub name: String,
    pub threads: usize,
    pub items: u64,
    pub busy_fraction: f64,
    pub blocked_on_input_fraction: f64,
    pub blocked_on_output_fraction: f64,
}

/// One queue's depth: now, mean and max of the periodic samples.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSnapshot {
    pub name: String,
    pub capacity: usize,
    pub depth: usize,
    pub mean_depth: f64,
    pub max_depth: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_splits_time_between_activities() {
        let stats = Stats::default();
        let stage = stats.stage("decode", 1);
        {
            let mut clock = stage.clock();
            std::thread::sleep(Duration::from_millis(20));
            clock.switch(Activity::BlockedOnInput);
            std::thread::sleep(Duration::from_millis(20));
            clock.switch(Activity::Busy);
            clock.stage().item_done();
        }
        stats.reject("decode-error");
        stats.reject("decode-error");
        stats.reject("missing-image");
        let depth = Arc::new(AtomicU64::new(3));
        let d = Arc::clone(&depth);
        stats.queue("samples", 8, move || d.load(Ordering::Relaxed) as usize);
        stats.sample_queues();
        depth.store(5, Ordering::Relaxed);
        stats.sample_queues();
        let snap = stats.snapshot();
        assert_eq!(snap.rejected(), 3);
        assert_eq!(snap.rejects["decode-error"], 2);
        let s = &snap.stages[0];
        assert_eq!(s.items, 1);
        assert!(
            s.busy_fraction > 0.2 && s.blocked_on_input_fraction > 0.2,
            "{s:?}"
        );
        assert!(s.busy_fraction + s.blocked_on_input_fraction <= 1.0);
        assert_eq!(snap.queues[0].max_depth, 5);
        assert!((snap.queues[0].mean_depth - 4.0).abs() < 1e-9);
    }
}
