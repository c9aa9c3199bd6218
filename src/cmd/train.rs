//! `tessera train`: pretrain a model from a recipe on shards (or synthetic batches).
//!
//! Parses and checks the recipe (pipeline's `[data]`/`[[views]]`, trainer's `[model]`/
//! `[train]`/`[optim]`), resolves the derived numbers and prints them, then hands over to
//! `tessera_trainer::train::run` with the loader (ordered, so resume is exact) as the batch
//! source. Progress and the run summary go to stderr; with `--json`, the summary (and the
//! split of the cores) also goes to stdout as one JSON object. Each start is recorded in the
//! run directory's `invocations.jsonl` (command line, machine) for `tessera report`.
//!
//! Signals (issue #14; docs/TRAINING.md, "Preemption and signals"): SIGINT (Ctrl-C) or
//! SIGTERM (Slurm and Kubernetes preemption, the end of a time limit) once: the step in
//! flight finishes, a checkpoint is written, and the program exits with [`EXIT_STOPPED`]
//! after printing the summary; a second one exits at once with 128 + the signal (the last
//! complete checkpoint stays valid). SIGUSR1 (Slurm's `--signal`): a checkpoint after the
//! step in flight, and the run goes on.
//!
//! Data parallel (issue #13; docs/TRAINING.md, "Many devices and machines"): `--devices N`
//! starts N ranks through [`super::launch`]; a rank (flags or the launch environment) joins
//! the others before its first step; only rank 0 prints the recipe, writes the run
//! directory and prints the `--json` summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_pipeline::Recipe;
use tessera_pipeline::loader::{Loader, LoaderOptions};
use tessera_pipeline::pool::BufferHook;
use tessera_trainer::config::{ResolvedTrainConfig, TrainerConfig};
use tessera_trainer::device::DeviceKind;
use tessera_trainer::feeder::HostUpload;
use tessera_trainer::metrics::{Smoothed, StepMetrics};
use tessera_trainer::synthetic::SyntheticSource;
use tessera_trainer::train::{self, Observer, RunOptions, RunSummary, StopReason};

/// Exit status of a run that SIGINT or SIGTERM stopped after its step and checkpoint:
/// sysexits' `EX_TEMPFAIL` ("try again later"); rerun with `--resume` to continue. Not 0,
/// so that a job scheduler does not take a preempted run for a finished one.
pub const EXIT_STOPPED: i32 = 75;

use super::threads::{self, Requested, ThreadSplit};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Recipe: a builtin name (`mae_vit_tiny_cifar`, `simclr_resnet18_cifar`, ...) or a TOML file.
    #[arg(long, required_unless_present = "list_methods", default_value = "")]
    pub config: String,
    /// Print every method with its paper and recipes, and exit.
    #[arg(long)]
    pub list_methods: bool,
    /// Shards to read: a path, glob, brace range (`train-{000..009}.tar`) or `@list` file.
    #[arg(long, required_unless_present_any = ["synthetic", "list_methods"])]
    pub shards: Option<String>,
    /// Train on synthetic batches of the recipe's shape instead of shards (measures the
    /// device alone).
    #[arg(long, conflicts_with = "shards")]
    pub synthetic: bool,
    /// Run length in optimiser steps, replacing the recipe's (the warmup is scaled with it).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Stop after this many steps in all (with a checkpoint), keeping the schedule's length.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Stop after this many minutes of training (with a checkpoint).
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Run directory. Default `runs/<recipe name>`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the newest intact checkpoint in `--out` (damaged newer ones are named
    /// and passed over).
    #[arg(long)]
    pub resume: bool,
    /// CPU workers of the input pipeline. Default: the recipe's, else chosen with the
    /// compute threads from the cores (on CPU a quarter of them, at least one).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Compute threads of burn's CPU kernels (rayon's pool). Default: `RAYON_NUM_THREADS`,
    /// else every core on CPU.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Micro-batch size, replacing the recipe's `data.batch_size` and its effective batch
    /// (`train.batch_size`): one micro-batch a step (the lr follows it).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// `cpu`, `cuda` or `cuda:N` (`cuda` needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Leave the batch buffers pageable on CUDA instead of page-locking them (slower
    /// uploads; for comparison).
    #[arg(long)]
    pub pageable_buffers: bool,
    /// Steps between reconstruction pictures (0 = only at the end). Default: a tenth of the run.
    #[arg(long)]
    pub picture_every: Option<u64>,
    /// Steps between checkpoints, replacing the recipe's `train.checkpoint_every`.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub dist: crate::cmd::launch::DistArgs,
    /// Print the run summary as one JSON object to stdout.
    #[arg(long)]
    pub json: bool,
    /// Remote shards (`s3://`, ...): cache, retries, read-ahead.
    #[command(flatten)]
    pub remote: super::remote::RemoteArgs,
}

