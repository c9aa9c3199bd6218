//! Recipes: one TOML file that says what a run reads, which views it makes of each image,
//! which of them are masked, and (opaquely) how the trainer trains.
//!
//! A recipe is parsed and checked completely before any work starts ("decide once, up
//! front"): unknown keys are errors that list the keys allowed, and every value is checked
//! for range and consistency with a message naming the key (`views[1].scale: lower bound
//! 1.2 > upper bound 1.0`). The `[model]`, `[train]`, `[optim]`, `[schedule]`,
//! `[objective]` and `[eval]` sections are kept as raw TOML tables for the trainer, which
//! checks them with its own structs.
//!
//! ```toml
//! [data]
//! batch_size = 64
//!
//! [[views]]
//! name = "global"
//! size = 224
//! scale = [0.2, 1.0]
//! interpolation = "bicubic"
//! [[views.transforms]]
//! op = "horizontal_flip"
//! p = 0.5
//! [views.mask]
//! kind = "random"
//! ratio = 0.75
//! patch_size = 16
//! ```
//!
//! Builtin recipes live in `configs/` and are embedded in the binary; [`Recipe::load`]
//! takes either a builtin name (`mae`, `dino`, ...) or a path.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::decode::DEFAULT_MAX_PIXELS;
use crate::masks::MaskSpec;
use crate::transforms::TransformSpec;

/// The recipes compiled into the program, by name.
pub const BUILTIN_RECIPES: &[(&str, &str)] = &[
    ("mae", include_str!("../../configs/mae.toml")),
    (
        "mae_vit_base",
        include_str!("../../configs/mae_vit_base.toml"),
    ),
    (
        "mae_vit_tiny_cifar",
        include_str!("../../configs/mae_vit_tiny_cifar.toml"),
    ),
    ("simmim", include_str!("../../configs/simmim.toml")),
    ("simclr", include_str!("../../configs/simclr.toml")),
    ("byol", include_str!("../../configs/byol.toml")),
    ("dino", include_str!("../../configs/dino.toml")),
    ("ibot", include_str!("../../configs/ibot.toml")),
    (
        "dino_vit_small",
        include_str!("../../configs/dino_vit_small.toml"),
    ),
    (
        "dino_vit_tiny_cifar",
        include_str!("../../configs/dino_vit_tiny_cifar.toml"),
    ),
    (
        "dino_resnet18_cifar",
        include_str!("../../configs/dino_resnet18_cifar.toml"),
    ),
    (
        "ibot_vit_small",
        include_str!("../../configs/ibot_vit_small.toml"),
    ),
    (
        "ibot_vit_tiny_cifar",
        include_str!("../../configs/ibot_vit_tiny_cifar.toml"),
    ),
    (
        "simclr_resnet18_cifar",
        include_str!("../../configs/simclr_resnet18_cifar.toml"),
    ),
    (
        "simclr_resnet50",
        include_str!("../../configs/simclr_resnet50.toml"),
    ),
    (
        "mocov2_resnet50",
        include_str!("../../configs/mocov2_resnet50.toml"),
    ),
    (
        "mocov3_vit_small",
        include_str!("../../configs/mocov3_vit_small.toml"),
    ),
    (
        "byol_resnet50",
        include_str!("../../configs/byol_resnet50.toml"),
    ),
    (
        "byol_resnet18_cifar",
        include_str!("../../configs/byol_resnet18_cifar.toml"),
    ),
    (
        "simsiam_resnet18_cifar",
        include_str!("../../configs/simsiam_resnet18_cifar.toml"),
    ),
    (
        "barlowtwins_resnet50",
        include_str!("../../configs/barlowtwins_resnet50.toml"),
    ),
    (
        "vicreg_resnet50",
        include_str!("../../configs/vicreg_resnet50.toml"),
    ),
    (
        "nnclr_resnet18_cifar",
        include_str!("../../configs/nnclr_resnet18_cifar.toml"),
    ),
    (
        "swav_resnet50",
        include_str!("../../configs/swav_resnet50.toml"),
    ),
    (
        "seer_regnety",
        include_str!("../../configs/seer_regnety.toml"),
    ),
    (
        "swav_resnet18_cifar",
        include_str!("../../configs/swav_resnet18_cifar.toml"),
    ),
    (
        "simmim_vit_base",
        include_str!("../../configs/simmim_vit_base.toml"),
    ),
    (
        "simmim_vit_tiny_cifar",
        include_str!("../../configs/simmim_vit_tiny_cifar.toml"),
    ),
    (
        "data2vec_vit_base",
        include_str!("../../configs/data2vec_vit_base.toml"),
    ),
    (
        "data2vec_vit_tiny_cifar",
        include_str!("../../configs/data2vec_vit_tiny_cifar.toml"),
    ),
    (
        "msn_vit_small",
        include_str!("../../configs/msn_vit_small.toml"),
    ),
    (
        "msn_vit_tiny_cifar",
        include_str!("../../configs/msn_vit_tiny_cifar.toml"),
    ),
];

