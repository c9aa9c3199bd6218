//! Frozen features of a pretrained encoder over labelled shards.
//!
//! The encoder comes from a checkpoint the way `tessera export` finds it
//! ([`crate::checkpoint::resolve`]: a checkpoint directory, or a run directory's newest
//! complete checkpoint). Images go through the same pipeline as training, with one
//! deterministic view instead of the recipe's augmentations: `Resize` of the shorter side
//! then `CenterCrop` to the model's image size, bicubic (the evaluation transform of MAE
//! and DINO), normalised on the device like the trainer ([`Uploader`]). The encoder sees
//! every patch (no masking); the feature is the class token after the final norm (DINO's
//! kNN, MAE's linear probe without `global_pool`), or the mean of the patch tokens.
//!
//! Labels are checked up front: the first sample of every shard must carry the label
//! field, so a shard made without `--labels` is named before any image is decoded.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use tessera_pipeline::Recipe;
use tessera_pipeline::loader::{Loader, LoaderOptions, default_workers};
use tessera_shards::Sample;
use tessera_shards::index::ShardIndex;
use tessera_shards::reader::ShardReader;

use burn::tensor::backend::AutodiffBackend;

use super::{EvalError, EvalProgress, Split};
use crate::backbone::{Backbone, BackboneConfig, NormMode};
use crate::checkpoint;
use crate::feeder::{HostUpload, Normalize, Uploader};
use crate::objectives::{Method, MethodVisitor};

/// More reader tasks than this buys nothing; fewer than the shard count mixes fewer shards
/// into the first batches (what `max_samples` keeps).
const MAX_READERS: usize = 16;

/// Samples mixed before a subset is cut with `max_samples` (encoded bytes in memory).
const SUBSET_SHUFFLE_BUFFER: usize = 1000;

/// A pretrained encoder and where it came from.
#[derive(Debug)]
pub struct Encoder<B: Backend> {
    /// The backbone, with the checkpoint's weights.
    pub backbone: Backbone<B>,
    /// Its shape.
    pub config: BackboneConfig,
    /// The side of the images it was trained on (the evaluation view is cut to it).
    pub img_size: usize,
    /// The checkpoint directory read.
    pub checkpoint: PathBuf,
    /// Optimiser steps the checkpoint had completed.
    pub step: u64,
}

/// Which network of a checkpoint to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    /// The trained network (default).
    #[default]
    Student,
    /// The momentum teacher (BYOL's target, MoCo's key encoder), for methods that have one.
    Teacher,
}

impl std::str::FromStr for Which {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "student" => Ok(Which::Student),
            "teacher" => Ok(Which::Teacher),
            _ => Err(format!("`{s}` is not `student` or `teacher`")),
        }
    }
}

/// The backbone of the checkpoint `checkpoint_or_run_dir` (a checkpoint directory, or a run
/// directory whose newest complete checkpoint is used), on `AB`'s inner backend: any method's
/// checkpoint, its student or (`which`) its momentum teacher.
pub fn load_encoder<AB: AutodiffBackend>(
    checkpoint_or_run_dir: &Path,
    which: Which,
    device: &AB::Device,
) -> crate::Result<Encoder<AB::InnerBackend>> {
    let dir = checkpoint::resolve(checkpoint_or_run_dir)?;
    let state = checkpoint::load_state(&dir)?;
    let backbone = state.config.method.visit::<AB, _>(LoadBackbone::<AB> {
        dir: &dir,
        config: &state.config,
        which,
        device,
    })?;
    Ok(Encoder {
        backbone,
        config: state.config.backbone.clone(),
        img_size: state.config.image_size,
        checkpoint: dir,
        step: state.step,
    })
}

struct LoadBackbone<'a, AB: AutodiffBackend> {
    dir: &'a Path,
    config: &'a crate::config::ResolvedTrainConfig,
    which: Which,
    device: &'a AB::Device,
}