/// A prepared run: the recipe, its resolved numbers and where the batches come from.
pub struct Prepared {
    pub recipe: Recipe,
    pub resolved: ResolvedTrainConfig,
    pub shards: Vec<PathBuf>,
    pub options: RunOptions,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.list_methods {
        list_methods();
        return Ok(());
    }
    if let Some(n) = args.dist.devices {
        return crate::cmd::launch::spawn_local(n, &args.dist);
    }
    args.remote.apply()?;
    let mut prepared = prepare(&args)?;
    if prepared.options.world.is_main() {
        print_resolved(&prepared);
    }
    let signals = install_signal_handlers()?;
    prepared.options.checkpoint_now = Arc::clone(&signals.checkpoint);
    let main = prepared.options.world.is_main();
    // burn-collective prints its connection attempts on stdout; stdout is for the summary.
    let stdout = if prepared.options.world.is_distributed() {
        Some(StdoutToStderr::start()?)
    } else {
        None
    };
    let (summary, threads) = train(&args, prepared, &signals.stop)?;
    if let Some(s) = stdout {
        s.restore()?;
    }
    if args.json && main {
        println!(
            "{}",
            serde_json::to_string_pretty(&Report {
                summary: &summary,
                threads
            })?
        );
    }
    if summary.stopped == StopReason::Interrupted {
        std::io::stdout().flush()?;
        std::process::exit(EXIT_STOPPED);
    }
    Ok(())
}

/// While it lives, file descriptor 1 points at stderr; [`StdoutToStderr::restore`] puts the
/// real stdout back.
struct StdoutToStderr {
    saved: i32,
}

impl StdoutToStderr {
    fn start() -> anyhow::Result<Self> {
        std::io::stdout().flush()?;
        // SAFETY: dup/dup2 on the process's own standard descriptors.
        let saved = unsafe { libc::dup(1) };
        if saved < 0 || unsafe { libc::dup2(2, 1) } < 0 {
            bail!("redirecting stdout: {}", std::io::Error::last_os_error());
        }
        Ok(Self { saved })
    }

    fn restore(self) -> anyhow::Result<()> {
        std::io::stdout().flush()?;
        // SAFETY: as above; `saved` is the descriptor `start` duplicated.
        if unsafe { libc::dup2(self.saved, 1) } < 0 {
            bail!("restoring stdout: {}", std::io::Error::last_os_error());
        }
        unsafe { libc::close(self.saved) };
        Ok(())
    }
}

/// The printed summary: the run's, and how the cores were shared.
#[derive(serde::Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    summary: &'a RunSummary,
    threads: ThreadSplit,
}