/// A parsed, checked recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Where the recipe came from: a builtin name or the file path (not in the file).
    #[serde(skip)]
    pub source: String,
    /// What to read and how to batch it.
    pub data: DataSpec,
    /// The views made of every image, in batch order (a view with `count = n` repeats).
    pub views: Vec<ViewSpec>,
    /// Where the random transforms run (`[augment]`). Default: all on the CPU workers.
    #[serde(default)]
    pub augment: AugmentSpec,
    /// Model settings, for the trainer (parsed there).
    #[serde(default)]
    pub model: Option<toml::Table>,
    /// Training-loop settings, for the trainer.
    #[serde(default)]
    pub train: Option<toml::Table>,
    /// Optimiser settings, for the trainer.
    #[serde(default)]
    pub optim: Option<toml::Table>,
    /// Learning-rate and other schedules, for the trainer.
    #[serde(default)]
    pub schedule: Option<toml::Table>,
    /// Loss / objective settings, for the trainer.
    #[serde(default)]
    pub objective: Option<toml::Table>,
    /// Evaluation settings (kNN, linear probe), for the trainer.
    #[serde(default)]
    pub eval: Option<toml::Table>,
}

/// What to do with a sample whose image cannot be decoded or transformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadSamplePolicy {
    /// Count it, log it with `shard:key`, and go on with the next sample.
    Skip,
    /// Stop the run with an error naming the sample.
    Fail,
}

fn default_image_fields() -> Vec<String> {
    ["jpg", "jpeg", "png", "webp", "gif"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_label_field() -> Option<String> {
    Some("cls".to_string())
}
fn default_shuffle_buffer() -> usize {
    1000
}
fn default_max_pixels() -> u64 {
    DEFAULT_MAX_PIXELS
}
fn default_bad_sample() -> BadSamplePolicy {
    BadSamplePolicy::Skip
}

/// The `[data]` section: what to read and how to batch it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// Samples per batch (per rank). Required; must be at least 1.
    pub batch_size: usize,
    /// Sample fields tried in order for the image (lower-case extensions as in the tar
    /// member names). Default `["jpg", "jpeg", "png", "webp", "gif"]`. The first present
    /// field is decoded; its format is sniffed from the bytes, not this name.
    #[serde(default = "default_image_fields")]
    pub image_fields: Vec<String>,
    /// Field holding the class label as decimal text (WebDataset's `cls`). Default `"cls"`;
    /// samples without it get label -1.
    #[serde(default = "default_label_field")]
    pub label_field: Option<String>,
    /// Samples held in the shuffle buffer. Default 1000; 0 or 1 disables shuffling. Larger
    /// mixes better across shards and costs memory (encoded bytes) and start-up time.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Seed of every random decision (order, augmentations, masks). Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Largest image accepted, in pixels (width x height), checked from the header before
    /// decoding. Default 89,478,485 (PIL's decompression-bomb warning threshold).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// `"skip"` (default): count and log undecodable samples and go on; `"fail"`: stop.
    #[serde(default = "default_bad_sample")]
    pub bad_sample: BadSamplePolicy,
    /// CPU worker threads for decode and augmentation. Default: the number of cores
    /// available. More than the core count only adds contention.
    #[serde(default)]
    pub workers: Option<usize>,
}

/// The `[augment]` section: where the views' random transforms run.
///
/// ```toml
/// [augment]
/// on_device = true
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentSpec {
    /// `false` (default): every transform runs on the CPU workers and batches carry the
    /// final pixels. `true`: the workers stop after the crop, resize and flips, and make
    /// every other random draw exactly as they would (so the crops, coins and factors are
    /// the same); batches carry the draws ([`crate::batch::Batch::augment`]) and the
    /// trainer applies colour jitter, greyscale, blur and solarize on the training device
    /// (the DALI idea: for machines whose GPU has room and whose CPU has none). Only
    /// `tessera train` applies them: `tessera preview` shows the views before them.
    #[serde(default)]
    pub on_device: bool,
}

/// How a view's pixels are cut from the decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CropKind {
    /// torchvision `RandomResizedCrop(size, scale, ratio)`.
    RandomResized,
    /// torchvision `Resize(resize)` (shorter side) then `CenterCrop(size)`: evaluation.
    Center,
}

