//! `tessera profile`: run the input pipeline alone, report its throughput per stage and
//! name the bottleneck (the measurement itself is `tessera_pipeline::profile`).

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_pipeline::Recipe;
use tessera_pipeline::loader::LoaderOptions;
use tessera_pipeline::profile::{ProfileOptions, ProfileReport, profile};
use tessera_shards::remote::{self, RemoteStats};
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
    /// Make the consumer slower than the pipeline: wait this many milliseconds after
    /// each batch, as a trainer busy with its step would. Backpressure must then stall
    /// every stage with memory flat (the soak test, docs/RELIABILITY.md).
    #[arg(long, value_name = "MS")]
    pub throttle: Option<u64>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: super::remote::RemoteArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.remote.apply()?;
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
    let remote_shards = shards.iter().any(|s| remote::url_of(s).is_some());
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
    let network_before = remote::stats();
    let throttle = args.throttle.map(std::time::Duration::from_millis);
    let report = profile(options, |images, batches| {
        if let Some(pause) = throttle {
            std::thread::sleep(pause);
        }
        let rate = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{batches} batches, {images} images, {rate:.0} images/s"
        ));
        bar.tick();
    })
    .context("running the pipeline")?;
    bar.finish_and_clear();
    let network = remote_shards.then(|| Network::measure(&network_before, report.seconds));
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        if let (Some(network), Some(object)) = (&network, json.as_object_mut()) {
            object.insert("network".into(), serde_json::to_value(network)?);
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print_table(&report);
        if let Some(network) = &network {
            network.print();
        }
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

/// The network as a stage of the pipeline: what remote shards cost during the run.
#[derive(Debug, serde::Serialize)]
struct Network {
    /// Body bytes received.
    bytes: u64,
    /// Received bytes per second of the run, in MB/s (10^6).
    mb_per_second: f64,
    /// Seconds readers waited for bytes that had not arrived (summed over readers).
    blocked_seconds: f64,
    /// `blocked_seconds` over the run's length (can exceed 1 with several readers).
    blocked_fraction: f64,
    /// Requests, retries and resumed streams.
    requests: u64,
    retries: u64,
    resumes: u64,
    /// Shards read from the local cache, and fetched into it.
    cache_hits: u64,
    cache_misses: u64,
}

impl Network {
    fn measure(before: &RemoteStats, seconds: f64) -> Network {
        let d = remote::stats().since(before);
        let seconds = seconds.max(1e-9);
        let blocked = d.waited_ns as f64 / 1e9;
        Network {
            bytes: d.bytes,
            mb_per_second: d.bytes as f64 / 1e6 / seconds,
            blocked_seconds: blocked,
            blocked_fraction: blocked / seconds,
            requests: d.requests,
            retries: d.retries,
            resumes: d.resumes,
            cache_hits: d.cache_hits,
            cache_misses: d.cache_misses,
        }
    }

    fn print(&self) {
        println!();
        println!(
            "network: {:.1} MB/s ({:.1} MB), readers blocked on the network {:.2} s ({:.0}% of the run); {} requests, {} retries, {} resumed streams; cache {} hits, {} misses",
            self.mb_per_second,
            self.bytes as f64 / 1e6,
            self.blocked_seconds,
            self.blocked_fraction * 100.0,
            self.requests,
            self.retries,
            self.resumes,
            self.cache_hits,
            self.cache_misses,
        );
    }
}
