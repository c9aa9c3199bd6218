//! The collective: burn-collective's all-reduce between one process per device, run on a
//! thread of its own so that a rank that died shows as a timeout, never as a hang.
//!
//! burn-collective 0.21 (burn's own collective, the same version as burn) has a local level
//! (threads of one process) and a global level (processes, over WebSocket, peer-to-peer
//! tensor transfers, coordinated by an orchestrator). Tessera runs one process per device,
//! so every process is a "node" with one device: rank 0 also hosts the orchestrator on
//! `master.port`, and rank `r` serves its tensors on `master.port + 1 + r`.
//!
//! burn-collective waits without a deadline. Every operation is handed to a worker thread
//! and waited for with a timeout: a peer that stopped answering turns into
//! [`CollectiveError::Timeout`] naming the operation, and the process exits with it (the
//! worker, blocked for good, does not keep it alive).
//!
//! When a peer dies, the all-reduce fails with [`CollectiveError`] (the patched
//! burn-collective returns `PeerLost`), but burn-communication's data service, serving the
//! dead peer's downloads, panics on the websocket reset and the default panic hook prints a
//! backtrace straight to stderr, without taking stderr's lock, so its text lands in the
//! middle of other messages. [`quiet_network_panics`] makes such panics one warning line
//! each, through the log.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use super::World;

/// A failed collective operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CollectiveError {
    /// No answer within the timeout: another rank stopped, crashed or hangs.
    #[error(
        "rank {rank}: {what} got no answer from the other ranks within {secs} s: a rank stopped, \
         crashed or hangs (its own log says which and why)",
        secs = after.as_secs()
    )]
    Timeout {
        /// This rank.
        rank: u32,
        /// The operation (`"all-reduce of step 12"`).
        what: String,
        /// The timeout.
        after: Duration,
    },
    /// burn-collective refused or failed.
    #[error("rank {rank}: {what} failed in burn-collective: {message}")]
    Failed {
        /// This rank.
        rank: u32,
        /// The operation.
        what: String,
        /// burn-collective's error, formatted.
        message: String,
    },
}

/// Makes a panic raised inside burn-collective or burn-communication (their network
/// tasks and the collective's own thread, when a peer is gone) a one-line warning in the
/// log instead of the default hook's message and backtrace; every other panic goes to the
/// hook that was there before. Installed once per process.
fn quiet_network_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info.location();
            let in_network = location.is_some_and(|l| {
                let file = l.file();
                file.contains("burn-collective") || file.contains("burn-communication")
            });
            if !in_network {
                return previous(info);
            }
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let thread = std::thread::current();
            tracing::warn!(
                "burn-collective thread `{}` stopped: {payload} ({})",
                thread.name().unwrap_or("unnamed"),
                location
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_default()
            );
        }));
    });
}

/// One request to the worker thread.
enum Request<B: Backend> {
    AllReduce(FloatTensor<B>),
}

/// The worker's answer: registration first, then one per all-reduce.
type Reply<B> = Result<Option<FloatTensor<B>>, String>;

/// This process's membership of the collective.
///
/// Shared (`&self`, `Sync`): the step's gradient exchange and the global-batch operations
/// inside the forward and backward passes ([`super::GlobalBatch`]) use the same one, one
/// operation at a time. The first failure poisons it: every later operation returns that
/// error at once instead of waiting out another timeout.
pub struct Collective<B: Backend> {
    rank: u32,
    timeout: Duration,
    channel: Mutex<Channel<B>>,
    failure: Mutex<Option<CollectiveError>>,
    /// Wall time spent in all-reduces so far, in nanoseconds.
    spent_ns: AtomicU64,
    _worker: JoinHandle<()>,
}

/// The two ends of the worker's channels, used under one lock.
struct Channel<B: Backend> {
    requests: SyncSender<Request<B>>,
    replies: Receiver<Reply<B>>,
}

