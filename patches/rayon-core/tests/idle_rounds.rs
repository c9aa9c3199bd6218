//! `ThreadPoolBuilder::idle_rounds`: pools that put idle threads to sleep at once, at the
//! default, or only after many rounds all run every job, forked from inside the pool or
//! injected from outside it while its threads are asleep or still looking.

use rayon_core::ThreadPoolBuilder;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

fn sum_by_halves(pool: &rayon_core::ThreadPool, lo: u64, hi: u64) -> u64 {
    if hi - lo <= 64 {
        return (lo..hi).sum();
    }
    let mid = (lo + hi) / 2;
    let (a, b) = pool.join(
        || sum_by_halves(pool, lo, mid),
        || sum_by_halves(pool, mid, hi),
    );
    a + b
}

#[test]
#[cfg_attr(any(target_os = "emscripten", target_family = "wasm"), ignore)]
fn every_job_runs_whatever_the_idle_rounds() {
    for rounds in [0, 32, 100_000] {
        let pool = ThreadPoolBuilder::new()
            .num_threads(3)
            .idle_rounds(rounds)
            .build()
            .unwrap();
        for _ in 0..50 {
            assert_eq!(
                sum_by_halves(&pool, 0, 10_000),
                49_995_000,
                "{rounds} rounds"
            );
        }
        // Jobs from outside, some after a pause long enough for threads to fall asleep.
        let ran = AtomicUsize::new(0);
        for i in 0..20 {
            if i % 5 == 0 {
                thread::sleep(Duration::from_millis(20));
            }
            pool.install(|| {
                pool.scope(|s| {
                    for _ in 0..4 {
                        s.spawn(|_| {
                            ran.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            });
        }
        assert_eq!(ran.load(Ordering::Relaxed), 80, "{rounds} rounds");
    }
}

#[test]
fn idle_rounds_are_clamped_below_the_counter_limit() {
    let builder = ThreadPoolBuilder::new().idle_rounds(u32::MAX);
    assert!(format!("{builder:?}").contains(&format!("idle_rounds: Some({})", u32::MAX - 1)));
    let pool = builder.num_threads(2).build().unwrap();
    assert_eq!(pool.join(|| 1, || 2), (1, 2));
}