/// Parse and check everything up front, before any work starts.
pub fn prepare(args: &Args) -> anyhow::Result<Prepared> {
    let mut recipe =
        Recipe::load(&args.config).with_context(|| format!("loading recipe `{}`", args.config))?;
    let recipe_micro_batch = recipe.data.batch_size;
    if let Some(b) = args.batch_size {
        if b == 0 {
            bail!("--batch-size must be at least 1");
        }
        recipe.data.batch_size = b;
    }
    let mut trainer = TrainerConfig::from_recipe(&recipe)
        .with_context(|| format!("recipe `{}`", recipe.source))?;
    if let Some(b) = args.batch_size {
        // The effective batch before and after `--batch-size`.
        let (before, after) = match trainer.train.batch_size.take() {
            Some(effective) => {
                eprintln!(
                    "note: --batch-size replaces the recipe's effective batch \
                     (train.batch_size): one micro-batch a step"
                );
                (effective, b)
            }
            None => {
                let accum = trainer.train.accum_steps.unwrap_or(1);
                (recipe_micro_batch * accum, b * accum)
            }
        };
        // The peak lr follows the batch (`base_lr x batch / 256`); the floor keeps its
        // ratio to the peak, so the schedule keeps its shape at any batch.
        if trainer.optim.lr.is_none() && trainer.optim.min_lr > 0.0 && before != after {
            trainer.optim.min_lr *= after as f64 / before as f64;
            eprintln!(
                "note: min_lr scaled with the batch to {:.3e}",
                trainer.optim.min_lr
            );
        }
    }
    if let Some(steps) = args.steps {
        if steps == 0 {
            bail!("--steps must be at least 1");
        }
        override_steps(&mut trainer.train, steps);
    }
    let shards = match &args.shards {
        Some(spec) => {
            tessera_shards::source::resolve(spec).with_context(|| format!("shards `{spec}`"))?
        }
        None => Vec::new(),
    };
    let world = args.dist.world()?;
    // Per rank: each reads every world_size-th shard.
    let samples_per_epoch = count_samples(&shards).map(|n| n / u64::from(world.world_size));
    let mut resolved = trainer
        .resolve(&recipe, samples_per_epoch, world.world_size)
        .with_context(|| format!("recipe `{}`", recipe.source))?;
    if let Some(every) = args.checkpoint_every {
        resolved.checkpoint_every = every;
    }
    let name = Path::new(&recipe.source)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut options = RunOptions::new(
        args.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(name)),
    );
    options.resume = args.resume;
    options.collective_timeout = Duration::from_secs_f64(args.dist.collective_timeout.max(1.0));
    options.world = world;
    options.stop_after = args.stop_after;
    options.time_limit = args
        .minutes
        .map(|m| Duration::from_secs_f64(m.max(0.0) * 60.0));
    options.picture_every = args
        .picture_every
        .unwrap_or((resolved.total_steps() / 10).max(1));
    Ok(Prepared {
        recipe,
        resolved,
        shards,
        options,
    })
}

/// `--steps`: the run is `steps` long (whatever the recipe's length in epochs or steps, so
/// that epoch recipes run on synthetic data too) and the warmup keeps its share of the run.
fn override_steps(t: &mut tessera_trainer::config::TrainSection, steps: u64) {
    let warmup = match (t.warmup_steps, t.warmup_epochs, t.steps, t.epochs) {
        (Some(w), _, Some(total), _) => {
            (w as f64 * steps as f64 / total.max(1) as f64).round() as u64
        }
        (Some(w), _, None, _) => w.min(steps),
        (None, Some(w), _, Some(total)) => (w * steps as f64 / total).round() as u64,
        _ => 0,
    };
    t.steps = Some(steps);
    t.epochs = None;
    t.warmup_epochs = None;
    t.warmup_steps = Some(warmup);
}

/// Samples per epoch from the shard indexes; `None` when a shard has no index.
fn count_samples(shards: &[PathBuf]) -> Option<u64> {
    if shards.is_empty() {
        return None;
    }
    let mut total = 0;
    for shard in shards {
        match tessera_shards::index::ShardIndex::load_for(shard) {
            Ok(Some(index)) => total += index.samples.len() as u64,
            _ => return None,
        }
    }
    Some(total)
}

/// MAE's start-up printout: what the recipe turned into.
fn print_resolved(p: &Prepared) {
    let r = &p.resolved;
    eprintln!("recipe:           {}", r.recipe);
    eprintln!("method:           {}", r.method.name());
    let backbone = match &r.backbone {
        tessera_trainer::backbone::BackboneConfig::Vit(e) => format!(
            "ViT (dim {}, depth {}, heads {}, patch {}, img {})",
            e.embed_dim, e.depth, e.num_heads, e.patch_size, e.img_size
        ),
        other => format!(
            "{} ({} features)",
            other.arch_name().unwrap_or("custom"),
            other.num_features()
        ),
    };
    eprintln!("backbone:         {backbone}");
    if let tessera_trainer::objectives::MethodConfig::Mae(m) = &r.method {
        eprintln!(
            "decoder:          {} wide, {} deep; {:.0}% of patches masked",
            m.decoder_embed_dim,
            m.decoder_depth,
            m.mask_ratio * 100.0
        );
    }
    eprintln!(
        "optimizer:        {}",
        serde_json::to_string(&r.optim).unwrap_or_default()
    );
    eprintln!(
        "effective batch:  {} (micro-batch {} x accum {} x ranks {})",
        r.effective_batch, r.micro_batch, r.accum_steps, r.world_size
    );
    let precision = match r.precision {
        tessera_trainer::precision::Precision::F32 => "f32",
        tessera_trainer::precision::Precision::Bf16 => "bf16 matmuls, f32 master weights",
    };
    eprintln!("precision:        {precision}");
    eprintln!("base lr:          {:.3e}", r.base_lr);
    eprintln!(
        "actual lr:        {:.3e} (base lr x {} / 256)",
        r.lr(),
        r.effective_batch
    );
    eprintln!(
        "steps:            {} (warmup {})",
        r.total_steps(),
        r.schedule.warmup_steps
    );
    match (r.samples_per_epoch, r.steps_per_epoch) {
        (Some(n), Some(s)) => eprintln!(
            "data:             {} shards, {n} samples, {s} steps/epoch",
            p.shards.len()
        ),
        _ if p.shards.is_empty() => eprintln!("data:             synthetic batches"),
        _ => eprintln!(
            "data:             {} shards (not all indexed: epoch length unknown)",
            p.shards.len()
        ),
    }
    eprintln!("run directory:    {}", p.options.run_dir.display());
}

