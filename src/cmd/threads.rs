//! How `tessera train` shares the CPU cores between burn's compute threads and the input
//! pipeline's workers (issue #11, "Threads").
//!
//! On the CPU backend (burn-flex) every matmul, convolution and large element-wise op is a
//! fork-join over rayon's global pool, so the step is fastest with one compute thread per
//! core. The pipeline's workers decode and augment ahead of the step into a bounded queue:
//! they only run while the queue has room, so what they take from the cores is the data
//! path's share of the work, not their count. On CPU that share is small (decoding and
//! augmenting a CIFAR image costs about 0.05 ms of CPU, a ViT or ResNet step on it
//! 1 to 100 ms; `docs/PERFORMANCE.md`), so the split is: compute threads = all cores, and
//! one pipeline worker per four cores (at least one), which decode several times faster than
//! the step consumes. On CUDA the host only feeds the device: one core for the training loop
//! and its rayon pool, the rest for the workers.
//!
//! `--threads` and `--workers` replace either number; `RAYON_NUM_THREADS` also sets the
//! compute threads (rayon reads it). The split is printed at start-up and written into the
//! run summary.

use serde::Serialize;
use tessera_trainer::device::DeviceKind;

/// The cores and who gets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ThreadSplit {
    /// Cores the process may use (`std::thread::available_parallelism`).
    pub cores: usize,
    /// Threads of rayon's global pool: burn-flex's kernels run on them.
    pub compute_threads: usize,
    /// Input-pipeline workers (0 on synthetic batches: no pipeline).
    pub pipeline_workers: usize,
    /// Where the numbers came from: `auto`, `flags` or `RAYON_NUM_THREADS`.
    pub chosen_by: &'static str,
}

/// What the user asked for; `None` leaves the number to [`choose`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Requested {
    /// `--threads`.
    pub threads: Option<usize>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `RAYON_NUM_THREADS`, when set to a positive number.
    pub rayon_env: Option<usize>,
}

impl Requested {
    /// The flags plus `RAYON_NUM_THREADS` from the environment.
    pub fn from_env(threads: Option<usize>, workers: Option<usize>) -> Self {
        let rayon_env = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0);
        Requested {
            threads,
            workers,
            rayon_env,
        }
    }
}

/// The split for `cores` cores on `device`; `pipeline` is false on synthetic batches.
pub fn choose(cores: usize, device: DeviceKind, pipeline: bool, req: Requested) -> ThreadSplit {
    let cores = cores.max(1);
    let (auto_compute, auto_workers) = match device {
        DeviceKind::Cpu => (cores, cores.div_ceil(4)),
        DeviceKind::Cuda(_) => (1, (cores - 1).max(1)),
    };
    let compute_threads = req.threads.or(req.rayon_env).unwrap_or(auto_compute).max(1);
    let pipeline_workers = if pipeline {
        req.workers.unwrap_or(auto_workers).max(1)
    } else {
        0
    };
    let chosen_by = match (req.threads, req.rayon_env, req.workers) {
        (Some(_), _, _) | (None, None, Some(_)) => "flags",
        (None, Some(_), _) => "RAYON_NUM_THREADS",
        (None, None, None) => "auto",
    };
    ThreadSplit {
        cores,
        compute_threads,
        pipeline_workers,
        chosen_by,
    }
}

/// How many times an idle compute thread looks for work, yielding its core in between, before
/// it sleeps (rayon's default is 32; the option is this project's patch of rayon-core,
/// patches/README.md). A training step is thousands of forked operations with short serial
/// gaps between them (autodiff bookkeeping, small ops on one thread); at 32 rounds the other
/// threads are asleep by the next fork and each fork pays two wake-ups. 1024 rounds (at least
/// 0.15 ms of yields on a 2-core Xeon, where a yield with nothing else to run costs 0.15 µs)
/// bridge those gaps: +15% images/s on `mae_vit_tiny_cifar` and +12% on SimCLR's ResNet-18
/// at 2 threads, for the same CPU time (`docs/PERFORMANCE.md`, change 15). A yielding thread
/// gives its core to any other thread that wants it, so the pipeline's workers still run when
/// they have work (`docs/TRAINING.md`'s 30-minute CIFAR-10 run, one worker beside two compute
/// threads on two cores, waited on data for 0.03% of its step time).
pub const IDLE_ROUNDS: u32 = 1024;

