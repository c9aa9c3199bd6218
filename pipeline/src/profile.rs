//! `tessera profile`: run the loader alone, measure it, and name its bottleneck.
//!
//! The loader's [`crate::stats`] already split every stage's time into busy and blocked;
//! this module drives a loader for a number of batches or seconds with a consumer that
//! only drops batches, then reads those counters: the stage that is busy nearly all the
//! time limits throughput, and the suggestion says what to change. The decode-only mode
//! runs the same graph with a [`SampleWork`] that decodes full size and makes no views:
//! the ceiling any recipe can reach on this machine with these images.

use std::time::{Duration, Instant};

use serde::Serialize;
use tessera_shards::Sample;

use crate::decode::{Decoder, RgbImage};
use crate::loader::{
    GraphOptions, Loader, LoaderError, LoaderOptions, Reject, SampleWork, SlotGrant,
};
use crate::rng::SampleRng;
use crate::stats::{StageSnapshot, StatsSnapshot};

/// What to run.
#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// The loader to measure (its `epochs` is overridden when `batches` or `seconds` is set).
    pub loader: LoaderOptions,
    /// Stop after this many batches.
    pub batches: Option<u64>,
    /// Stop after this long.
    pub seconds: Option<f64>,
    /// Decode full size only (no views, no masks): the decode-bound ceiling.
    pub decode_only: bool,
}

/// What `tessera profile` prints (and `--json` serialises).
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    pub recipe: String,
    pub mode: &'static str,
    pub workers: usize,
    pub batch_size: usize,
    /// The JPEG decoder of this build ([`crate::decode::jpeg_decoder`]).
    pub jpeg_decoder: &'static str,
    /// Whether colour jitter, greyscale, blur and solarize were left to the training device
    /// (the recipe's `[augment] on_device`): the CPU made crops and flips only.
    pub augment_on_device: bool,
    /// CPU time (user + system) of the whole process during the run, seconds; 0 where the
    /// platform does not say (`/proc/self/stat`).
    pub cpu_seconds: f64,
    /// `cpu_seconds` per delivered image, milliseconds: the pipeline's cost per image
    /// independent of how busy the machine is.
    pub cpu_ms_per_image: f64,
    /// Samples delivered in batches per second of wall time (views made, not counted).
    pub images_per_second: f64,
    pub images: u64,
    pub batches: u64,
    pub seconds: f64,
    /// Rejected samples: `total` and one entry per reason.
    pub rejected: Rejected,
    pub shard_errors: u64,
    pub bottleneck: Bottleneck,
    /// Peak resident memory of the process (`VmHWM`), bytes; 0 where unknown.
    pub peak_rss_bytes: u64,
    pub stages: Vec<StageSnapshot>,
    pub queues: Vec<crate::stats::QueueSnapshot>,
}

/// Rejected samples by reason.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub total: u64,
    pub by_reason: std::collections::BTreeMap<String, u64>,
}

/// The limiting stage and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Bottleneck {
    /// Stage name (or `consumer`).
    pub stage: String,
    /// One sentence with a concrete suggestion.
    pub message: String,
}

