//! `tessera eval`: how good a pretrained encoder's features are, by the two standard
//! self-supervised evaluations: DINO's weighted kNN (cosine similarity, k = 20, T = 0.07)
//! and MAE's linear probe (standardised frozen features, one linear layer).
//!
//! `--checkpoint` takes a checkpoint directory or a run directory (its newest complete
//! checkpoint), like `tessera export`. Both shard sets must carry class labels (`cls`, as
//! `tessera shard --labels folders` writes). Images get one deterministic view (Resize +
//! CenterCrop to the model's size), so two runs with the same seed print the same numbers.
//! A short table goes to stderr; with `--json`, one JSON object to stdout. When the
//! checkpoint belongs to a run directory, the report is also appended to the run's
//! `eval.jsonl`, where `tessera report` finds it.

use std::path::PathBuf;

use anyhow::Context;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_trainer::device::DeviceKind;
use tessera_trainer::eval::{
    EvalOptions, EvalProgress, EvalReport, ExtractOptions, KnnSettings, Pooling, ProbeSettings,
    Split,
};
use tessera_trainer::feeder::HostUpload;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A checkpoint directory (`RUN/checkpoints/step-…`) or a run directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// `student` (default) or `teacher` (the momentum teacher, for methods that keep one).
    #[arg(long, default_value = "student")]
    pub which: tessera_trainer::eval::Which,
    /// Labelled shards the kNN searches and the probe trains on: a path, glob, brace range
    /// or `@list` file.
    #[arg(long)]
    pub train_shards: String,
    /// Labelled shards the accuracies are measured on.
    #[arg(long)]
    pub val_shards: String,
    /// Neighbours that vote in the kNN classifier.
    #[arg(long, default_value_t = KnnSettings::default().k)]
    pub knn_k: usize,
    /// Temperature of the kNN votes `exp(sim / T)`.
    #[arg(long, default_value_t = KnnSettings::default().temperature)]
    pub knn_temperature: f64,
    /// Epochs of linear-probe training.
    #[arg(long, default_value_t = ProbeSettings::default().epochs)]
    pub probe_epochs: usize,
    /// Peak learning rate of the probe (AdamW, cosine decay to 0).
    #[arg(long, default_value_t = ProbeSettings::default().lr)]
    pub probe_lr: f64,
    /// Features per probe step.
    #[arg(long, default_value_t = ProbeSettings::default().batch_size)]
    pub probe_batch_size: usize,
    /// Use at most this many training images (mixed across shards, seeded).
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Use at most this many validation images.
    #[arg(long)]
    pub max_val: Option<usize>,
    /// Feature: `cls` (class token after the final norm) or `mean` (mean of patch tokens).
    #[arg(long, default_value = "cls")]
    pub pooling: String,
    /// Shorter side before the centre crop, in pixels. Default: image size / 0.875 (256
    /// for 224); pass the image size to keep whole images (e.g. 32 for CIFAR).
    #[arg(long)]
    pub resize: Option<u32>,
    /// Images per encoder forward pass.
    #[arg(long, default_value_t = ExtractOptions::default().batch_size)]
    pub batch_size: usize,
    /// CPU workers decoding images. Default: all cores.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Seed of the shard order, the subset and the probe's batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N` (`cuda` needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object to stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub remote: super::remote::RemoteArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.remote.apply()?;
    let options = options(&args)?;
    let kind: DeviceKind = args.device.parse()?;
    let mut bars = Bars::new(args.quiet);
    let report = match kind {
        DeviceKind::Cpu => evaluate::<Autodiff<Flex>>(&options, &Default::default(), &mut bars),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda(index) => {
            let device = tessera_trainer::device::cuda_device(index)?;
            evaluate::<Autodiff<burn::backend::Cuda>>(&options, &device, &mut bars)
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda(_) => Err(tessera_trainer::device::DeviceError::NotCompiled.into()),
    };
    bars.finish();
    let report = report?;
    print_table(&report);
    record_in_run(&report)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Append `report` to `RUN/eval.jsonl` when its checkpoint is `RUN/checkpoints/<step>`.
fn record_in_run(report: &EvalReport) -> anyhow::Result<()> {
    use std::io::Write;
    let run = report
        .checkpoint
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"))
        .and_then(|p| p.parent());
    let Some(run) = run else { return Ok(()) };
    let path = run.join(super::report::EVALS);
    let mut line = serde_json::to_vec(report)?;
    line.push(b'\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&line))
        .with_context(|| format!("writing {}", path.display()))
}

fn evaluate<AB>(
    options: &EvalOptions,
    device: &AB::Device,
    bars: &mut Bars,
) -> anyhow::Result<EvalReport>
where
    AB: AutodiffBackend,
    AB::InnerBackend: HostUpload,
{
    tessera_trainer::eval::evaluate::<AB>(options, device, bars)
        .with_context(|| format!("evaluating {}", options.checkpoint.display()))
}

/// Parse and check the arguments into the library's options, before any work starts.
fn options(args: &Args) -> anyhow::Result<EvalOptions> {
    let shards = |spec: &str| {
        tessera_shards::source::resolve(spec).with_context(|| format!("shards `{spec}`"))
    };
    let mut extract = ExtractOptions {
        batch_size: args.batch_size,
        resize: args.resize,
        pooling: args.pooling.parse::<Pooling>()?,
        seed: args.seed,
        ..ExtractOptions::default()
    };
    if let Some(workers) = args.workers {
        extract.workers = workers;
    }
    Ok(EvalOptions {
        checkpoint: args.checkpoint.clone(),
        which: args.which,
        train_shards: shards(&args.train_shards).context("--train-shards")?,
        val_shards: shards(&args.val_shards).context("--val-shards")?,
        extract,
        max_train: args.max_train,
        max_val: args.max_val,
        knn: KnnSettings {
            k: args.knn_k,
            temperature: args.knn_temperature,
        },
        probe: ProbeSettings {
            epochs: args.probe_epochs,
            batch_size: args.probe_batch_size,
            lr: args.probe_lr,
            seed: args.seed,
            ..ProbeSettings::default()
        },
    })
}

fn print_table(r: &EvalReport) {
    let pct = |x: f64| format!("{:.2}%", 100.0 * x);
    eprintln!(
        "checkpoint        {} (step {})",
        r.checkpoint.display(),
        r.step
    );
    eprintln!(
        "features          {} x {} ({:?}); {} train, {} val images, {} classes{}",
        r.train_images + r.val_images,
        r.feature_dim,
        r.pooling,
        r.train_images,
        r.val_images,
        r.num_classes,
        if r.skipped_images > 0 {
            format!(", {} skipped", r.skipped_images)
        } else {
            String::new()
        }
    );
    eprintln!(
        "kNN (k={}, T={})  top-1 {}   top-5 {}",
        r.knn_k,
        r.knn_temperature,
        pct(r.knn_top1),
        pct(r.knn_top5)
    );
    eprintln!(
        "linear probe      top-1 {}   (train {}, {} epochs)",
        pct(r.linear_probe_top1),
        pct(r.linear_probe_train_top1),
        r.probe_epochs
    );
    eprintln!(
        "time              {:.1} s ({:.1} s extracting features)",
        r.seconds, r.extraction_seconds
    );
}

/// One progress bar per stage, on stderr.
struct Bars {
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl Bars {
    fn new(quiet: bool) -> Self {
        Bars { quiet, bar: None }
    }

    fn start(&mut self, len: Option<u64>, template: &str, message: String) {
        self.finish();
        if self.quiet {
            return;
        }
        let bar = match len {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(message);
        self.bar = Some(bar);
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl EvalProgress for Bars {
    fn extraction_started(&mut self, split: Split, total: Option<u64>) {
        self.start(
            total,
            "{msg:>16} {bar:30} {pos}/{len} images [{elapsed_precise}<{eta_precise}] {per_sec}",
            format!("{split} features"),
        );
    }

    fn extracted(&mut self, _split: Split, images: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(images);
        }
    }

    fn extraction_finished(&mut self, _split: Split) {
        self.finish();
    }

    fn probe_epoch(&mut self, epoch: usize, epochs: usize, loss: f64) {
        if epoch == 0 {
            self.start(
                Some(epochs as u64),
                "{msg:>16} {bar:30} {pos}/{len} epochs",
                "linear probe".into(),
            );
        }
        if let Some(bar) = &self.bar {
            bar.set_position(epoch as u64 + 1);
            bar.set_message(format!("probe loss {loss:.3}"));
        }
    }
}