/// Resampling filter. Both are antialiased when downscaling, like PIL and torchvision's
/// `antialias=True`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// Triangle filter (PIL `BILINEAR`).
    Bilinear,
    /// Keys cubic with a = -0.5 (PIL `BICUBIC`, torchvision bicubic with antialias).
    Bicubic,
}

fn default_count() -> usize {
    1
}
fn default_crop() -> CropKind {
    CropKind::RandomResized
}
fn default_interpolation() -> Interpolation {
    Interpolation::Bilinear
}

/// One `[[views]]` entry: a crop, a resize and an ordered list of random transforms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    /// Name, used in logs, previews and [`ViewInstance::name`]. Must be unique.
    pub name: String,
    /// How many independent views of this kind each sample gets (DINO: 10 local crops).
    /// Default 1.
    #[serde(default = "default_count")]
    pub count: usize,
    /// Output side in pixels (views are square: `size x size x 3` u8).
    pub size: u32,
    /// `"random_resized"` (default) or `"center"`.
    #[serde(default = "default_crop")]
    pub crop: CropKind,
    /// RandomResizedCrop: range of the crop's area as a fraction of the image's.
    /// Default `[0.08, 1.0]`; both in (0, 1], lower <= upper.
    #[serde(default)]
    pub scale: Option<[f64; 2]>,
    /// RandomResizedCrop: range of the crop's aspect ratio (width / height), sampled
    /// uniformly in log space. Default `[0.75, 1.3333]`; positive, lower <= upper.
    #[serde(default)]
    pub ratio: Option<[f64; 2]>,
    /// Center crop: the shorter side is first resized to this many pixels. Default
    /// `round(size / 0.875)` (256 for 224, the ImageNet evaluation convention).
    #[serde(default)]
    pub resize: Option<u32>,
    /// `"bilinear"` (default, torchvision's default) or `"bicubic"`.
    #[serde(default = "default_interpolation")]
    pub interpolation: Interpolation,
    /// Transforms applied in order after the crop, each with its own probability.
    #[serde(default)]
    pub transforms: Vec<TransformSpec>,
    /// Patch mask generated for this view (MAE, SimMIM, iBOT), if any.
    #[serde(default)]
    pub mask: Option<MaskSpec>,
}

impl ViewSpec {
    /// Crop area range (the default filled in).
    pub fn scale(&self) -> [f64; 2] {
        self.scale.unwrap_or([0.08, 1.0])
    }

    /// Crop aspect-ratio range (the default filled in).
    pub fn ratio(&self) -> [f64; 2] {
        self.ratio.unwrap_or([3.0 / 4.0, 4.0 / 3.0])
    }

    /// Shorter side before a center crop (the default filled in).
    pub fn resize(&self) -> u32 {
        self.resize
            .unwrap_or_else(|| (f64::from(self.size) / 0.875).round() as u32)
    }
}

/// One concrete view of a sample, after expanding `count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewInstance {
    /// `name` when count is 1, else `name_1`, `name_2`, ...
    pub name: String,
    /// Index into [`Recipe::views`].
    pub spec: usize,
    /// 0-based repeat within its spec.
    pub repeat: usize,
}

/// Why a recipe could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// Neither a builtin name nor an existing file.
    #[error("no builtin recipe or file named `{name}` (builtins: {builtins})")]
    NotFound {
        /// What was asked for.
        name: String,
        /// The builtin names, comma-separated.
        builtins: String,
    },
    /// The file exists but could not be read.
    #[error("cannot read recipe {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("recipe {recipe}")]
    Parse {
        /// Builtin name or path.
        recipe: String,
        /// The parser's message (names the key, line and the keys allowed).
        #[source]
        source: toml::de::Error,
    },
    /// A value out of range or inconsistent with another.
    #[error("recipe {recipe}: {key}: {problem}")]
    Invalid {
        /// Builtin name or path.
        recipe: String,
        /// Dotted path of the offending key, e.g. `views[1].scale`.
        key: String,
        /// What is wrong and what would be right.
        problem: String,
    },
}

