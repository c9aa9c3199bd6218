//! Typed errors of the pipeline.

/// Everything that can go wrong configuring or running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Shard(#[from] tessera_shards::ShardError),
}