/// `--list-methods`: one block per method.
fn list_methods() {
    for m in tessera_trainer::objectives::list() {
        println!("{:<14} {}", m.name, m.paper);
        println!("{:<14} recipes: {}", "", m.recipes.join(", "));
    }
}

/// What the signals asked the loop for; it polls both between steps.
#[derive(Default)]
struct SignalFlags {
    /// SIGINT, SIGTERM: finish the step, write a checkpoint, stop.
    stop: Arc<AtomicBool>,
    /// SIGUSR1: write a checkpoint after the step and go on (the loop clears it).
    checkpoint: Arc<AtomicBool>,
}

/// Catches SIGINT, SIGTERM and SIGUSR1 on a thread of their own (signal-hook's iterator,
/// so the handling runs outside signal context and may print). The first SIGINT or
/// SIGTERM sets `stop`; a second exits at once with 128 + the signal; SIGUSR1 sets
/// `checkpoint`.
///
/// signal-hook rather than ctrlc (used before): ctrlc's `termination` feature would catch
/// SIGTERM too, but not SIGUSR1, and it cannot say which signal came.
fn install_signal_handlers() -> anyhow::Result<SignalFlags> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .context("installing the signal handlers")?;
    let flags = SignalFlags::default();
    let stop = Arc::clone(&flags.stop);
    let checkpoint = Arc::clone(&flags.checkpoint);
    std::thread::Builder::new()
        .name("tessera-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let name = match signal {
                    SIGINT => "SIGINT",
                    SIGTERM => "SIGTERM",
                    _ => "SIGUSR1",
                };
                if signal == SIGUSR1 {
                    checkpoint.store(true, Ordering::SeqCst);
                    eprintln!("\n{name}: writing a checkpoint after this step, then going on");
                } else if stop.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "\nsecond {name}: exiting now (the last complete checkpoint is intact)"
                    );
                    std::process::exit(128 + signal);
                } else {
                    eprintln!(
                        "\n{name}: finishing this step and writing a checkpoint \
                         (send it again to quit now)"
                    );
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(flags)
}

