//! The training loop: batches in, optimiser steps, metrics, pictures and checkpoints out.
//!
//! ```text
//! checkpoint::latest(run_dir)? ─► model + optimiser + step + PipelineState
//!   ─► start the source at that state ─► Feeder (uploader thread) ─► loop {
//!        train_step: schedule lookup ─► forward ─► non-finite check ─► backward (accumulate)
//!                    ─► clip (global or per parameter) ─► optimiser step ─► metrics
//!        metrics.jsonl, tb/ ◄─ every step;  pictures/ (and tb/) ◄─ every `picture_every`;
//!        tb/ pipeline stage shares ◄─ every `log_every`;
//!        checkpoint ◄─ every `checkpoint_every`, when asked (`checkpoint_now`), at the end,
//!                      on interrupt, on a non-finite loss
//!      } ─► loss.png, timing.json
//! ```
//!
//! Resume is exact: the checkpoint stores the pipeline's state after the last batch a finished
//! step consumed, the loader (ordered mode) continues from it, the masks come with the batches
//! and the schedule is a pure function of the step, so a resumed run computes the same losses
//! as one that never stopped. The loop itself draws no random numbers.
//!
//! The loop knows no method: it runs any [`Method`] (the recipe's `[objective]`, dispatched
//! once by [`MethodConfig::visit`]), which computes the loss of a micro-batch and updates
//! its own teacher, queue or centre after each optimiser step.
//!
//! `[train] precision` is applied to the model after it is built or restored
//! ([`Method::with_precision`]); the loop is the same for f32 and bf16, since gradients,
//! clipping, the optimiser and checkpoints see f32 parameters either way.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::backend::AutodiffBackend;
use tessera_pipeline::PipelineState;

use crate::checkpoint;
use crate::config::ResolvedTrainConfig;
use crate::feeder::{BatchSource, Feeder, HostUpload};
use crate::metrics::{MetricsLog, RunTiming, RunTotals, StepMetrics, read_metrics};
use crate::objectives::{Method, MethodConfig, MethodVisitor};
use crate::pictures::{encode_png, plot, save_png, write_atomically};
use crate::tensorboard::RunBoard;

mod clip;
mod options;
mod outcome;
mod step;

pub use options::{Observer, Quiet, RunOptions, layout};
pub use outcome::{RunSummary, StopReason, TrainError};
use step::{Requests, Run, StepError};

/// Train `config`'s method on batches from `start_source` (called with the state to resume
/// from, `None` for a fresh run). `stop` is polled between steps (the CLI sets it on SIGINT
/// and SIGTERM), and so is [`RunOptions::checkpoint_now`] (set on SIGUSR1).
pub fn run<B, S, E>(
    config: &ResolvedTrainConfig,
    device: &B::Device,
    start_source: impl FnOnce(Option<PipelineState>) -> Result<S, E>,
    options: &RunOptions,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    B::InnerBackend: HostUpload,
    S: BatchSource,
    E: std::error::Error + Send + Sync + 'static,
{
    let method: &MethodConfig = &config.method;
    method.visit::<B, _>(RunMethod {
        config,
        device,
        start_source,
        options,
        stop,
        observer,
        _source: PhantomData,
    })
}

/// [`run`] with the method's concrete type.
struct RunMethod<'a, B: AutodiffBackend, F, S, E> {
    config: &'a ResolvedTrainConfig,
    device: &'a B::Device,
    start_source: F,
    options: &'a RunOptions,
    stop: &'a AtomicBool,
    observer: &'a mut dyn Observer,
    _source: PhantomData<fn() -> (S, E)>,
}

impl<B, F, S, E> MethodVisitor<B> for RunMethod<'_, B, F, S, E>
where
    B: AutodiffBackend,
    B::InnerBackend: HostUpload,
    F: FnOnce(Option<PipelineState>) -> Result<S, E>,
    S: BatchSource,
    E: std::error::Error + Send + Sync + 'static,
{
    type Output = Result<RunSummary, TrainError>;

    fn visit<M: Method<B>>(self, method: &M) -> Self::Output {
        run_method::<B, M, S, E>(
            method.clone(),
            self.config,
            self.device,
            self.start_source,
            self.options,
            self.stop,
            self.observer,
        )
    }
}

