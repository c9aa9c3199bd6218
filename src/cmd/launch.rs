//! Data-parallel launch: where this process sits (`--rank`/`--world-size`/`--master`, else
//! torchrun's or Slurm's environment), and `--devices N`, which starts the N processes of a
//! one-machine job itself and watches them.
//!
//! The launcher puts its ranks in a process group of their own and forwards SIGINT, SIGTERM
//! and SIGUSR1 to them once (a terminal's Ctrl-C would otherwise reach every rank and the
//! launcher, and a rank takes a second signal for "quit now"). When a rank exits with an
//! error, the launcher names it, stops the others (SIGTERM, then SIGKILL after the grace
//! period) and exits with that rank's status.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tessera_trainer::distributed::{Master, World};

/// Flags of a data-parallel run.
#[derive(clap::Args, Debug, Clone)]
pub struct DistArgs {
    /// Start N training processes on this machine (one per device: `cuda:0..N`, or N CPU
    /// processes) and train data-parallel; the global batch is N x the recipe's.
    #[arg(long, value_name = "N", conflicts_with_all = ["rank", "world_size"])]
    pub devices: Option<u32>,
    /// This process's rank (default: `RANK` or `SLURM_PROCID`).
    #[arg(long, requires = "world_size")]
    pub rank: Option<u32>,
    /// Number of processes (default: `WORLD_SIZE` or `SLURM_NTASKS`).
    #[arg(long, requires = "rank")]
    pub world_size: Option<u32>,
    /// Rank 0's `HOST:PORT` (default: `MASTER_ADDR`:`MASTER_PORT`, or Slurm's first node).
    #[arg(long, value_name = "HOST:PORT")]
    pub master: Option<String>,
    /// Seconds a step's all-reduce waits for the other ranks before this rank stops with an
    /// error (a rank died or hangs).
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0)]
    pub collective_timeout: f64,
}

impl DistArgs {
    /// One process, whatever the environment says (the demo).
    pub fn alone() -> Self {
        DistArgs {
            devices: None,
            rank: Some(0),
            world_size: Some(1),
            master: None,
            collective_timeout: 120.0,
        }
    }

    /// The world this process belongs to: flags first, then the launcher's environment.
    pub fn world(&self) -> anyhow::Result<World> {
        let env = World::from_env().context("reading the launch environment")?;
        let master = match &self.master {
            Some(m) => Some(m.parse::<Master>()?),
            None => env.master.clone(),
        };
        let world = match (self.rank, self.world_size) {
            (Some(rank), Some(world_size)) => World::new(rank, world_size, rank, master)?,
            _ => World { master, ..env },
        };
        Ok(world)
    }
}

/// `--devices N`: runs this same command as N ranks on 127.0.0.1 and waits for them.
pub fn spawn_local(n: u32, dist: &DistArgs) -> anyhow::Result<()> {
    if n == 0 {
        bail!("--devices must be at least 1");
    }
    let exe = std::env::current_exe().context("finding the tessera executable")?;
    let args = args_without_devices(std::env::args().skip(1));
    let port = free_ports(n as u16 + 1).context("finding free ports on 127.0.0.1")?;
    eprintln!(
        "starting {n} ranks on 127.0.0.1 (orchestrator on port {port}, rank tensor services \
         on {}..{})",
        port + 1,
        port + n as u16
    );
    let mut children: Vec<Option<Child>> = Vec::with_capacity(n as usize);
    for rank in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting rank {rank} ({})", exe.display()))?;
        children.push(Some(child));
    }
    let pids: Vec<i32> = children.iter().flatten().map(|c| c.id() as i32).collect();
    let forwarded = forward_signals(pids.clone())?;

    let grace = Duration::from_secs_f64(dist.collective_timeout.max(1.0) + 30.0);
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; n as usize];
    let mut failed: Option<(usize, ExitStatus)> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        // Every rank that failed since the last look (see `cause_of_failure`).
        let mut ended_now: Vec<(usize, ExitStatus)> = Vec::new();
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Some(status) = child.try_wait().context("waiting for a rank")? {
                statuses[rank] = Some(status);
                *slot = None;
                if !status.success() && status.code() != Some(super::train::EXIT_STOPPED) {
                    ended_now.push((rank, status));
                }
            }
        }
        if failed.is_none()
            && let Some(cause) = cause_of_failure(&ended_now)
        {
            eprintln!(
                "rank {} exited with {}: stopping the other ranks",
                cause.0,
                describe(cause.1)
            );
            for &(rank, status) in ended_now.iter().filter(|(r, _)| *r != cause.0) {
                eprintln!("rank {rank} exited with {} as well", describe(status));
            }
            failed = Some(cause);
            for (r, pid) in pids.iter().enumerate() {
                if statuses[r].is_none() {
                    signal(*pid, libc::SIGTERM);
                }
            }
            kill_at = Some(Instant::now() + grace);
        }
        if children.iter().all(Option::is_none) {
            break;
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for (r, pid) in pids.iter().enumerate() {
                if statuses[r].is_none() {
                    eprintln!(
                        "rank {r} did not stop within {} s: killing it",
                        grace.as_secs()
                    );
                    signal(*pid, libc::SIGKILL);
                }
            }
            kill_at = None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some((rank, status)) = failed {
        bail!(
            "rank {rank} of {n} failed ({}); the last complete checkpoint is intact",
            describe(status)
        );
    }
    let stopped = statuses
        .iter()
        .flatten()
        .any(|s| s.code() == Some(super::train::EXIT_STOPPED));
    if stopped || forwarded.load(Ordering::SeqCst) != 0 {
        std::process::exit(super::train::EXIT_STOPPED);
    }
    Ok(())
}