impl Recipe {
    /// Load a builtin recipe by name, or else a recipe file by path.
    pub fn load(name_or_path: &str) -> Result<Recipe, RecipeError> {
        if let Some((name, text)) = BUILTIN_RECIPES
            .iter()
            .find(|(name, _)| *name == name_or_path)
        {
            return Recipe::parse(text, name);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(RecipeError::NotFound {
                name: name_or_path.to_string(),
                builtins: Recipe::builtin_names().collect::<Vec<_>>().join(", "),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Recipe::parse(&text, name_or_path)
    }

    /// Switch device augmentation ([`AugmentSpec::on_device`]) on or off, checking the
    /// views again (each may have at most [`crate::transforms::MAX_DEVICE_STEPS`]
    /// transforms besides flips for the device).
    pub fn set_augment_on_device(&mut self, on_device: bool) -> Result<(), RecipeError> {
        let before = self.augment.on_device;
        self.augment.on_device = on_device;
        self.validate()
            .inspect_err(|_| self.augment.on_device = before)
    }

    /// The names [`Recipe::load`] accepts without a path.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN_RECIPES.iter().map(|(name, _)| *name)
    }

    /// Parse and check recipe text; `source` names it in error messages.
    pub fn parse(text: &str, source: &str) -> Result<Recipe, RecipeError> {
        let mut recipe: Recipe = toml::from_str(text).map_err(|e| RecipeError::Parse {
            recipe: source.to_string(),
            source: e,
        })?;
        recipe.source = source.to_string();
        recipe.validate()?;
        Ok(recipe)
    }

    /// The concrete views of a sample in batch order (DINO: `global_1`, `global_2`,
    /// `local_1` .. `local_10`).
    pub fn view_instances(&self) -> Vec<ViewInstance> {
        let mut out = Vec::new();
        for (spec, view) in self.views.iter().enumerate() {
            for repeat in 0..view.count {
                let name = if view.count == 1 {
                    view.name.clone()
                } else {
                    format!("{}_{}", view.name, repeat + 1)
                };
                out.push(ViewInstance { name, spec, repeat });
            }
        }
        out
    }

    fn invalid(&self, key: impl Into<String>, problem: impl Into<String>) -> RecipeError {
        RecipeError::Invalid {
            recipe: self.source.clone(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// Range and consistency checks that serde's types cannot express.
    fn validate(&self) -> Result<(), RecipeError> {
        let data = &self.data;
        if data.batch_size == 0 {
            return Err(self.invalid("data.batch_size", "must be at least 1"));
        }
        if data.image_fields.is_empty() {
            return Err(self.invalid(
                "data.image_fields",
                "list at least one field, e.g. [\"jpg\", \"png\"]",
            ));
        }
        if data.max_pixels == 0 {
            return Err(self.invalid("data.max_pixels", "must be at least 1"));
        }
        if data.workers == Some(0) {
            return Err(self.invalid(
                "data.workers",
                "must be at least 1 (or omit it for one per core)",
            ));
        }
        if self.views.is_empty() {
            return Err(self.invalid("views", "a recipe needs at least one [[views]] entry"));
        }
        for (i, view) in self.views.iter().enumerate() {
            let key = |field: &str| format!("views[{i}].{field}");
            if self.views[..i].iter().any(|v| v.name == view.name) {
                return Err(self.invalid(
                    key("name"),
                    format!(
                        "`{}` is used by an earlier view; names must be unique",
                        view.name
                    ),
                ));
            }
            if view.count == 0 {
                return Err(self.invalid(key("count"), "must be at least 1"));
            }
            if view.size == 0 || view.size > 4096 {
                return Err(self.invalid(
                    key("size"),
                    format!("{} is out of range 1..=4096", view.size),
                ));
            }
            match view.crop {
                CropKind::RandomResized => {
                    if view.resize.is_some() {
                        return Err(self.invalid(
                            key("resize"),
                            "only applies to crop = \"center\"; use scale/ratio for random_resized",
                        ));
                    }
                    let [lo, hi] = view.scale();
                    check_range(lo, hi).map_err(|p| self.invalid(key("scale"), p))?;
                    if !(lo > 0.0 && hi <= 1.0) {
                        return Err(self.invalid(
                            key("scale"),
                            format!(
                                "[{lo}, {hi}] must lie within (0, 1] (fractions of the image area)"
                            ),
                        ));
                    }
                    let [lo, hi] = view.ratio();
                    check_range(lo, hi).map_err(|p| self.invalid(key("ratio"), p))?;
                    if lo <= 0.0 {
                        return Err(self.invalid(
                            key("ratio"),
                            format!("lower bound {lo} must be positive (width / height)"),
                        ));
                    }
                }
                CropKind::Center => {
                    if view.scale.is_some() || view.ratio.is_some() {
                        return Err(self.invalid(
                            key("scale"),
                            "scale and ratio only apply to crop = \"random_resized\"",
                        ));
                    }
                    if view.resize() < view.size {
                        return Err(self.invalid(
                            key("resize"),
                            format!(
                                "{} is smaller than size {}; the center crop would not fit",
                                view.resize(),
                                view.size
                            ),
                        ));
                    }
                }
            }
            let device_steps = view
                .transforms
                .iter()
                .filter(|t| !matches!(t, TransformSpec::HorizontalFlip { .. }))
                .count();
            if self.augment.on_device && device_steps > crate::transforms::MAX_DEVICE_STEPS {
                return Err(self.invalid(
                    key("transforms"),
                    format!(
                        "{device_steps} transforms besides flips; with augment.on_device a view \
                         may have at most {}",
                        crate::transforms::MAX_DEVICE_STEPS
                    ),
                ));
            }
            for (j, transform) in view.transforms.iter().enumerate() {
                transform.validate().map_err(|(field, problem)| {
                    self.invalid(format!("views[{i}].transforms[{j}].{field}"), problem)
                })?;
            }
            if let Some(mask) = &view.mask {
                mask.validate(view.size).map_err(|(field, problem)| {
                    self.invalid(format!("views[{i}].mask.{field}"), problem)
                })?;
            }
        }
        Ok(())
    }
}

/// A `[lo, hi]` pair must be finite and ordered.
pub(crate) fn check_range(lo: f64, hi: f64) -> Result<(), String> {
    if !lo.is_finite() || !hi.is_finite() {
        return Err(format!("[{lo}, {hi}] must be finite numbers"));
    }
    if lo > hi {
        return Err(format!("lower bound {lo} > upper bound {hi}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error with its causes, as the program prints it.
    fn chain(error: RecipeError) -> String {
        tessera_shards::error::Chain(&error).to_string()
    }

    const MINIMAL: &str = "[data]\nbatch_size = 4\n[[views]]\nname = \"v\"\nsize = 32\n";

    #[test]
    fn minimal_recipe_gets_defaults() {
        let recipe = Recipe::parse(MINIMAL, "test").unwrap();
        assert_eq!(recipe.data.shuffle_buffer, 1000);
        assert_eq!(recipe.data.label_field.as_deref(), Some("cls"));
        assert_eq!(recipe.views[0].scale(), [0.08, 1.0]);
        assert_eq!(recipe.views[0].interpolation, Interpolation::Bilinear);
        assert_eq!(recipe.view_instances().len(), 1);
    }

    #[test]
    fn unknown_key_names_it_and_the_alternatives() {
        let text = MINIMAL.replace("size = 32", "sizee = 32");
        let err = chain(Recipe::parse(&text, "test").unwrap_err());
        assert!(err.contains("sizee"), "{err}");
        assert!(err.contains("expected one of"), "{err}");
        assert!(err.contains("`size`"), "{err}");
    }

    #[test]
    fn bad_scale_names_the_view_and_bounds() {
        let text = format!("{MINIMAL}[[views]]\nname = \"w\"\nsize = 32\nscale = [1.2, 1.0]\n");
        let err = chain(Recipe::parse(&text, "test").unwrap_err());
        assert!(
            err.contains("views[1].scale: lower bound 1.2 > upper bound 1"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_names_and_zero_batch_are_refused() {
        let text = format!("{MINIMAL}[[views]]\nname = \"v\"\nsize = 32\n");
        let err = chain(Recipe::parse(&text, "test").unwrap_err());
        assert!(err.contains("views[1].name"), "{err}");
        let err = chain(Recipe::parse(&MINIMAL.replace("4", "0"), "test").unwrap_err());
        assert!(err.contains("data.batch_size: must be at least 1"), "{err}");
    }

    #[test]
    fn counts_expand_in_order() {
        let text = "[data]\nbatch_size = 1\n[[views]]\nname = \"global\"\nsize = 8\ncount = 2\n\
                    [[views]]\nname = \"local\"\nsize = 4\ncount = 3\n";
        let recipe = Recipe::parse(text, "test").unwrap();
        let names: Vec<_> = recipe
            .view_instances()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(
            names,
            ["global_1", "global_2", "local_1", "local_2", "local_3"]
        );
    }

    #[test]
    fn unknown_builtin_lists_the_builtins() {
        let err = chain(Recipe::load("no-such-recipe").unwrap_err());
        assert!(err.contains("dino") && err.contains("mae"), "{err}");
    }
}
