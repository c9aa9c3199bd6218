//! `tessera preview`: a PNG grid of a few samples with all their views and masks, drawn
//! by the real pipeline (`tessera_pipeline::preview`).

use std::path::PathBuf;

use anyhow::Context;
use tessera_pipeline::Recipe;
use tessera_pipeline::loader::LoaderOptions;
use tessera_shards::source;

/// Draw a grid of samples with all their views and masks.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Recipe: a builtin name (`mae`, `dino`, `ibot`, ...) or a TOML file.
    #[arg(long)]
    pub recipe: String,
    /// Shards: a path, glob, brace range or `@list` file.
    #[arg(long, value_name = "PATTERN")]
    pub shards: String,
    /// The PNG file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Samples (rows) to draw.
    #[arg(long, default_value_t = 4)]
    pub samples: usize,
    /// Seed of the order and augmentations (default: the recipe's).
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub remote: super::remote::RemoteArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    args.remote.apply()?;
    anyhow::ensure!(args.samples > 0, "--samples must be at least 1");
    let recipe =
        Recipe::load(&args.recipe).with_context(|| format!("loading recipe `{}`", args.recipe))?;
    let shards = source::resolve(&args.shards)
        .with_context(|| format!("resolving shards `{}`", args.shards))?;
    let mut options = LoaderOptions::new(shards, recipe);
    if let Some(seed) = args.seed {
        options.graph.seed = seed;
    }
    let grid =
        tessera_pipeline::preview::preview(options, args.samples).context("drawing the preview")?;
    tessera_pipeline::preview::write_png(&grid, &args.out)?;
    eprintln!(
        "wrote {} ({}x{})",
        args.out.display(),
        grid.width(),
        grid.height()
    );
    Ok(())
}
