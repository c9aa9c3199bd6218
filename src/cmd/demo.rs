//! `tessera demo`: the whole system on built-in defaults, with nothing downloaded.
//!
//! 1. write the demo recipe (`DIR/recipe.toml`: a tiny MAE at 32x32) for reruns;
//! 2. draw a procedural image collection (`demo/collection.rs`) into `DIR/images/<class>/`;
//! 3. shard it with the shard builder (`tessera shard`'s code path, `--shuffle 0`) into
//!    `DIR/shards/`;
//! 4. profile the input pipeline on those shards and name its bottleneck;
//! 5. train the tiny MAE for a bounded time on the CPU into `DIR/run/`;
//! 6. write the run's HTML report (`tessera report`) and say where everything is.
//!
//! Every stage is the real one a user would run by hand; the summary (stderr) lists the
//! commands. With `--json` the same facts go to stdout as one JSON object, and only then.

mod collection;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use serde::Serialize;
use tessera_pipeline::Recipe;
use tessera_pipeline::loader::LoaderOptions;
use tessera_pipeline::profile::{ProfileOptions, profile};
use tessera_shards::builder::{
    BuildOptions, InputSpec, LabelSource, NoProgress, Part, PrepareOptions, build,
};
use tessera_shards::compression::Compression;

/// The demo's recipe: a tiny MAE (ViT 4 x 96, decoder 1 x 64) on 32x32 crops, 4-pixel patches.
pub const DEMO_RECIPE: &str = r#"# `tessera demo`: a tiny MAE on procedural images, sized for a few minutes on a laptop CPU.
[data]
batch_size = 64
image_fields = ["jpg", "png"]
label_field = "cls"
shuffle_buffer = 500
seed = 0
bad_sample = "skip"

[[views]]
name = "image"
size = 32
scale = [0.35, 1.0]
ratio = [0.75, 1.3333333333333333]
interpolation = "bicubic"

[[views.transforms]]
op = "horizontal_flip"
p = 0.5

[views.mask]
kind = "random"
ratio = 0.75
patch_size = 4

[model]
arch = "vit_tiny_patch16_224"
img_size = 32
patch_size = 4
embed_dim = 96
depth = 4
num_heads = 3

[objective]
method = "mae"
decoder_embed_dim = 64
decoder_depth = 1
decoder_num_heads = 2
norm_pix_loss = true

[train]
# About two minutes on a 2-core laptop CPU (docs/PERFORMANCE.md), inside `--minutes`.
steps = 1000
warmup_steps = 50
checkpoint_every = 200
keep_checkpoints = 2

[optim]
base_lr = 1.5e-3
weight_decay = 0.05
"#;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where everything goes (images, shards, recipe, run).
    #[arg(long, default_value = "tessera-demo")]
    pub out: PathBuf,
    /// Images to generate.
    #[arg(long, default_value_t = 1200)]
    pub images: usize,
    /// Training steps (default: the recipe's `[train] steps`, bounded by `--minutes`).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Wall-clock bound on training, in minutes.
    #[arg(long, default_value_t = 2.5)]
    pub minutes: f64,
    /// Tiny everything (240 images, 8 steps): checks that every stage works.
    #[arg(long)]
    pub quick: bool,
    /// CPU workers of the input pipeline. Default: all cores for sharding and profiling;
    /// training splits the cores itself (`tessera train --workers`).
    #[arg(long)]
    pub workers: Option<usize>,
    /// No progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the summary as one JSON object to stdout.
    #[arg(long)]
    pub json: bool,
}

/// What the demo prints at the end (stdout, JSON, with `--json`).
#[derive(Debug, Serialize)]
struct Report {
    images: PathBuf,
    images_written: usize,
    images_bytes: u64,
    shards: Vec<PathBuf>,
    samples_sharded: u64,
    recipe: PathBuf,
    preview: PathBuf,
    pipeline_images_per_second: f64,
    pipeline_bottleneck: String,
    run: PathBuf,
    steps: u64,
    first_loss: Option<f64>,
    last_loss: Option<f64>,
    training_images_per_second: f64,
    training_threads: super::threads::ThreadSplit,
    data_wait_fraction: f64,
    pictures: Vec<PathBuf>,
    loss_curve: PathBuf,
    tensorboard: PathBuf,
    report: PathBuf,
    checkpoint: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // The recipe, on disk so `tessera train --config` can rerun it; its `[train] steps` are
    // the demo's unless `--steps` or `--quick` say otherwise.
    let recipe_path = out.join("recipe.toml");
    std::fs::write(&recipe_path, DEMO_RECIPE)
        .with_context(|| format!("writing {}", recipe_path.display()))?;
    let recipe_arg = recipe_path.to_string_lossy().into_owned();
    let recipe = Recipe::load(&recipe_arg).context("loading the demo recipe")?;
    let recipe_steps = tessera_trainer::config::TrainerConfig::from_recipe(&recipe)
        .context("the demo recipe's trainer sections")?
        .train
        .steps
        .context("the demo recipe has no [train] steps")?;
    let (images, steps) = if args.quick {
        (240.min(args.images), args.steps.unwrap_or(8))
    } else {
        (args.images, args.steps.unwrap_or(recipe_steps))
    };
    let workers = args
        .workers
        .unwrap_or_else(tessera_pipeline::loader::default_workers);

    // 1. Images.
    eprintln!(
        "[1/5] drawing {images} procedural images into {}",
        out.join("images").display()
    );
    let collection = collection::generate(&out.join("images"), images, 0)?;

