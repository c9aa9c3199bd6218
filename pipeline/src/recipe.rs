//! Recipes: TOML files that describe views, masks and the trainer's settings.

/// A parsed, checked recipe.
#[derive(Debug, Clone)]
pub struct Recipe {}