impl<AB: AutodiffBackend> MethodVisitor<AB> for LoadBackbone<'_, AB> {
    type Output = crate::Result<Backbone<AB::InnerBackend>>;

    fn visit<M: Method<AB>>(self, method: &M) -> Self::Output {
        let (model, state) = method.init(self.config.backbone.init(self.device), self.device);
        match self.which {
            Which::Student => {
                let model = checkpoint::load_model::<AB, _>(self.dir, model, self.device)?;
                Ok(crate::objectives::inner_backbone(method, &model))
            }
            Which::Teacher => {
                let state = checkpoint::load_method_state::<AB::InnerBackend, _>(
                    self.dir,
                    state,
                    self.device,
                )?;
                method
                    .teacher_backbone(&state)
                    .ok_or_else(|| crate::Error::CheckpointMismatch {
                        path: self.dir.to_path_buf(),
                        what: format!(
                            "{} has no momentum teacher; export the student",
                            self.config.method.name()
                        ),
                    })
            }
        }
    }
}

/// Which tokens make the feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The class token after the final norm (DINO kNN, MAE linear probe).
    ClassToken,
    /// The mean of the patch tokens after the final norm (MAE's `global_pool` takes the
    /// mean before its own norm; this backbone has a single final norm).
    MeanPatch,
}

impl std::str::FromStr for Pooling {
    type Err = EvalError;

    /// `cls` or `mean`.
    fn from_str(s: &str) -> Result<Self, EvalError> {
        match s {
            "cls" => Ok(Pooling::ClassToken),
            "mean" => Ok(Pooling::MeanPatch),
            _ => Err(EvalError::setting(
                "pooling",
                format!("`{s}` is not `cls` (class token) or `mean` (mean of patch tokens)"),
            )),
        }
    }
}

impl Pooling {
    /// The feature of each image from the encoder's output.
    ///
    /// # Shapes
    /// `tokens` `[n, 1 + l, d]` (class token first) -> `[n, d]`.
    pub fn apply<B: Backend>(self, tokens: Tensor<B, 3>) -> Tensor<B, 2> {
        let [n, t, d] = tokens.dims();
        match self {
            Pooling::ClassToken => tokens.narrow(1, 0, 1).reshape([n, d]),
            Pooling::MeanPatch => tokens.narrow(1, 1, t - 1).mean_dim(1).reshape([n, d]),
        }
    }
}

/// How images become features.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Images per forward pass. Default 128.
    pub batch_size: usize,
    /// CPU workers decoding and cropping. Default: one per core.
    pub workers: usize,
    /// Shorter side before the centre crop, pixels. Default `round(img_size / 0.875)`
    /// (256 for 224, the ImageNet convention); pass the image size itself to keep whole
    /// images (CIFAR at 32).
    pub resize: Option<u32>,
    /// Stop after this many images (the first of the seeded order, mixed across shards).
    pub max_samples: Option<usize>,
    /// Class token or mean of patch tokens.
    pub pooling: Pooling,
    /// Seed of the shard order (and of the mixing when `max_samples` is set).
    pub seed: u64,
    /// Channel normalisation, as in training. Default ImageNet's.
    pub normalize: Normalize,
    /// The sample field holding the class index as decimal text. Default `cls`.
    pub label_field: String,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            batch_size: 128,
            workers: default_workers(),
            resize: None,
            max_samples: None,
            pooling: Pooling::ClassToken,
            seed: 0,
            normalize: Normalize::default(),
            label_field: "cls".into(),
        }
    }
}

impl ExtractOptions {
    pub(crate) fn check(&self) -> Result<(), EvalError> {
        if self.batch_size == 0 {
            return Err(EvalError::setting("batch_size", "must be at least 1"));
        }
        if self.workers == 0 {
            return Err(EvalError::setting("workers", "must be at least 1"));
        }
        Ok(())
    }
}

/// Feature vectors and their labels, row-major on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// `len() * dim` values, one row per image.
    pub values: Vec<f32>,
    /// Class index per image.
    pub labels: Vec<usize>,
    /// Width of a row.
    pub dim: usize,
    /// Samples the pipeline skipped (undecodable images).
    pub skipped: u64,
}

