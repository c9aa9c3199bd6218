//! `tessera inspect`: what is in a set of shards, and with `--verify` whether every image
//! in them decodes.
//!
//! Each shard is read to its end with the project's reader. A truncated or malformed
//! shard is reported (the reader's error names the byte offset) and the other shards are
//! still inspected. Image fields (`jpg`, `jpeg`, `png`, `webp`, `gif`, and `*.jpg` style
//! multi-part names) are verified with the same checks `tessera shard` applies to inputs.
//!
//! Exit status: non-zero when any shard is damaged or, with `--verify`, any image fails,
//! so `tessera inspect --verify` can gate a pipeline; the report is printed first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tessera_shards::builder::ordered::ordered_map;
use tessera_shards::builder::{PrepareOptions, Preparer};
use tessera_shards::error::Chain;
use tessera_shards::reader::ShardReader;
use tessera_shards::{Sample, source};

/// Count samples and fields of shards; `--verify` decodes every image.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Shards: paths, globs, brace ranges (`train-{000000..000009}.tar`) or `@list` files.
    #[arg(required = true, value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Decode every image field and list those that fail.
    #[arg(long)]
    pub verify: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// With --verify: images declaring more pixels than this fail (as in `tessera shard`).
    #[arg(long, default_value_t = tessera_shards::builder::prepare::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    #[command(flatten)]
    pub remote: super::remote::RemoteArgs,
}

/// One shard's contents.
#[derive(Debug, Serialize)]
struct ShardReport {
    path: PathBuf,
    samples: u64,
    bytes: u64,
    /// Field name → samples having it.
    fields: BTreeMap<String, u64>,
    /// Field name → bytes in total.
    field_bytes: BTreeMap<String, u64>,
    /// Set when the shard could not be read to its end (samples counts what came before).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// An image that does not decode.
#[derive(Debug, Serialize)]
struct Failure {
    shard: PathBuf,
    key: String,
    field: String,
    reason: String,
    detail: String,
}

#[derive(Debug, Serialize)]
struct Report {
    samples: u64,
    bytes: u64,
    fields: BTreeMap<String, u64>,
    shards: Vec<ShardReport>,
    damaged: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failures: Option<Vec<Failure>>,
}

/// Inspect the shards and print the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    args.remote.apply()?;
    let mut paths = Vec::new();
    for pattern in &args.patterns {
        paths.extend(source::resolve(pattern)?);
    }
    // Shards are inspected in parallel and reported in order.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let options = PrepareOptions {
        max_pixels: args.max_pixels,
        ..PrepareOptions::default()
    };
    let mut shards = Vec::new();
    let mut failures = Vec::new();
    ordered_map(
        0..paths.len(),
        workers,
        workers * 2,
        || (Preparer::new(options.clone()), Sample::default()),
        |(preparer, sample), i| inspect_shard(&paths[i], args.verify, preparer, sample),
        |_, (report, shard_failures)| {
            if let Some(error) = &report.error {
                tracing::error!("{error}");
            }
            shards.push(report);
            failures.extend(shard_failures);
            Ok(())
        },
        || anyhow::anyhow!("an inspect worker thread panicked"),
    )?;

    let mut fields = BTreeMap::new();
    for shard in &shards {
        for (name, count) in &shard.fields {
            *fields.entry(name.clone()).or_default() += count;
        }
    }
    let report = Report {
        samples: shards.iter().map(|s| s.samples).sum(),
        bytes: shards.iter().map(|s| s.bytes).sum(),
        fields,
        damaged: shards
            .iter()
            .filter(|s| s.error.is_some())
            .map(|s| s.path.clone())
            .collect(),
        shards,
        failures: args.verify.then_some(failures),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_human(&report);
    }
    let failed = report.failures.as_ref().map_or(0, Vec::len);
    if !report.damaged.is_empty() || failed > 0 {
        anyhow::bail!(
            "{} damaged shard(s), {} image(s) that do not decode",
            report.damaged.len(),
            failed
        );
    }
    Ok(())
}

/// Read one shard to its end (or its damage), verifying image fields if asked.
fn inspect_shard(
    path: &Path,
    verify: bool,
    preparer: &mut Preparer,
    sample: &mut Sample,
) -> (ShardReport, Vec<Failure>) {
    let mut report = ShardReport {
        path: path.to_path_buf(),
        samples: 0,
        bytes: match tessera_shards::remote::url_of(path) {
            Some(url) => tessera_shards::remote::stream::size_of(url).unwrap_or(0),
            None => std::fs::metadata(path).map_or(0, |m| m.len()),
        },
        fields: BTreeMap::new(),
        field_bytes: BTreeMap::new(),
        error: None,
    };
    let mut failures = Vec::new();
    let mut reader = match ShardReader::open(path) {
        Ok(reader) => reader,
        Err(err) => {
            report.error = Some(Chain(&err).to_string());
            return (report, failures);
        }
    };
    loop {
        match reader.read_into(sample) {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) => {
                report.error = Some(Chain(&err).to_string());
                break;
            }
        }
        report.samples += 1;
        for field in sample.fields() {
            *report.fields.entry(field.name.clone()).or_default() += 1;
            *report.field_bytes.entry(field.name.clone()).or_default() += field.data.len() as u64;
            if verify
                && is_image_field(&field.name)
                && let Err(reject) = preparer.prepare(&field.data)
            {
                failures.push(Failure {
                    shard: path.to_path_buf(),
                    key: sample.key.clone(),
                    field: field.name.clone(),
                    reason: reject.reason.to_string(),
                    detail: reject.detail,
                });
            }
        }
    }
    (report, failures)
}

/// Whether a field holds an image by its (last) extension.
fn is_image_field(name: &str) -> bool {
    let ext = name.rsplit('.').next().unwrap_or(name);
    matches!(ext, "jpg" | "jpeg" | "png" | "webp" | "gif")
}

fn print_human(report: &Report) {
    for shard in &report.shards {
        let fields: Vec<String> = shard
            .fields
            .iter()
            .map(|(name, n)| format!("{name}:{n}"))
            .collect();
        println!(
            "{}\t{} samples\t{} bytes\t{}",
            shard.path.display(),
            shard.samples,
            shard.bytes,
            fields.join(" ")
        );
        if let Some(error) = &shard.error {
            println!("  DAMAGED: {error}");
        }
    }
    let fields: Vec<String> = report
        .fields
        .iter()
        .map(|(name, n)| format!("{name}:{n}"))
        .collect();
    println!(
        "total\t{} samples\t{} bytes\t{} shards\t{}",
        report.samples,
        report.bytes,
        report.shards.len(),
        fields.join(" ")
    );
    if let Some(failures) = &report.failures {
        for f in failures {
            println!(
                "FAILED {}:{} .{}: {} ({})",
                f.shard.display(),
                f.key,
                f.field,
                f.reason,
                f.detail
            );
        }
        println!("verified: {} image(s) failed", failures.len());
    }
}
