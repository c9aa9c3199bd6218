//! `tessera`: shard raw image collections, stream them into self-supervised pretraining,
//! and profile the pipeline. Each subcommand lives in its own module under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tessera", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build WebDataset shards from directories or lists of images.
    Shard(cmd::shard::Args),
    /// Write the seek index for shards made elsewhere.
    Index(cmd::index::Args),
    /// Count samples and fields of shards; `--verify` decodes every image.
    Inspect(cmd::inspect::Args),
    /// Run the input pipeline alone and name its bottleneck.
    Profile(cmd::profile::Args),
    /// Draw a grid of samples with all their views and masks.
    Preview(cmd::preview::Args),
    /// Pretrain a model from a recipe.
    #[cfg(feature = "train")]
    Train(cmd::train::Args),
    /// Write a checkpoint's encoder as timm-compatible safetensors.
    #[cfg(feature = "train")]
    Export(cmd::export::Args),
    /// Score a checkpoint's encoder: kNN and linear-probe accuracy on labelled shards.
    #[cfg(feature = "train")]
    Eval(cmd::eval::Args),
    /// Draw a ViT checkpoint's last-layer class-token attention, one heat-map per head.
    #[cfg(feature = "train")]
    Attention(cmd::attention::Args),
    /// One HTML page about one or more runs: curves, pictures, recipe, command, timing.
    #[cfg(feature = "train")]
    Report(cmd::report::Args),
    /// Everything on built-in defaults: make images, shard, preview, profile, train a tiny MAE.
    #[cfg(feature = "train")]
    Demo(cmd::demo::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
                // burn-collective logs every tensor transfer at `info` (each step of a
                // data-parallel run): its warnings and errors only, unless asked.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "info,burn_collective=warn,burn_communication=warn",
                    )
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Shard(args) => cmd::shard::run(args),
        Command::Index(args) => cmd::index::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Profile(args) => cmd::profile::run(args),
        Command::Preview(args) => cmd::preview::run(args),
        #[cfg(feature = "train")]
        Command::Train(args) => cmd::train::run(args),
        #[cfg(feature = "train")]
        Command::Export(args) => cmd::export::run(args),
        #[cfg(feature = "train")]
        Command::Eval(args) => cmd::eval::run(args),
        #[cfg(feature = "train")]
        Command::Attention(args) => cmd::attention::run(args),
        #[cfg(feature = "train")]
        Command::Report(args) => cmd::report::run(args),
        #[cfg(feature = "train")]
        Command::Demo(args) => cmd::demo::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
