//! `tessera shard`: build WebDataset shards from directories or lists of images.
//!
//! Parses and checks the command line into [`BuildOptions`], draws a progress bar while
//! [`tessera_shards::builder::build`] works, and prints a summary (or one JSON object with
//! `--json`). Bad inputs are not errors: they are listed in the manifest with a reason.
//! A killed run is finished by running the same command again.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_shards::builder::fetch::FetchOptions;
use tessera_shards::builder::{
    self, BuildOptions, InputSpec, LabelSource, Part, PrepareOptions, Progress,
};
use tessera_shards::compression::Compression;

/// Build WebDataset shards from directories (walked recursively) or lists of images.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directories, list files (`.txt`/`.lst`, one path a line) or image files.
    #[arg(required_unless_present = "urls", value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Lists of image URLs to download (img2dataset's job): `.txt` (one URL a line),
    /// `.csv`/`.tsv`/`.jsonl`/`.parquet` with a `url` column, an optional `caption` column
    /// (written as each sample's `.txt`) and other columns (kept in its `.json`). Each URL
    /// ends in one outcome: a sample, or a reason counted in the manifest.
    #[arg(long = "urls", value_name = "FILE")]
    pub urls: Vec<PathBuf>,
    /// Seconds one download attempt may take (`--urls`).
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Retries of a download after a timeout, a broken connection, 429 or 5xx (`--urls`).
    #[arg(long, default_value_t = 2)]
    pub download_retries: u32,
    /// Downloads from one host at once at most (`--urls`).
    #[arg(long, default_value_t = 16)]
    pub per_host: usize,
    /// Largest download accepted, e.g. `32MiB` (`--urls`); larger is `too_large`.
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    pub max_download_size: u64,
    /// More list files (one path a line), whatever their extension.
    #[arg(long = "list", value_name = "FILE")]
    pub lists: Vec<PathBuf>,
    /// Output directory (created if missing), or an object-store prefix
    /// (`s3://bucket/prefix`, `gs://...`, `az://...`): shards are built in a local staging
    /// directory and each is uploaded when finished, then its index, then its journal
    /// record; the manifest last.
    #[arg(long, value_name = "DIR|URL")]
    pub out: String,
    /// Local staging directory for `--out s3://...` (default: a directory under the
    /// system's temporary directory named after the URL). Holds the journal and the shard
    /// being written; finished shards are removed from it once uploaded.
    #[arg(long, value_name = "DIR")]
    pub staging: Option<PathBuf>,
    #[command(flatten)]
    pub remote: super::remote::RemoteArgs,
    /// Shard name prefix: `{prefix}-000000.tar` (`{prefix}-part001-000000.tar` with --part).
    #[arg(long, default_value = "shard")]
    pub prefix: String,
    /// `folders`: ImageFolder labels (first folder under each input = class; `classes.json`).
    #[arg(long, value_parser = ["folders", "none"], default_value = "none")]
    pub labels: String,
    /// Labels from a CSV of `path,label` (path as relative to its input root).
    #[arg(long, value_name = "FILE", conflicts_with = "labels")]
    pub labels_csv: Option<PathBuf>,
    /// Samples per shard at most.
    #[arg(long, default_value_t = 10_000)]
    pub max_samples: u64,
    /// Uncompressed tar bytes per shard at most, e.g. `64MB`, `1GiB`, `500000`.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub max_bytes: u64,
    /// `none`, `zstd[:level]` or `gzip[:level]`.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Resize images whose longest side (after EXIF orientation) exceeds PX, re-encoded as
    /// JPEG. Smaller images keep their original bytes.
    #[arg(long, value_name = "PX")]
    pub max_side: Option<u32>,
    /// JPEG quality of re-encoded images (1-100).
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
    /// Reject images whose header declares more pixels (checked before decoding).
    #[arg(long, default_value_t = builder::prepare::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Keep inputs whose bytes equal an earlier input's (by default only the first is kept).
    #[arg(long)]
    pub no_dedup: bool,
    /// Write the inputs in an order shuffled with this seed instead of sorted, so that each
    /// shard mixes classes and sources (the same seed gives the same shards; every part of a
    /// job array must use the same seed).
    #[arg(long, value_name = "SEED")]
    pub shuffle: Option<u64>,
    /// Worker threads (default: all cores; 64 with --urls, as downloads mostly wait).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Build part I of N (0-based) of a job array: contiguous, disjoint slices of the sorted
    /// (or `--shuffle`d) inputs with distinct shard names; de-duplication works within a part.
    #[arg(long, value_name = "I/N")]
    pub part: Option<Part>,
    /// Print one JSON object on stdout instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// Build the shards and report.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.remote.apply()?;
    let options = resolve(&args)?;
    let bar = BarProgress::new();
    let manifest = builder::build(&options, &bar).context("tessera shard")?;
    bar.0.finish_and_clear();
    let manifest_name = if options.part.count > 1 {
        format!("manifest-part{}.json", options.part.index)
    } else {
        "manifest.json".to_string()
    };
    let manifest_path = match &options.publish_to {
        Some(url) => format!("{}/{manifest_name}", url.trim_end_matches('/')),
        None => options.out.join(&manifest_name).display().to_string(),
    };
    if args.json {
        let summary = serde_json::json!({
            "out": args.out,
            "manifest": manifest_path,
            "inputs": manifest.inputs,
            "samples": manifest.samples,
            "shards": manifest.shards.len(),
            "rejected": manifest.rejected,
            "rejected_by_reason": manifest.rejected_by_reason,
            "duplicates": manifest.duplicates.len(),
            "resumed_shards": manifest.resumed_shards,
            "throughput": manifest.throughput,
            "outcomes": outcomes(&manifest),
            "network": tessera_shards::remote::stats(),
        });
        println!("{summary}");
    } else {
        let t = &manifest.throughput;
        println!(
            "{} samples in {} shards in {} ({} rejected, {} duplicates, {} shards resumed); {:.0} images/s, {:.1} MB/s",
            manifest.samples,
            manifest.shards.len(),
            args.out,
            manifest.rejected.len(),
            manifest.duplicates.len(),
            manifest.resumed_shards,
            t.images_per_s,
            t.mb_per_s,
        );
        for (reason, count) in &manifest.rejected_by_reason {
            println!("  rejected {reason}: {count}");
        }
        println!("manifest: {manifest_path}");
    }
    Ok(())
}