/// Which of the ranks that failed in one look at the children to name as the cause: one
/// that a signal ended, else the lowest rank. A rank killed outright makes the others fail
/// within milliseconds (their all-reduce loses its peer), so both are often seen at once,
/// and the one with the collective error is the consequence.
fn cause_of_failure(failed: &[(usize, ExitStatus)]) -> Option<(usize, ExitStatus)> {
    failed
        .iter()
        .find(|(_, status)| status.signal().is_some())
        .or(failed.first())
        .copied()
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "an unknown status".into(),
    }
}

/// The command line without `--devices N` / `--devices=N`.
fn args_without_devices(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_next = false;
    for a in args {
        if skip_next {
            skip_next = false;
        } else if a == "--devices" {
            skip_next = true;
        } else if !a.starts_with("--devices=") {
            out.push(a);
        }
    }
    out
}

/// A port `p` such that `p..p+count` are free on every local address right now, chosen
/// below the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`).
///
/// Ports in that range are the ones the kernel hands to every outgoing connection and to
/// `bind(0)`: a run picked there can be taken by another program's connection between this
/// check and the ranks binding it, and a rank's server then cannot listen. Below the range
/// only a program that names a port itself can take it.
fn free_ports(count: u16) -> std::io::Result<u16> {
    let (ephemeral_low, _) = ephemeral_port_range();
    let low = 10_000u16;
    let high = ephemeral_low.saturating_sub(count);
    if high <= low {
        return Err(std::io::Error::other(format!(
            "no room for {count} ports between {low} and the ephemeral range starting at \
             {ephemeral_low}"
        )));
    }
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..200 {
        let base = rng.random_range(low..high);
        let all_free =
            (base..base + count).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    Err(std::io::Error::other(format!(
        "no run of {count} free ports found between {low} and {high}"
    )))
}

/// The kernel's ephemeral port range; Linux's default where it cannot be read (other
/// systems' ranges, such as IANA's 49152..65535, start higher).
fn ephemeral_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(str::parse::<u16>);
            Some((bounds.next()?.ok()?, bounds.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

/// Sends `sig` to process `pid`.
fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; a pid that already exited yields ESRCH.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Forwards SIGINT, SIGTERM and SIGUSR1 to the ranks; returns the last one forwarded (0 none).
fn forward_signals(pids: Vec<i32>) -> anyhow::Result<Arc<AtomicI32>> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .context("installing the signal handlers")?;
    let last = Arc::new(AtomicI32::new(0));
    let seen = Arc::clone(&last);
    std::thread::Builder::new()
        .name("tessera-launch-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig != SIGUSR1 {
                    seen.store(sig, Ordering::SeqCst);
                }
                for pid in &pids {
                    signal(*pid, sig);
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_ended_by_a_signal_is_named_before_one_that_exited_with_an_error() {
        let error = ExitStatus::from_raw(1 << 8); // exit status 1
        let killed = ExitStatus::from_raw(9); // SIGKILL
        assert_eq!(cause_of_failure(&[]), None);
        assert_eq!(
            cause_of_failure(&[(0, error), (1, killed)]),
            Some((1, killed))
        );
        assert_eq!(
            cause_of_failure(&[(0, error), (2, error)]),
            Some((0, error))
        );
    }

    #[test]
    fn free_ports_lie_below_the_ephemeral_range_and_can_be_bound() {
        let (ephemeral_low, ephemeral_high) = ephemeral_port_range();
        assert!(ephemeral_low <= ephemeral_high);
        let base = free_ports(3).unwrap();
        assert!(base >= 10_000 && base + 3 <= ephemeral_low, "{base}");
        // Free now (the check just ran), unless another program took one in between.
        let held: Vec<_> = (base..base + 3)
            .map(|p| std::net::TcpListener::bind(("0.0.0.0", p)))
            .collect();
        assert!(held.iter().all(Result::is_ok), "{held:?}");
    }

    #[test]
    fn devices_flag_is_removed() {
        let a = |v: &[&str]| args_without_devices(v.iter().map(|s| s.to_string()));
        assert_eq!(
            a(&["train", "--devices", "2", "--synthetic"]),
            ["train", "--synthetic"]
        );
        assert_eq!(a(&["train", "--devices=4", "-q"]), ["train", "-q"]);
    }
}