/// Size rayon's global pool to `split.compute_threads`, the calling thread (the one that will
/// run the training loop) one of them when there are two or more. The pool can be sized only
/// once per process: when something already started it, its size stays and is written back
/// into the split, so that what is reported is what runs.
///
/// Why the calling thread joins the pool: burn-flex forks every large operation over rayon,
/// and a thread outside the pool hands each one to the pool and sleeps on a lock until it is
/// done, two thread wake-ups per operation, thousands per step. As a member it runs its own
/// share and the other threads steal the rest (+11% images/s on `mae_vit_tiny_cifar` at
/// 2 threads, `docs/PERFORMANCE.md`, change 14). With one compute thread it stays outside:
/// a pool whose only thread is the training loop would run jobs from other threads (the
/// uploader's casts, a collective's sums) only when the loop itself waits inside rayon.
///
/// Idle compute threads keep looking for work for [`IDLE_ROUNDS`] rounds before they sleep.
pub fn apply(split: &mut ThreadSplit) {
    let mut builder = rayon::ThreadPoolBuilder::new()
        .num_threads(split.compute_threads)
        .idle_rounds(IDLE_ROUNDS)
        .thread_name(|i| format!("compute-{i}"));
    if split.compute_threads >= 2 {
        builder = builder.use_current_thread();
    }
    let built = builder.build_global();
    if let Err(e) = built {
        tracing::debug!("rayon's global pool was already running: {e}");
    }
    split.compute_threads = rayon::current_num_threads();
}

/// The cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apply` makes the calling thread compute thread 0 from two threads on, and jobs from
    /// threads outside the pool still run while that thread is busy elsewhere (the other
    /// compute thread takes them); with one thread the caller stays outside. Rayon's global
    /// pool is built once per process, so the test runs itself again for each size.
    #[test]
    fn the_training_thread_computes_from_two_threads_on() {
        const NAME: &str = "cmd::threads::tests::the_training_thread_computes_from_two_threads_on";
        const VAR: &str = "TESSERA_TEST_COMPUTE_THREADS";
        if let Some(n) = std::env::var(VAR)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            let mut split = choose(n, DeviceKind::Cpu, false, Requested::default());
            apply(&mut split);
            assert_eq!(split.compute_threads, n);
            let expected = (n >= 2).then_some(0);
            assert_eq!(rayon::current_thread_index(), expected);
            // A fork from this thread runs on the pool's threads.
            let (a, b) = rayon::join(rayon::current_thread_index, rayon::current_thread_index);
            assert!(a.is_some() && b.is_some());
            // A fork from another thread completes while this one waits outside rayon
            // (a pool whose only thread is this one would leave it waiting for ever).
            let other = std::thread::spawn(|| rayon::join(|| 1, || 2));
            let waited = std::time::Instant::now();
            while !other.is_finished() {
                assert!(
                    waited.elapsed().as_secs() < 30,
                    "a fork from another thread hangs"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert_eq!(other.join().ok(), Some((1, 2)));
            return;
        }
        for n in [1, 2, 3] {
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--quiet", "--test-threads", "1"])
                .env(VAR, n.to_string())
                .status()
                .unwrap();
            assert!(status.success(), "the run with {n} compute threads failed");
        }
    }

    #[test]
    fn cpu_gives_compute_every_core_and_the_pipeline_a_quarter() {
        let s = choose(2, DeviceKind::Cpu, true, Requested::default());
        assert_eq!(
            (s.compute_threads, s.pipeline_workers, s.chosen_by),
            (2, 1, "auto")
        );
        let s = choose(16, DeviceKind::Cpu, true, Requested::default());
        assert_eq!((s.compute_threads, s.pipeline_workers), (16, 4));
        let s = choose(16, DeviceKind::Cpu, false, Requested::default());
        assert_eq!(s.pipeline_workers, 0, "synthetic batches need no workers");
    }

    #[test]
    fn cuda_gives_the_pipeline_all_but_one_core() {
        let s = choose(16, DeviceKind::Cuda(0), true, Requested::default());
        assert_eq!((s.compute_threads, s.pipeline_workers), (1, 15));
        let s = choose(1, DeviceKind::Cuda(0), true, Requested::default());
        assert_eq!(s.pipeline_workers, 1);
    }

    #[test]
    fn flags_and_environment_replace_the_automatic_numbers() {
        let req = Requested {
            threads: None,
            workers: Some(3),
            rayon_env: Some(5),
        };
        let s = choose(8, DeviceKind::Cpu, true, req);
        assert_eq!((s.compute_threads, s.pipeline_workers), (5, 3));
        assert_eq!(s.chosen_by, "RAYON_NUM_THREADS");
        let req = Requested {
            threads: Some(2),
            ..req
        };
        let s = choose(8, DeviceKind::Cpu, true, req);
        assert_eq!((s.compute_threads, s.chosen_by), (2, "flags"));
        let zero = Requested {
            threads: Some(0),
            workers: Some(0),
            rayon_env: None,
        };
        let s = choose(8, DeviceKind::Cpu, true, zero);
        assert_eq!((s.compute_threads, s.pipeline_workers), (1, 1));
    }
}