impl<B: Backend> std::fmt::Debug for Collective<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collective")
            .field("rank", &self.rank)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<B: Backend> Collective<B> {
    /// Joins `world` (rank 0 first starts the orchestrator), waiting up to `join_timeout`
    /// for every rank to arrive. Operations afterwards time out after `timeout`.
    pub fn join(
        world: &World,
        device: &B::Device,
        join_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, CollectiveError> {
        let rank = world.rank;
        let failed = |message: String| CollectiveError::Failed {
            rank,
            what: "joining the collective".into(),
            message,
        };
        let master = world
            .master
            .clone()
            .ok_or_else(|| failed("no master address".into()))?;
        quiet_network_panics();
        if world.is_main() {
            start_orchestrator(master.port).map_err(|e| failed(e.to_string()))?;
        }
        let own_host = own_address(&master.host);
        let data_port = master
            .port
            .checked_add(1 + rank as u16)
            .ok_or_else(|| failed(format!("port {} + 1 + rank overflows", master.port)))?;
        let parse = |s: String| {
            s.parse()
                .map_err(|e: String| failed(format!("address `{s}`: {e}")))
        };
        let config = CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(world.world_size)
            .with_global_address(parse(format!("ws://{}:{}", master.host, master.port))?)
            .with_node_address(parse(format!("ws://{own_host}:{data_port}"))?)
            .with_data_service_port(data_port);

        let (requests, inbox) = sync_channel::<Request<B>>(1);
        let (outbox, replies) = sync_channel::<Reply<B>>(1);
        let peer = PeerId(0);
        let device = device.clone();
        let worker = std::thread::Builder::new()
            .name(format!("tessera-collective-{rank}"))
            .spawn(move || {
                let registered = burn_collective::register::<B>(peer, device, config)
                    .map(|()| None)
                    .map_err(|e| describe(&e));
                if outbox.send(registered).is_err() {
                    return;
                }
                while let Ok(Request::AllReduce(tensor)) = inbox.recv() {
                    let reply =
                        burn_collective::all_reduce::<B>(peer, tensor, ReduceOperation::Sum)
                            .map(Some)
                            .map_err(|e| describe(&e));
                    if outbox.send(reply).is_err() {
                        return;
                    }
                }
                let _ = burn_collective::finish_collective::<B>(peer);
            })
            .map_err(|e| failed(format!("starting the worker thread: {e}")))?;
        let collective = Collective {
            rank,
            timeout,
            channel: Mutex::new(Channel { requests, replies }),
            failure: Mutex::new(None),
            spent_ns: AtomicU64::new(0),
            _worker: worker,
        };
        {
            let channel = collective.lock_channel();
            collective.wait(&channel, "joining the collective", join_timeout)?;
        }
        Ok(collective)
    }

    /// This process's rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// The element-wise sum of `tensor` over all ranks. `what` names the operation in
    /// errors.
    pub fn all_reduce_sum(
        &self,
        tensor: Tensor<B, 1>,
        what: &str,
    ) -> Result<Tensor<B, 1>, CollectiveError> {
        if let Some(failure) = self.failure() {
            return Err(failure);
        }
        let channel = self.lock_channel();
        let began = Instant::now();
        let primitive = tensor.into_primitive().tensor();
        let result = if channel
            .requests
            .send(Request::AllReduce(primitive))
            .is_err()
        {
            Err(CollectiveError::Failed {
                rank: self.rank,
                what: what.into(),
                message: "the collective's worker thread is gone".into(),
            })
        } else {
            match self.wait(&channel, what, self.timeout) {
                Ok(Some(out)) => Ok(Tensor::from_primitive(TensorPrimitive::Float(out))),
                Ok(None) => Err(CollectiveError::Failed {
                    rank: self.rank,
                    what: what.into(),
                    message: "the worker answered without a tensor".into(),
                }),
                Err(e) => Err(e),
            }
        };
        let spent = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.spent_ns.fetch_add(spent, Ordering::Relaxed);
        if let Err(e) = &result {
            let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            failure.get_or_insert_with(|| e.clone());
        }
        result
    }

    /// Wall time spent in all-reduces since joining (waiting for the slowest rank
    /// included): the communication time of the run so far.
    pub fn time_spent(&self) -> Duration {
        Duration::from_nanos(self.spent_ns.load(Ordering::Relaxed))
    }

    /// The first operation that failed, if one did: the collective is unusable after it.
    pub fn failure(&self) -> Option<CollectiveError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock_channel(&self) -> std::sync::MutexGuard<'_, Channel<B>> {
        // A panic while holding the lock leaves the channel as it was: keep using it.
        self.channel.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait(
        &self,
        channel: &Channel<B>,
        what: &str,
        timeout: Duration,
    ) -> Result<Option<FloatTensor<B>>, CollectiveError> {
        match channel.replies.recv_timeout(timeout) {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(message)) => Err(CollectiveError::Failed {
                rank: self.rank,
                what: what.into(),
                message,
            }),
            Err(RecvTimeoutError::Timeout) => Err(CollectiveError::Timeout {
                rank: self.rank,
                what: what.into(),
                after: timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(CollectiveError::Failed {
                rank: self.rank,
                what: what.into(),
                message: "the collective's worker thread stopped (a panic inside \
                          burn-collective: a peer's connection broke)"
                    .into(),
            }),
        }
    }
}

/// burn-collective's error in words where Tessera knows a better sentence than its `Debug`.
fn describe(error: &burn_collective::CollectiveError) -> String {
    use burn_collective::{CollectiveError as E, GlobalCollectiveError as G};
    match error {
        E::Global(G::OwnServerUnavailable { address, cause }) => format!(
            "this rank's tensor service could not listen at {address} ({cause}); another \
             program may hold the port: rank r serves on MASTER_PORT + 1 + r, so choose \
             another MASTER_PORT (`--devices` picks new ports each run)"
        ),
        other => format!("{other:?}"),
    }
}

/// Starts burn-collective's orchestrator on a thread with its own runtime.
///
/// The orchestrator stops accepting connections on SIGINT/SIGTERM (burn-collective listens
/// for them itself); the runtime is kept alive after that so that the ranks' open
/// connections carry the last step and the checkpoint of a graceful stop.
fn start_orchestrator(port: u16) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("tessera-orchestrator")
        .build()?;
    std::thread::Builder::new()
        .name("tessera-orchestrator".into())
        .spawn(move || {
            runtime.block_on(async move {
                burn_collective::start_global_orchestrator(port).await;
                std::future::pending::<()>().await;
            });
        })?;
    Ok(())
}

/// The address other ranks reach this process at: the local address of a socket towards
/// the master (no packet is sent), `127.0.0.1` when the master is this machine or the
/// route cannot be found.
fn own_address(master_host: &str) -> String {
    if matches!(master_host, "127.0.0.1" | "localhost" | "::1") {
        return "127.0.0.1".into();
    }
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect((master_host, 9)).map(|()| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => "127.0.0.1".into(),
    }
}
