//! `tessera index`: write the seek index (`<shard>.idx`) for shards made elsewhere, so
//! resuming mid-shard is a seek instead of a scan. Shards from `tessera shard` already
//! have one. A damaged shard gets no index (an index must describe the whole shard): it
//! is reported, the others are still indexed, and the exit status is non-zero.

use serde::Serialize;
use tessera_shards::error::Chain;
use tessera_shards::{index, source};

/// Write `<shard>.idx` for each shard.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Shards: paths, globs, brace ranges (`train-{000000..000009}.tar`) or `@list` files.
    #[arg(required = true, value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Written {
    shard: String,
    index: String,
    samples: usize,
    kind: index::IndexKind,
}

#[derive(Debug, Serialize)]
struct Failed {
    shard: String,
    error: String,
}

/// Index every shard and print what was written.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut paths = Vec::new();
    for pattern in &args.patterns {
        paths.extend(source::resolve(pattern)?);
    }
    let mut written = Vec::new();
    let mut failed = Vec::new();
    for path in paths {
        match index::write_index_for(&path) {
            Ok(idx) => {
                if !args.json {
                    println!(
                        "{}: {} samples ({:?})",
                        idx.path.display(),
                        idx.samples.len(),
                        idx.kind
                    );
                }
                written.push(Written {
                    shard: path.display().to_string(),
                    index: idx.path.display().to_string(),
                    samples: idx.samples.len(),
                    kind: idx.kind,
                });
            }
            Err(err) => {
                if !args.json {
                    println!("{}: FAILED: {}", path.display(), Chain(&err));
                }
                failed.push(Failed {
                    shard: path.display().to_string(),
                    error: Chain(&err).to_string(),
                });
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "indexed": written, "failed": failed })
        );
    }
    if !failed.is_empty() {
        anyhow::bail!("{} shard(s) could not be indexed", failed.len());
    }
    Ok(())
}