/// One count per outcome: `ok` (a sample), `duplicate`, and each reject reason.
fn outcomes(manifest: &builder::Manifest) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    out.insert("ok".into(), manifest.samples.into());
    out.insert(
        "duplicate".into(),
        (manifest.duplicates.len() as u64).into(),
    );
    for (reason, count) in &manifest.rejected_by_reason {
        out.insert(reason.to_string(), (*count).into());
    }
    out
}

/// Raw arguments → checked build options.
fn resolve(args: &Args) -> anyhow::Result<BuildOptions> {
    let mut inputs = Vec::new();
    for path in &args.inputs {
        inputs.push(InputSpec::classify(path)?);
    }
    inputs.extend(args.lists.iter().cloned().map(InputSpec::List));
    inputs.extend(args.urls.iter().cloned().map(InputSpec::Urls));
    anyhow::ensure!(
        args.timeout.is_finite() && args.timeout > 0.0,
        "--timeout must be a positive number of seconds"
    );
    anyhow::ensure!(args.per_host > 0, "--per-host must be at least 1");
    let labels = match (&args.labels_csv, args.labels.as_str()) {
        (Some(csv), _) => LabelSource::Csv(csv.clone()),
        (None, "folders") => LabelSource::Folders,
        _ => LabelSource::None,
    };
    if matches!(labels, LabelSource::Folders) && args.shuffle.is_none() {
        tracing::warn!(
            "--labels folders without --shuffle: inputs are written sorted, class after class, so \
             each shard holds one class or a few and a reader's shuffle buffer mixes only what is \
             within its reach; --shuffle SEED mixes them"
        );
    }
    let workers = args.workers.unwrap_or_else(|| {
        if args.urls.is_empty() {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            64
        }
    });
    let (out, publish_to) = if tessera_shards::remote::is_url(&args.out) {
        let staging = match &args.staging {
            Some(dir) => dir.clone(),
            None => default_staging(&args.out),
        };
        (staging, Some(args.out.clone()))
    } else {
        anyhow::ensure!(
            args.staging.is_none(),
            "--staging is only for an object-store --out (s3://, gs://, az://)"
        );
        (PathBuf::from(&args.out), None)
    };
    Ok(BuildOptions {
        inputs,
        labels,
        out,
        publish_to,
        prefix: args.prefix.clone(),
        part: args.part.unwrap_or(Part::WHOLE),
        max_samples: args.max_samples,
        max_bytes: args.max_bytes,
        compression: args.compression,
        prepare: PrepareOptions {
            max_pixels: args.max_pixels,
            max_side: args.max_side,
            quality: args.quality,
        },
        dedup: !args.no_dedup,
        shuffle: args.shuffle,
        workers,
        fetch: FetchOptions {
            timeout: std::time::Duration::from_secs_f64(args.timeout),
            retries: args.download_retries,
            per_host: args.per_host,
            max_bytes: args.max_download_size,
            honour_opt_out: true,
        },
    })
}

/// `$TMPDIR/tessera-staging-<12 hex digits of the URL's hash>`: the same URL finds the
/// same staging directory again on a rerun.
fn default_staging(url: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut hasher);
    std::env::temp_dir().join(format!("tessera-staging-{:012x}", hasher.finish() >> 16))
}

/// `64MB` (10^6), `1GiB` (2^30), `500k`, `123` (bytes).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 64MB or 1GiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    let bytes = number * scale as f64;
    if !(1.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("size `{text}` is out of range"));
    }
    Ok(bytes as u64)
}

/// The progress bar (drawn on stderr, hidden when stderr is not a terminal).
struct BarProgress(ProgressBar);

impl BarProgress {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images ({per_sec}, ETA {eta}) {msg}",
        ) {
            bar.set_style(style);
        }
        BarProgress(bar)
    }
}

impl Progress for BarProgress {
    fn begin(&self, total: u64, done: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
        self.0.reset_eta();
    }

    fn advance(&self, inputs: u64, _bytes: u64) {
        self.0.inc(inputs);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("64MB"), Ok(64_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1.5 KiB"), Ok(1536));
        assert_eq!(parse_size("123"), Ok(123));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }
}