/// Run the loader as `options` say, calling `progress(images, batches)` after each batch.
pub fn profile(
    options: ProfileOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<ProfileReport, LoaderError> {
    let recipe_name = options.loader.recipe.source.clone();
    let augment_on_device = options.loader.recipe.augment.on_device && !options.decode_only;
    let workers = options.loader.graph.workers;
    let batch_size = options.loader.graph.batch_size;
    let mut loader_options = options.loader.clone();
    if options.batches.is_some() || options.seconds.is_some() {
        loader_options.graph.epochs = None;
    }
    let mut loader = if options.decode_only {
        let data = &loader_options.recipe.data;
        let graph = GraphOptions {
            resume: None,
            drop_last: false,
            buffer_hook: None,
            ..loader_options.graph.clone()
        };
        Loader::with_work(
            graph,
            DecodeOnly {
                fields: data.image_fields.clone(),
                max_pixels: data.max_pixels,
            },
        )?
    } else {
        Loader::start(loader_options)?
    };
    let started = Instant::now();
    let cpu_started = process_cpu_seconds();
    let deadline = options
        .seconds
        .map(|s| started + Duration::from_secs_f64(s));
    let (mut images, mut batches) = (0u64, 0u64);
    while let Some(batch) = loader.next_batch() {
        let batch = batch?;
        images += batch.labels.len() as u64;
        batches += 1;
        progress(images, batches);
        drop(batch);
        if options.batches.is_some_and(|n| batches >= n)
            || deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = match (cpu_started, process_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let snapshot = loader.stats();
    drop(loader);
    Ok(ProfileReport {
        recipe: recipe_name,
        mode: if options.decode_only {
            "decode-only"
        } else {
            "recipe"
        },
        workers,
        batch_size,
        jpeg_decoder: crate::decode::jpeg_decoder(),
        augment_on_device,
        cpu_seconds,
        cpu_ms_per_image: 1000.0 * cpu_seconds / images.max(1) as f64,
        images_per_second: images as f64 / seconds.max(1e-9),
        images,
        batches,
        seconds,
        rejected: Rejected {
            total: snapshot.rejected(),
            by_reason: snapshot.rejects.clone(),
        },
        shard_errors: snapshot.shard_errors,
        bottleneck: bottleneck(&snapshot, workers),
        peak_rss_bytes: peak_rss_bytes(),
        stages: snapshot.stages,
        queues: snapshot.queues,
    })
}

/// Name the limiting stage from the busy/blocked split.
pub fn bottleneck(snapshot: &StatsSnapshot, workers: usize) -> Bottleneck {
    let find = |prefix: &str| snapshot.stages.iter().find(|s| s.name.starts_with(prefix));
    let cores = crate::loader::default_workers();
    let pct = |f: f64| (f * 100.0).round();
    if let Some(w) = find("decode") {
        if w.blocked_on_output_fraction > 0.5 {
            return Bottleneck {
                stage: "consumer".into(),
                message: format!(
                    "workers wait {}% of the time for room in the batch queue: the consumer (trainer) is the \
                     bottleneck, the pipeline keeps up",
                    pct(w.blocked_on_output_fraction)
                ),
            };
        }
        if w.busy_fraction >= 0.75 || w.blocked_on_input_fraction < 0.2 {
            let advice = if workers < cores {
                format!(
                    "add workers (`--workers {}`) or store smaller images (`tessera shard --max-side 320`)",
                    cores
                )
            } else {
                "all cores are in use: store smaller images (`tessera shard --max-side 320`) or use fewer/smaller views"
                    .to_string()
            };
            return Bottleneck {
                stage: w.name.clone(),
                message: format!(
                    "decode workers are {}% busy: {advice}",
                    pct(w.busy_fraction)
                ),
            };
        }
    }
    let io = find("read");
    let parse = find("parse");
    if let (Some(io), Some(parse)) = (io, parse) {
        if parse.blocked_on_input_fraction > 0.5 || io.busy_fraction > 0.5 {
            return Bottleneck {
                stage: io.name.clone(),
                message: format!(
                    "reader blocked on I/O ({}% of its time waiting for bytes): put shards on faster storage, \
                     use more readers, or shard fewer, larger files",
                    pct(parse.blocked_on_input_fraction.max(io.busy_fraction))
                ),
            };
        }
        if parse.busy_fraction > 0.5 {
            return Bottleneck {
                stage: parse.name.clone(),
                message: format!(
                    "tar parsing/decompression is {}% busy: write uncompressed shards or use more readers",
                    pct(parse.busy_fraction)
                ),
            };
        }
    }
    let busiest = snapshot
        .stages
        .iter()
        .max_by(|a, b| a.busy_fraction.total_cmp(&b.busy_fraction))
        .map(|s| (s.name.clone(), s.busy_fraction))
        .unwrap_or_default();
    Bottleneck {
        stage: busiest.0.clone(),
        message: format!(
            "no stage is saturated (busiest: {} at {}%): the run was too short or waits on start-up",
            busiest.0,
            pct(busiest.1)
        ),
    }
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`), 0 if unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
                    .map(|kb| kb * 1024)
            })
        })
        .unwrap_or(0)
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (fields 14
/// and 15, in clock ticks of 1/100 s: `USER_HZ` is 100 on every Linux architecture Rust
/// targets). `None` elsewhere.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

/// Full-size decode, nothing else: the ceiling for any recipe on these images.
#[derive(Debug)]
struct DecodeOnly {
    fields: Vec<String>,
    max_pixels: u64,
}

impl SampleWork for DecodeOnly {
    type Scratch = (Decoder, RgbImage);

    fn scratch(&self) -> Self::Scratch {
        (Decoder::new(self.max_pixels), RgbImage::default())
    }

    fn view_shapes(&self) -> Vec<(usize, usize)> {
        Vec::new()
    }

    fn mask_shapes(&self) -> Vec<Option<(usize, usize, bool)>> {
        Vec::new()
    }

    fn decode(
        &self,
        sample: &Sample,
        _: &mut SampleRng,
        (decoder, image): &mut Self::Scratch,
    ) -> Result<(), Reject> {
        let Some(bytes) = self.fields.iter().find_map(|f| sample.field(f)) else {
            return Err(Reject {
                reason: "missing_image",
                detail: "no image field".into(),
            });
        };
        decoder
            .decode(bytes, image)
            .map(|_| ())
            .map_err(|e| Reject {
                reason: e.reason(),
                detail: e.to_string(),
            })
    }

    fn render(&self, _: &mut Self::Scratch, _: &mut SampleRng, _: &mut SlotGrant) {}

    fn label(&self, _: &Sample) -> i64 {
        -1
    }
}
