//! `tessera profile`: run the input pipeline alone, report its throughput per stage and
//! name the bottleneck (the measurement itself is `tessera_pipeline::profile`).

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_pipeline::Recipe;
use tessera_pipeline::loader::LoaderOptions;
use tessera_pipeline::profile::{ProfileOptions, ProfileReport, profile};
use tessera_shards::source;

/// Run the input pipeline alone and name its bottleneck.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Recipe: a builtin name (`mae`, `dino`, `ibot`, ...) or a TOML file.
    #[arg(long)]
    pub recipe: String,
    /// Shards: a path, glob, brace range (`train-{000000..000009}.tar`) or `@list` file.
    #[arg(long, value_name = "PATTERN")]
    pub shards: String,
    /// CPU worker threads for decode and views (default: the recipe's, else all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Stop after this many batches (default: one pass over the shards).
    #[arg(long, conflicts_with = "seconds")]
    pub batches: Option<u64>,
    /// Stop after this many seconds (epochs repeat as needed).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Override the recipe's batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Decode every image at full size and nothing else: the ceiling for any recipe.
    #[arg(long)]
    pub decode_only: bool,
    /// Stop the CPU chain after crops and flips, as `[augment] on_device = true` does in a
    /// recipe: shows the CPU cost per image left when the training device augments.
    #[arg(long)]
    pub augment_on_device: bool,
    /// Let batches complete in any order (a little faster; not reproducible).
    #[arg(long)]
    pub unordered: bool,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut recipe =
        Recipe::load(&args.recipe).with_context(|| format!("loading recipe `{}`", args.recipe))?;
    if let Some(batch_size) = args.batch_size {
        anyhow::ensure!(batch_size > 0, "--batch-size must be at least 1");
        recipe.data.batch_size = batch_size;
    }
    if args.augment_on_device {
        recipe
            .set_augment_on_device(true)
            .context("--augment-on-device")?;
    }
    let shards = source::resolve(&args.shards)
        .with_context(|| format!("resolving shards `{}`", args.shards))?;
    let mut loader = LoaderOptions::new(shards, recipe);
    if let Some(workers) = args.workers {
        anyhow::ensure!(workers > 0, "--workers must be at least 1");
        loader.graph.workers = workers;
    }
    loader.graph.ordered = !args.unordered;
    let options = ProfileOptions {
        loader,
        batches: args.batches,
        seconds: args.seconds,
        decode_only: args.decode_only,
    };
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let started = std::time::Instant::now();
    let report = profile(options, |images, batches| {
        let rate = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{batches} batches, {images} images, {rate:.0} images/s"
        ));
        bar.tick();
    })
    .context("running the pipeline")?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &ProfileReport) {
    println!(
        "{} ({}): {:.1} images/s  ({} images in {} batches of {}, {:.2} s, {} workers)",
        r.recipe,
        r.mode,
        r.images_per_second,
        r.images,
        r.batches,
        r.batch_size,
        r.seconds,
        r.workers
    );
    println!(
        "CPU: {:.2} ms per image ({:.1} s of CPU in {:.1} s); JPEG decoder: {}; augmentation: {}",
        r.cpu_ms_per_image,
        r.cpu_seconds,
        r.seconds,
        r.jpeg_decoder,
        if r.augment_on_device {
            "crops and flips on the CPU, colour, blur and solarize on the training device"
        } else {
            "all on the CPU"
        }
    );
    println!();
    println!(
        "{:<20} {:>7} {:>9} {:>7} {:>17} {:>18}",
        "stage", "threads", "items", "busy", "blocked on input", "blocked on output"
    );
    for s in &r.stages {
        println!(
            "{:<20} {:>7} {:>9} {:>6.0}% {:>16.0}% {:>17.0}%",
            s.name,
            s.threads,
            s.items,
            s.busy_fraction * 100.0,
            s.blocked_on_input_fraction * 100.0,
            s.blocked_on_output_fraction * 100.0
        );
    }
    println!();
    println!(
        "{:<22} {:>8} {:>10} {:>5}",
        "queue", "capacity", "mean depth", "max"
    );
    for q in &r.queues {
        println!(
            "{:<22} {:>8} {:>10.1} {:>5}",
            q.name, q.capacity, q.mean_depth, q.max_depth
        );
    }
    println!();
    println!(
        "peak memory (RSS): {:.1} MiB",
        r.peak_rss_bytes as f64 / (1 << 20) as f64
    );
    if r.rejected.total > 0 {
        let reasons: Vec<String> = r
            .rejected
            .by_reason
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("rejected: {} ({})", r.rejected.total, reasons.join(", "));
    } else {
        println!("rejected: 0");
    }
    if r.shard_errors > 0 {
        println!(
            "damaged shards: {} (their complete samples were used; see the log)",
            r.shard_errors
        );
    }
    println!(
        "bottleneck: {}: {}",
        r.bottleneck.stage, r.bottleneck.message
    );
}
