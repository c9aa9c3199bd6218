//! Typed errors of the shard format. Each names the shard and, where it applies, the byte
//! offset, so a user can find the damage.

/// Everything that can go wrong reading or writing shards.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
}
