//! `tessera export`: a checkpoint's backbone as timm-compatible safetensors.
//!
//! `--checkpoint` takes a checkpoint directory or a run directory (its newest complete
//! checkpoint is used). The file gets timm's key names (`patch_embed.proj.weight`,
//! `blocks.0.attn.qkv.weight`, ...), so `timm.create_model(arch, num_classes=0)` loads it
//! with `load_state_dict`; heads and decoders are not exported. ResNets and RegNets get
//! timm's names too (`conv1.weight`, `layer1.0.bn1.running_mean`, `s1.b1.conv1.conv.weight`). A line goes to stderr; with `--json`, one
//! JSON object to stdout.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A checkpoint directory (`RUN/checkpoints/step-…`) or a run directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The safetensors file to write (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// `student` (the trained network, default) or `teacher` (the momentum teacher of
    /// BYOL, MoCo and the other methods that keep one).
    #[arg(long, default_value = "student")]
    pub which: tessera_trainer::eval::Which,
    /// Print one JSON object to stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let summary = tessera_trainer::export::export(&args.checkpoint, args.which, &args.out)
        .with_context(|| format!("exporting {}", args.checkpoint.display()))?;
    eprintln!(
        "wrote {} ({} tensors, {} parameters) from {} (step {})",
        summary.output.display(),
        summary.tensors,
        summary.parameters,
        summary.checkpoint.display(),
        summary.step
    );
    if !args.json {
        return Ok(());
    }
    let json = serde_json::json!({
        "checkpoint": summary.checkpoint,
        "output": summary.output,
        "step": summary.step,
        "tensors": summary.tensors,
        "parameters": summary.parameters,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
