//! Parallel work, delivered in order: N worker threads process items `start..end` and one
//! consumer (the calling thread) receives every result in item order.
//!
//! Why in order: shard contents, de-duplication and resume points must not depend on
//! thread timing. Memory stays bounded: a worker may not start item `i` until the consumer
//! has taken item `i - window`, so at most `window` results wait for the consumer however
//! slow it is, and the channel between them is bounded too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, mpsc};

/// Run `process` over `range` on `workers` threads (each with its own state from
/// `make_state`) and hand the results to `consume` in order. When `consume` fails, the
/// workers stop and its error is returned; when a worker thread dies before the last
/// item, the error made by `on_panic` is.
pub fn ordered_map<S, T, E>(
    range: std::ops::Range<usize>,
    workers: usize,
    window: usize,
    make_state: impl Fn() -> S + Sync,
    process: impl Fn(&mut S, usize) -> T + Sync,
    mut consume: impl FnMut(usize, T) -> Result<(), E>,
    on_panic: impl FnOnce() -> E,
) -> Result<(), E>
where
    T: Send,
{
    let workers = workers.max(1);
    let window = window.max(workers);
    let next = AtomicUsize::new(range.start);
    let taken = Mutex::new(range.start);
    let advanced = Condvar::new();
    let abort = AtomicBool::new(false);
    let (tx, rx) = mpsc::sync_channel::<(usize, T)>(window);

    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, taken, advanced, abort) = (&next, &taken, &advanced, &abort);
            let (make_state, process, end) = (&make_state, &process, range.end);
            scope.spawn(move || {
                let mut state = make_state();
                loop {
                    let item = next.fetch_add(1, Ordering::Relaxed);
                    if item >= end || abort.load(Ordering::Relaxed) {
                        return;
                    }
                    {
                        let mut guard = taken.lock().unwrap_or_else(|p| p.into_inner());
                        while item >= *guard + window && !abort.load(Ordering::Relaxed) {
                            guard = advanced.wait(guard).unwrap_or_else(|p| p.into_inner());
                        }
                    }
                    if abort.load(Ordering::Relaxed) {
                        return;
                    }
                    let result = process(&mut state, item);
                    if tx.send((item, result)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);

        let stop = |abort: &AtomicBool| {
            abort.store(true, Ordering::Relaxed);
            let _guard = taken.lock().unwrap_or_else(|p| p.into_inner());
            advanced.notify_all();
        };
        let mut pending = BTreeMap::new();
        let mut expected = range.start;
        while expected < range.end {
            let Ok((item, result)) = rx.recv() else {
                // Every sender is gone before the last item: a worker panicked.
                stop(&abort);
                return Err(on_panic());
            };
            pending.insert(item, result);
            while let Some(result) = pending.remove(&expected) {
                if let Err(err) = consume(expected, result) {
                    stop(&abort);
                    drop(rx);
                    return Err(err);
                }
                expected += 1;
                let mut guard = taken.lock().unwrap_or_else(|p| p.into_inner());
                *guard = expected;
                advanced.notify_all();
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_in_order_whatever_the_timing() {
        let mut got = Vec::new();
        let result: Result<(), ()> = ordered_map(
            3..200,
            4,
            8,
            || 0u64,
            |calls, i| {
                *calls += 1;
                std::thread::sleep(std::time::Duration::from_micros(
                    ((i * 7919) % 13) as u64 * 50,
                ));
                i * 2
            },
            |i, value| {
                got.push((i, value));
                Ok(())
            },
            || (),
        );
        assert!(result.is_ok());
        assert_eq!(got, (3..200).map(|i| (i, i * 2)).collect::<Vec<_>>());
    }

    #[test]
    fn a_consumer_error_stops_the_workers() {
        let processed = AtomicUsize::new(0);
        let result = ordered_map(
            0..10_000,
            2,
            4,
            || (),
            |_, i| {
                processed.fetch_add(1, Ordering::Relaxed);
                i
            },
            |i, _| if i == 10 { Err("full disk") } else { Ok(()) },
            || "panic",
        );
        assert_eq!(result, Err("full disk"));
        assert!(processed.load(Ordering::Relaxed) < 100);
    }
}
