//! Flags for shards in object stores and over HTTP, shared by every command that reads or
//! writes shards: retries, stall timeout, read-ahead and the local shard cache. Credentials
//! and endpoints are not flags: they come from the stores' standard environment variables
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`; see the README's "Data in the cloud").

use std::path::PathBuf;

use tessera_shards::remote::{self, RemoteOptions, cache::CacheOptions};

/// Remote shard options (`s3://`, `gs://`, `az://`, `http(s)://`).
#[derive(clap::Args, Debug, Clone)]
pub struct RemoteArgs {
    /// Keep whole remote shards in this local directory for later epochs and runs
    /// (least recently used evicted beyond --cache-size).
    #[arg(long, value_name = "DIR", help_heading = "Remote shards")]
    pub cache_dir: Option<PathBuf>,
    /// Size cap of --cache-dir, e.g. `50GB`.
    #[arg(long, default_value = "10GB", value_parser = super::shard::parse_size, help_heading = "Remote shards")]
    pub cache_size: u64,
    /// Retries of a failed request or broken stream (doubling waits from 100 ms up to 5 s).
    #[arg(long, default_value_t = 8, help_heading = "Remote shards")]
    pub retries: u32,
    /// Seconds without data after which a request or stream is abandoned and resumed.
    #[arg(long, default_value_t = 30.0, help_heading = "Remote shards")]
    pub stall_timeout: f64,
    /// Bytes each remote shard stream reads ahead of its reader, e.g. `16MB`.
    #[arg(long, default_value = "8MiB", value_parser = super::shard::parse_size, help_heading = "Remote shards")]
    pub read_ahead: u64,
}

impl Default for RemoteArgs {
    /// The command line's defaults (one source of truth: the `#[arg]` attributes above).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            remote: RemoteArgs,
        }
        <Only as clap::Parser>::parse_from(["tessera"]).remote
    }
}

impl RemoteArgs {
    /// Check the flags and make them the process's remote options.
    pub fn apply(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.stall_timeout.is_finite() && self.stall_timeout > 0.0,
            "--stall-timeout must be a positive number of seconds"
        );
        let options = RemoteOptions {
            retries: self.retries,
            stall_timeout: std::time::Duration::from_secs_f64(self.stall_timeout),
            read_ahead_bytes: usize::try_from(self.read_ahead).unwrap_or(usize::MAX),
            cache: self.cache_dir.clone().map(|dir| CacheOptions {
                dir,
                max_bytes: self.cache_size,
            }),
            ..RemoteOptions::default()
        };
        remote::configure(options);
        Ok(())
    }
}