fn run_method<B, M, S, E>(
    method: M,
    config: &ResolvedTrainConfig,
    device: &B::Device,
    start_source: impl FnOnce(Option<PipelineState>) -> Result<S, E>,
    options: &RunOptions,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<RunSummary, TrainError>
where
    B: AutodiffBackend,
    B::InnerBackend: HostUpload,
    M: Method<B>,
    S: BatchSource,
    E: std::error::Error + Send + Sync + 'static,
{
    let dir = &options.run_dir;
    // Rank 0 writes the run directory; the other ranks of a data-parallel run only read it.
    let main = options.world.is_main();
    if main {
        std::fs::create_dir_all(dir.join(layout::PICTURES)).map_err(|source| {
            TrainError::Config {
                path: dir.join(layout::PICTURES),
                source,
            }
        })?;
        write_config(dir, config)?;
    }

    let mut run = Run::<B, M>::start(method, config, device, options, observer)?;
    let distributed = run.sync.is_some();
    let communication_before = run.sync.as_ref().map(|s| s.collective().time_spent());
    let first_step = run.step;
    let metrics_path = dir.join(layout::METRICS);
    let mut log = match (main, first_step > 0) {
        (false, _) => None,
        (true, true) => Some(MetricsLog::resume(&metrics_path, first_step)?),
        (true, false) => Some(MetricsLog::create(&metrics_path)?),
    };
    let recipe = serde_json::to_string_pretty(config).unwrap_or_default();
    let mut board = if main {
        Some(RunBoard::open(dir, first_step, &recipe)?)
    } else {
        None
    };
    let picture_tag = format!("pictures/{}", config.method.name());

    let source = start_source(run.pipeline).map_err(|e| TrainError::Source(Box::new(e)))?;
    let pipeline_stats = source.stats();
    let mut feeder = Feeder::<B::InnerBackend>::start(
        source,
        device.clone(),
        options.normalize,
        options.feeder_depth,
    );

    let total = config.total_steps();
    let last = options.stop_after.map_or(total, |s| s.min(total));
    observer.started(first_step, last);
    let started = Instant::now();
    let mut totals = RunTotals::default();
    let mut pictures = Vec::new();
    let mut last_loss = None;
    let mut checkpoint_path = None;
    let mut step_began = Instant::now();
    // With other ranks, stop requests take effect through the step's exchange, so that all
    // ranks stop after the same step: what they agreed on after the last one.
    let mut agreed_stop: Option<StopReason> = None;
    let stopped = loop {
        if run.step >= total {
            break StopReason::Finished;
        }
        if run.step >= last {
            break StopReason::StepLimit;
        }
        if let Some(reason) = agreed_stop {
            break reason;
        }
        let time_up = options.time_limit.is_some_and(|t| started.elapsed() >= t);
        let stop_asked = stop.load(Ordering::Relaxed);
        if !distributed && stop_asked {
            break StopReason::Interrupted;
        }
        if !distributed && time_up {
            break StopReason::TimeLimit;
        }
        let requests = Requests {
            stop: stop_asked || time_up,
            checkpoint: options.checkpoint_now.swap(false, Ordering::Relaxed),
        };

        // Data: `accum_steps` uploaded micro-batches, timing the wait for each.
        let mut micro = Vec::with_capacity(config.accum_steps);
        let mut data_wait = Duration::ZERO;
        for _ in 0..config.accum_steps {
            match feeder.next_batch() {
                Some((batch, waited)) => {
                    data_wait += waited;
                    micro.push(batch?);
                }
                None => break,
            }
        }
        if micro.len() < config.accum_steps {
            break StopReason::EndOfData;
        }

        let due_picture = (options.picture_every > 0
            && (run.step + 1) % options.picture_every == 0)
            || run.step + 1 == last;
        let out = match run.train_step(micro, due_picture, requests, options) {
            Ok(out) => out,
            Err(StepError::NonFinite { loss, lr }) => {
                let path = run.save(dir)?;
                return Err(TrainError::NonFiniteLoss {
                    step: run.step,
                    loss,
                    lr,
                    checkpoint: path,
                });
            }
            Err(StepError::Train(e)) => return Err(e),
        };

        // Metrics: one record per step, time measured end to end (data wait included).
        let now = Instant::now();
        let mut m = StepMetrics::new(
            run.step - 1,
            out.epoch,
            out.loss,
            out.lr,
            out.images,
            now - step_began,
            data_wait,
        );
        m.weight_decay = Some(out.weight_decay);
        m.momentum = out.momentum;
        m.parts = out
            .parts
            .iter()
            .map(|(name, value)| (name.to_string(), *value))
            .collect();
        if let Some(log) = &mut log {
            log.append(&m)?;
        }
        if let Some(board) = &mut board {
            board.step(&m)?;
        }
        totals.add(&m);
        last_loss = Some(out.loss);
        observer.step(&m);
        if run.step % config.log_every == 0 {
            if let (Some(stats), Some(board)) = (&pipeline_stats, &mut board) {
                board.pipeline(m.step, &stats.snapshot())?;
            }
            tracing::debug!(
                step = m.step,
                loss = m.loss,
                lr = m.lr,
                ips = m.images_per_second,
                "step"
            );
        }

        if let Some(picture) = out.picture.filter(|_| main) {
            let path = dir
                .join(layout::PICTURES)
                .join(format!("step_{:07}.png", run.step));
            let png = encode_png(&picture)?;
            write_atomically(&png, &path)?;
            if let Some(board) = &mut board {
                board.picture(&picture_tag, m.step, &png, picture.dimensions())?;
            }
            observer.event(&format!("picture {}", path.display()));
            pictures.push(path);
        }
        let due = config.checkpoint_every > 0 && run.step % config.checkpoint_every == 0;
        if out.requests.stop && distributed {
            agreed_stop = Some(if stop_asked || !time_up {
                StopReason::Interrupted
            } else {
                StopReason::TimeLimit
            });
        }
        let asked = out.requests.checkpoint;
        if (due || asked) && run.step < last && agreed_stop.is_none() {
            let path = run.save(dir)?;
            if main {
                observer.event(&format!("checkpoint {}", path.display()));
            }
            checkpoint_path = Some(path);
        }
        // Reset the clock so checkpoint and picture time is not billed to the next step.
        step_began = Instant::now();
    };

    // The end, whatever the reason: a checkpoint of the last finished step (also on Ctrl-C).
    if run.step > first_step || checkpoint::latest(dir)?.is_none() {
        let path = run.save(dir)?;
        if main {
            observer.event(&format!("checkpoint {}", path.display()));
        }
        checkpoint_path = Some(path);
    } else if checkpoint_path.is_none() {
        checkpoint_path = checkpoint::latest(dir)?;
    }
    let uploader = feeder.timing();
    drop(feeder);

    let timing = RunTiming::new(&totals, &uploader, pipeline_stats.map(|s| s.snapshot()));
    if main {
        timing.write(&dir.join(layout::TIMING))?;
    }
    let loss_path = dir.join(layout::LOSS_CURVE);
    if main {
        let records = read_metrics(&metrics_path)?;
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let plot = plot::loss_plot(
            &[(name.as_deref().unwrap_or("run"), records.as_slice())],
            false,
        );
        save_png(&plot.png(960, 540)?, &loss_path)?;
    }

    let communication_seconds_per_step =
        run.sync
            .as_ref()
            .zip(communication_before)
            .map(|(sync, before)| {
                let spent = sync.collective().time_spent().saturating_sub(before);
                spent.as_secs_f64() / (run.step - first_step).max(1) as f64
            });
    Ok(RunSummary {
        first_step,
        steps_done: run.step,
        stopped,
        last_loss,
        images_per_second: totals.images_per_second(),
        data_wait_fraction: totals.data_wait_fraction(),
        communication_seconds_per_step,
        checkpoint: checkpoint_path,
        pictures,
        loss_curve: loss_path,
        metrics: metrics_path,
        uploader,
    })
}

fn write_config(dir: &Path, config: &ResolvedTrainConfig) -> Result<(), TrainError> {
    let path = dir.join(layout::CONFIG);
    let tmp = dir.join("config.json.tmp");
    let io = |source| TrainError::Config {
        path: path.clone(),
        source,
    };
    let text = serde_json::to_vec_pretty(config).map_err(|e| io(std::io::Error::other(e)))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)
}