impl Features {
    /// Rows of `dim` values with their labels. Panics if `values` is not `labels.len() * dim`
    /// long (a programming error, not an input error).
    pub fn new(values: Vec<f32>, labels: Vec<usize>, dim: usize) -> Self {
        assert_eq!(values.len(), labels.len() * dim, "features are not n x dim");
        Features {
            values,
            labels,
            dim,
            skipped: 0,
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// As a device tensor `[len, dim]`.
    pub fn tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2> {
        Tensor::from_data(
            TensorData::new(self.values.clone(), [self.len(), self.dim]),
            device,
        )
    }
}

/// The pipeline recipe of the evaluation view: one centre-cropped, bicubic view of
/// `img_size`, no transforms, no mask; labels from `options.label_field`.
pub fn eval_recipe(img_size: usize, options: &ExtractOptions) -> Result<Recipe, EvalError> {
    let resize = options
        .resize
        .map(|r| format!("resize = {r}\n"))
        .unwrap_or_default();
    let shuffle = if options.max_samples.is_some() {
        SUBSET_SHUFFLE_BUFFER
    } else {
        0
    };
    let text = format!(
        "[data]\nbatch_size = {}\nlabel_field = {:?}\nshuffle_buffer = {shuffle}\nseed = {}\n\
         [[views]]\nname = \"center\"\nsize = {img_size}\ncrop = \"center\"\n{resize}\
         interpolation = \"bicubic\"\n",
        options.batch_size, options.label_field, options.seed,
    );
    Recipe::parse(&text, "evaluation view").map_err(EvalError::Recipe)
}

/// Checks that the first sample of every shard carries a class index in `field`.
pub fn check_labelled(shards: &[PathBuf], field: &str) -> Result<(), EvalError> {
    let mut sample = Sample::default();
    for path in shards {
        let shard_error = |source| EvalError::Shard {
            path: path.clone(),
            source,
        };
        let mut reader = ShardReader::open(path).map_err(shard_error)?;
        if !reader.read_into(&mut sample).map_err(shard_error)? {
            continue; // an empty shard contributes nothing
        }
        let Some(bytes) = sample.field(field) else {
            return Err(EvalError::UnlabelledShard {
                shard: path.clone(),
                key: sample.key.clone(),
                field: field.to_string(),
            });
        };
        let text = String::from_utf8_lossy(bytes);
        if text.trim().parse::<u64>().is_err() {
            return Err(EvalError::BadLabel {
                shard: path.clone(),
                key: sample.key.clone(),
                field: field.to_string(),
                value: text.chars().take(40).collect(),
            });
        }
    }
    Ok(())
}

/// Samples in `shards` according to their indexes; `None` when one has no index.
pub fn indexed_samples(shards: &[PathBuf]) -> Option<u64> {
    let mut total = 0;
    for shard in shards {
        total += ShardIndex::load_for(shard).ok()??.samples.len() as u64;
    }
    Some(total)
}

/// Features of the images in `shards`: the evaluation view of each, through the encoder.
pub fn extract<B: HostUpload>(
    encoder: &Encoder<B>,
    shards: &[PathBuf],
    split: Split,
    options: &ExtractOptions,
    device: &B::Device,
    progress: &mut dyn EvalProgress,
) -> Result<Features, EvalError> {
    let recipe = eval_recipe(encoder.img_size, options)?;
    let mut loader_options = LoaderOptions::new(shards.to_vec(), recipe);
    loader_options.graph.workers = options.workers;
    loader_options.graph.seed = options.seed;
    loader_options.graph.epochs = Some(1);
    loader_options.graph.ordered = true;
    loader_options.graph.readers = shards.len().clamp(1, MAX_READERS);
    let mut loader =
        Loader::start(loader_options).map_err(|source| EvalError::Loader { split, source })?;
    let uploader = Uploader::<B>::new(device, options.normalize);

    let limit = options.max_samples.unwrap_or(usize::MAX);
    let total = indexed_samples(shards).map(|n| n.min(limit as u64));
    progress.extraction_started(split, total);
    let dim = encoder.config.num_features();
    let mut values = Vec::new();
    let mut labels = Vec::new();
    while labels.len() < limit {
        let Some(batch) = loader.next_batch() else {
            break;
        };
        let batch = batch.map_err(|source| EvalError::Loader { split, source })?;
        let mut batch = uploader
            .upload(batch)
            .map_err(|source| EvalError::Feed { split, source })?;
        let take = batch.len.min(limit - labels.len());
        for (&label, key) in batch.labels.iter().zip(&batch.keys).take(take) {
            let Ok(label) = usize::try_from(label) else {
                return Err(EvalError::UnlabelledSample {
                    split,
                    key: key.to_owned(),
                    field: options.label_field.clone(),
                });
            };
            labels.push(label);
        }
        let images = batch.views.swap_remove(0).narrow(0, 0, take); // [take, 3, h, w]
        let features = match &encoder.backbone {
            Backbone::Vit(vit) => options.pooling.apply(vit.forward(images)),
            cnn => cnn.forward_features(images, NormMode::Eval), // global average pool
        }; // [take, d]
        let host = features
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(EvalError::tensor_data("features"))?;
        values.extend_from_slice(&host);
        progress.extracted(split, labels.len() as u64);
    }
    let skipped = loader.stats().rejected();
    drop(loader);
    progress.extraction_finished(split);
    if labels.is_empty() {
        return Err(EvalError::Empty { split });
    }
    if skipped > 0 {
        tracing::warn!("{split}: {skipped} samples skipped (undecodable images)");
    }
    Ok(Features {
        values,
        labels,
        dim,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_shards::compression::Compression;
    use tessera_shards::writer::ShardFileWriter;

    fn shard(dir: &Path, name: &str, fields: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join(name);
        let mut writer = ShardFileWriter::create(&path, Compression::None).unwrap();
        writer.write_sample("a/0001", fields).unwrap();
        writer.finish().unwrap();
        path
    }

    #[test]
    fn unlabelled_and_badly_labelled_shards_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = shard(dir.path(), "good.tar", &[("jpg", b"x"), ("cls", b"3\n")]);
        let bare = shard(dir.path(), "bare.tar", &[("jpg", b"x")]);
        let text = shard(dir.path(), "text.tar", &[("jpg", b"x"), ("cls", b"cat")]);
        check_labelled(std::slice::from_ref(&good), "cls").unwrap();

        let err = check_labelled(&[good.clone(), bare.clone()], "cls").unwrap_err();
        assert!(
            matches!(&err, EvalError::UnlabelledShard { shard, .. } if *shard == bare),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains("bare.tar") && message.contains("needs class labels"),
            "{message}"
        );
        let err = check_labelled(&[text], "cls").unwrap_err().to_string();
        assert!(err.contains("text.tar") && err.contains("\"cat\""), "{err}");
        let err = check_labelled(&[dir.path().join("missing.tar")], "cls").unwrap_err();
        assert!(matches!(err, EvalError::Shard { .. }), "{err}");
    }

    #[test]
    fn the_evaluation_view_is_a_deterministic_center_crop() {
        let options = ExtractOptions::default();
        let recipe = eval_recipe(32, &options).unwrap();
        let view = &recipe.views[0];
        assert_eq!(view.crop, tessera_pipeline::recipe::CropKind::Center);
        assert_eq!((view.size, view.resize()), (32, 37));
        assert!(view.transforms.is_empty() && view.mask.is_none());
        assert_eq!(recipe.data.shuffle_buffer, 0);
        let whole = ExtractOptions {
            resize: Some(32),
            max_samples: Some(10),
            ..options
        };
        let recipe = eval_recipe(32, &whole).unwrap();
        assert_eq!(recipe.views[0].resize(), 32);
        assert_eq!(recipe.data.shuffle_buffer, SUBSET_SHUFFLE_BUFFER);
    }

    #[test]
    fn pooling_takes_the_class_token_or_the_patch_mean() {
        let device = Default::default();
        // 1 image, class token + 2 patches, d = 2.
        let tokens = Tensor::<burn::backend::Flex, 3>::from_floats(
            [[[1.0, 2.0], [3.0, 5.0], [5.0, 7.0]]],
            &device,
        );
        let cls = Pooling::ClassToken.apply(tokens.clone()).into_data();
        assert_eq!(cls.to_vec::<f32>().unwrap(), vec![1.0, 2.0]);
        let mean = Pooling::MeanPatch.apply(tokens).into_data();
        assert_eq!(mean.to_vec::<f32>().unwrap(), vec![4.0, 6.0]);
        assert!("avg".parse::<Pooling>().is_err());
    }
}