/// Train on the device `args.device` names, with the cores split between compute threads
/// and pipeline workers (returned with the summary).
pub fn train(
    args: &Args,
    prepared: Prepared,
    stop: &AtomicBool,
) -> anyhow::Result<(RunSummary, ThreadSplit)> {
    let mut kind: DeviceKind = args.device.parse()?;
    // `--device cuda` in a data-parallel job: one device per rank of this machine.
    if args.device == "cuda" && prepared.options.world.is_distributed() {
        kind = format!("cuda:{}", prepared.options.world.local_rank).parse()?;
    }
    let requested =
        Requested::from_env(args.threads, args.workers.or(prepared.recipe.data.workers));
    // Ranks on one machine share its cores (`--devices` and torchrun set LOCAL_WORLD_SIZE).
    let local_ranks = if prepared.options.world.is_distributed() {
        std::env::var("LOCAL_WORLD_SIZE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1)
    } else {
        1
    };
    let cores = (threads::available_cores() / local_ranks).max(1);
    let mut split = threads::choose(cores, kind, !args.synthetic, requested);
    threads::apply(&mut split);
    if kind == DeviceKind::Cpu {
        super::malloc::keep_freed_buffers();
    }
    if prepared.options.world.is_main() {
        eprintln!(
            "threads:          {} cores: {} compute threads, {} pipeline workers ({})",
            split.cores, split.compute_threads, split.pipeline_workers, split.chosen_by
        );
    }
    let workers = split.pipeline_workers;
    let summary = match kind {
        DeviceKind::Cpu => {
            train_on::<Autodiff<Flex>>(args, prepared, &Default::default(), None, workers, stop)
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda(index) => {
            let device = tessera_trainer::device::cuda_device(index)?;
            // Said before the wait, so that a quiet first step is not taken for a hang.
            tracing::info!(
                "cuda:{index}: the first step compiles each GPU kernel with NVRTC (12-26 s for \
                 MAE ViT-B/16 and DINO ViT-S/16 on an H200)"
            );
            let page_lock: Option<Arc<dyn BufferHook>> = if args.pageable_buffers {
                None
            } else {
                Some(Arc::new(tessera_trainer::pinned::PageLock::new(index)?))
            };
            train_on::<Autodiff<burn::backend::Cuda>>(
                args, prepared, &device, page_lock, workers, stop,
            )
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda(_) => Err(tessera_trainer::device::DeviceError::NotCompiled.into()),
    }?;
    Ok((summary, split))
}

/// `buffer_hook` prepares the batch buffers for the device (page-locks them on CUDA).
fn train_on<B>(
    args: &Args,
    prepared: Prepared,
    device: &B::Device,
    buffer_hook: Option<Arc<dyn BufferHook>>,
    workers: usize,
    stop: &AtomicBool,
) -> anyhow::Result<RunSummary>
where
    B: AutodiffBackend,
    B::InnerBackend: HostUpload,
{
    let Prepared {
        recipe,
        resolved,
        shards,
        options,
    } = prepared;
    if options.world.is_main() {
        super::report::Invocation::record(&options.run_dir, &args.device)?;
    }
    let mut bar = Bar::new(args.quiet || !options.world.is_main());
    let (rank, world_size) = (options.world.rank, options.world.world_size);
    let summary = if args.synthetic {
        let seed = resolved.seed;
        train::run::<B, _, std::convert::Infallible>(
            &resolved,
            device,
            |state| {
                Ok(SyntheticSource::for_rank(
                    &recipe,
                    seed,
                    state,
                    buffer_hook,
                    rank,
                    world_size,
                ))
            },
            &options,
            stop,
            &mut bar,
        )
    } else {
        train::run::<B, _, _>(
            &resolved,
            device,
            |state| {
                let mut opts = LoaderOptions::new(shards, recipe);
                opts.graph.workers = workers.max(1);
                opts.graph.epochs = None; // the schedule decides when to stop
                opts.graph.ordered = true;
                opts.graph.rank = rank;
                opts.graph.world_size = world_size;
                opts.graph.resume = state;
                opts.graph.buffer_hook = buffer_hook;
                Loader::start(opts)
            },
            &options,
            stop,
            &mut bar,
        )
    };
    bar.finish();
    let summary = summary.with_context(|| format!("training in {}", options.run_dir.display()))?;
    // Rank 0 speaks for all: its images/s counts every rank's samples.
    if options.world.is_main() {
        eprintln!(
            "stopped ({:?}) at step {}: {:.1} images/s, data wait {:.1}%; checkpoint {}",
            summary.stopped,
            summary.steps_done,
            summary.images_per_second,
            summary.data_wait_fraction * 100.0,
            summary
                .checkpoint
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    Ok(summary)
}

/// The progress bar: loss, lr, images/s and data-wait share, smoothed.
struct Bar {
    bar: Option<ProgressBar>,
    loss: Smoothed,
    ips: Smoothed,
    wait: Smoothed,
}

impl Bar {
    fn new(quiet: bool) -> Self {
        Bar {
            bar: (!quiet).then(ProgressBar::hidden),
            loss: Smoothed::default(),
            ips: Smoothed::default(),
            wait: Smoothed::default(),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Bar {
    fn started(&mut self, first_step: u64, last_step: u64) {
        if let Some(bar) = &mut self.bar {
            *bar = ProgressBar::new(last_step);
            bar.set_position(first_step);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
        }
    }

    fn step(&mut self, m: &StepMetrics) {
        let loss = self.loss.update(m.loss);
        let ips = self.ips.update(m.images_per_second);
        let wait = self.wait.update(m.data_wait_fraction);
        if let Some(bar) = &self.bar {
            bar.set_position(m.step + 1);
            bar.set_message(format!(
                "loss {loss:.4} lr {:.2e} {ips:.0} img/s wait {:.0}%",
                m.lr,
                wait * 100.0
            ));
        }
    }

    fn event(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => tracing::info!("{message}"),
        }
    }
}