    // 2. Shards, through the same builder as `tessera shard`.
    eprintln!("[2/5] sharding them into {}", out.join("shards").display());
    let shard_dir = out.join("shards");
    let manifest = build(
        &BuildOptions {
            inputs: vec![InputSpec::classify(&collection.dir)?],
            labels: LabelSource::Folders,
            out: shard_dir.clone(),
            prefix: "demo".into(),
            part: Part::WHOLE,
            max_samples: (images as u64).div_ceil(4).max(1),
            max_bytes: 1 << 30,
            compression: Compression::None,
            prepare: PrepareOptions::default(),
            dedup: false,
            // The collection is drawn class folder by class folder: mixed, every shard (and
            // so the preview and every batch) holds all the classes.
            shuffle: Some(0),
            workers,
            publish_to: None,
            fetch: Default::default(),
        },
        &NoProgress,
    )
    .context("sharding the demo images")?;
    let shards: Vec<PathBuf> = manifest
        .shards
        .iter()
        .map(|s| shard_dir.join(&s.path))
        .collect();

    // 4. What the model will see: views and masks of a few samples.
    let mut loader = LoaderOptions::new(shards.clone(), recipe);
    loader.graph.workers = workers;
    let preview_path = out.join("preview.png");
    let grid = tessera_pipeline::preview::preview(loader.clone(), 6)
        .context("drawing the demo preview")?;
    tessera_pipeline::preview::write_png(&grid, &preview_path)?;

    // 5. Profile the input pipeline alone.
    eprintln!(
        "[3/5] preview in {}; profiling the input pipeline ({workers} workers)",
        preview_path.display()
    );
    let report = profile(
        ProfileOptions {
            loader,
            batches: Some(if args.quick { 3 } else { 30 }),
            seconds: Some(20.0),
            decode_only: false,
        },
        |_, _| {},
    )
    .context("profiling the demo pipeline")?;
    eprintln!(
        "      {:.0} images/s; bottleneck: {} ({})",
        report.images_per_second, report.bottleneck.stage, report.bottleneck.message
    );

    // 6. Train.
    eprintln!(
        "[4/5] training a tiny MAE for {steps} steps (at most {:.1} minutes)",
        args.minutes
    );
    let run_dir = out.join("run");
    let shard_spec = shards
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("::");
    let train_args = super::train::Args {
        config: recipe_arg,
        list_methods: false,
        shards: Some(shard_spec),
        synthetic: false,
        steps: Some(steps),
        stop_after: None,
        minutes: Some(args.minutes),
        out: Some(run_dir.clone()),
        resume: false,
        // The training split (compute threads vs workers) is chosen by `train`.
        workers: args.workers,
        threads: None,
        batch_size: None,
        device: "cpu".into(),
        pageable_buffers: false,
        picture_every: Some((steps / 4).max(1)),
        checkpoint_every: None,
        remote: Default::default(),
        quiet: args.quiet,
        dist: super::launch::DistArgs::alone(),
        json: false,
    };
    let prepared = super::train::prepare(&train_args)?;
    let stop = AtomicBool::new(false);
    let (summary, threads) = super::train::train(&train_args, prepared, &stop)?;
    let losses = tessera_trainer::metrics::read_metrics(&summary.metrics)?;
    let report_path = run_dir.join("report.html");
    super::report::write_report(std::slice::from_ref(&run_dir), &report_path, 0.9, false)?;

    // 7. Report.
    let report = Report {
        images: collection.dir.clone(),
        images_written: collection.images,
        images_bytes: collection.bytes,
        shards,
        samples_sharded: manifest.samples,
        recipe: recipe_path.clone(),
        preview: preview_path,
        pipeline_images_per_second: report.images_per_second,
        pipeline_bottleneck: format!("{}: {}", report.bottleneck.stage, report.bottleneck.message),
        run: run_dir.clone(),
        steps: summary.steps_done,
        first_loss: losses.first().map(|m| m.loss),
        last_loss: summary.last_loss,
        training_images_per_second: summary.images_per_second,
        training_threads: threads,
        data_wait_fraction: summary.data_wait_fraction,
        pictures: summary.pictures.clone(),
        loss_curve: summary.loss_curve.clone(),
        tensorboard: run_dir.join(tessera_trainer::train::layout::TENSORBOARD),
        report: report_path,
        checkpoint: summary.checkpoint.clone(),
    };
    print_human(&report, out);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

fn print_human(r: &Report, out: &Path) {
    eprintln!("[5/5] done");
    eprintln!(
        "  images:          {} ({:.1} MB) in {}",
        r.images_written,
        r.images_bytes as f64 / 1e6,
        r.images.display()
    );
    eprintln!(
        "  shards:          {} ({} samples) in {}",
        r.shards.len(),
        r.samples_sharded,
        out.join("shards").display()
    );
    eprintln!("  preview:         {}", r.preview.display());
    eprintln!(
        "  pipeline:        {:.0} images/s, bottleneck {}",
        r.pipeline_images_per_second, r.pipeline_bottleneck
    );
    eprintln!(
        "  training:        {} steps, loss {} -> {}, {:.0} images/s, {:.0}% of step time waiting for data",
        r.steps,
        r.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
        r.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        r.training_images_per_second,
        r.data_wait_fraction * 100.0
    );
    if let Some(last) = r.pictures.last() {
        eprintln!(
            "  reconstructions: {} (original | masked | reconstruction)",
            last.display()
        );
    }
    eprintln!("  loss curve:      {}", r.loss_curve.display());
    eprintln!(
        "  report:          {} (open in a browser)",
        r.report.display()
    );
    eprintln!(
        "  tensorboard:     tensorboard --logdir {}",
        r.tensorboard.display()
    );
    eprintln!(
        "  next:            tessera train --config {} --shards '{}/*.tar' --out {}/run --resume",
        r.recipe.display(),
        out.join("shards").display(),
        out.display()
    );
}
