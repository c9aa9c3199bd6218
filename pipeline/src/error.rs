//! The pipeline's umbrella error, for callers that drive several of its parts (recipe,
//! loader, preview) and want one type. Each part keeps its own precise error; this only
//! gathers them.

use crate::loader::LoaderError;
use crate::preview::PreviewError;
use crate::recipe::RecipeError;

/// Anything the pipeline can report, by the part that reported it.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The recipe could not be read or is invalid.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The loader could not start or stopped on an error.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// A preview could not be drawn or written.
    #[error(transparent)]
    Preview(#[from] PreviewError),
    /// A shard could not be read.
    #[error(transparent)]
    Shard(#[from] tessera_shards::ShardError),
}
