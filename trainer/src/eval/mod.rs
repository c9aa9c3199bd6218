//! Evaluation of a pretrained encoder: DINO's weighted k-nearest-neighbour classifier and
//! MAE's linear probe, on frozen features of labelled shards.
//!
//! ```text
//! checkpoint ─► features::load_encoder ─► Vit (no masking)
//! train/val shards ─► features::check_labelled (first sample of each shard has `cls`)
//!   ─► pipeline (Resize + CenterCrop, no augmentation) ─► Uploader (normalise on device)
//!   ─► Vit::forward ─► class token (or mean of patch tokens) ─► Features (host, f32)
//! Features ─► knn::knn_accuracy   (cosine similarity, top-k, exp(sim / T) votes)
//!          ─► linear_probe::linear_probe (standardised, one Linear, AdamW, cross-entropy)
//!          ─► EvalReport
//! ```
//!
//! Both evaluations follow the reference code: DINO `eval_knn.py::knn_classifier`
//! (L2-normalised features, k = 20, T = 0.07, a neighbour votes `exp(sim / T)` for its
//! class) and MAE `main_linprobe.py` (`BatchNorm1d(affine=False)` before the head, i.e.
//! features standardised with the training set's mean and standard deviation, then one
//! linear layer, no weight decay). Everything is deterministic for a given seed: the
//! loader runs in ordered mode, the probe's head starts at zero (MAE draws it from
//! N(0, 0.01²); the problem is convex, so the start only shifts the first steps) and its
//! mini-batch order comes from a seeded ChaCha8.
//!
//! Not here: fine-tuning, multi-crop test-time augmentation, distributed feature
//! gathering; the probe trains for a few epochs with AdamW rather than MAE's 90 epochs of
//! LARS, which is enough to rank checkpoints, not to reproduce paper numbers.

pub mod features;
pub mod knn;
pub mod linear_probe;

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use tessera_pipeline::loader::LoaderError;
use tessera_pipeline::recipe::RecipeError;
use tessera_shards::ShardError;

use crate::feeder::{FeedError, HostUpload};
pub use features::{Encoder, ExtractOptions, Features, Pooling, Which, load_encoder};
pub use knn::{KnnAccuracy, KnnSettings, knn_accuracy};
pub use linear_probe::{ProbeResult, ProbeSettings, linear_probe};

/// Which set of shards a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The labelled set the kNN searches and the probe trains on.
    Train,
    /// The held-out set the accuracies are measured on.
    Val,
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Val => "val",
        })
    }
}

/// Everything an evaluation can fail at, with the checkpoint, shard or sample concerned.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The checkpoint could not be found or loaded.
    #[error("loading the encoder from {}", path.display())]
    Checkpoint {
        /// What was given (a checkpoint or run directory).
        path: PathBuf,
        /// What went wrong (boxed: the trainer's error is large).
        #[source]
        source: Box<crate::Error>,
    },
    /// The evaluation view could not be built for this model.
    #[error("building the evaluation view")]
    Recipe(#[source] RecipeError),
    /// A shard could not be opened or read while checking its labels.
    #[error("reading shard {}", path.display())]
    Shard {
        /// The shard.
        path: PathBuf,
        /// The reader's error (names the offset for damaged data).
        #[source]
        source: ShardError,
    },
    /// A shard's samples carry no class label.
    #[error(
        "shard {}: sample `{key}` has no `{field}` field; evaluation needs class labels \
         (shard with `tessera shard --labels folders` or `--labels-csv`)",
        shard.display()
    )]
    UnlabelledShard {
        /// The shard.
        shard: PathBuf,
        /// The first sample's key.
        key: String,
        /// The label field looked for.
        field: String,
    },
    /// A label is not a class index.
    #[error(
        "shard {}: sample `{key}`: `{field}` is {value:?}, not a class index (a non-negative \
         decimal integer)",
        shard.display()
    )]
    BadLabel {
        /// The shard.
        shard: PathBuf,
        /// The sample's key.
        key: String,
        /// The label field.
        field: String,
        /// The field's text (cut to 40 characters).
        value: String,
    },
    /// A sample in the middle of a shard has no usable label.
    #[error(
        "{split} sample `{key}` has no usable `{field}` label (missing, or not a non-negative \
         integer); evaluation needs every sample labelled"
    )]
    UnlabelledSample {
        /// Which shards.
        split: Split,
        /// The sample's key.
        key: String,
        /// The label field.
        field: String,
    },
    /// The input pipeline could not start or failed.
    #[error("{split} shards: input pipeline failed")]
    Loader {
        /// Which shards.
        split: Split,
        /// The loader's error.
        #[source]
        source: LoaderError,
    },
    /// A batch could not be put on the device.
    #[error("{split} shards: uploading a batch")]
    Feed {
        /// Which shards.
        split: Split,
        /// The uploader's error.
        #[source]
        source: FeedError,
    },
    /// No image could be read.
    #[error("no {split} images: every sample was skipped or the shards are empty")]
    Empty {
        /// Which shards.
        split: Split,
    },
    /// A setting is out of range.
    #[error("{option}: {problem}")]
    Setting {
        /// The option (`knn_k`, `probe_epochs`, ...).
        option: &'static str,
        /// What is wrong and what would be right.
        problem: String,
    },
    /// A tensor could not be read back from the device.
    #[error("reading {what} from the device: {message}")]
    TensorData {
        /// What was read (`features`, `neighbours`, ...).
        what: &'static str,
        /// burn's message.
        message: String,
    },
    /// The probe's loss became NaN or infinite.
    #[error("linear probe loss is {loss} in epoch {epoch}: lower --probe-lr")]
    ProbeDiverged {
        /// 0-based epoch.
        epoch: usize,
        /// The value.
        loss: f64,
    },
}

impl EvalError {
    pub(crate) fn setting(option: &'static str, problem: impl Into<String>) -> EvalError {
        EvalError::Setting {
            option,
            problem: problem.into(),
        }
    }

    pub(crate) fn tensor_data(what: &'static str) -> impl FnOnce(burn::tensor::DataError) -> Self {
        move |e| EvalError::TensorData {
            what,
            message: format!("{e:?}"),
        }
    }
}

/// Receives progress (the CLI draws progress bars from it).
pub trait EvalProgress {
    /// Feature extraction of `split` begins; `total` images when the shard indexes say.
    fn extraction_started(&mut self, _split: Split, _total: Option<u64>) {}
    /// `images` of `split` have their features so far.
    fn extracted(&mut self, _split: Split, _images: u64) {}
    /// Feature extraction of `split` is done.
    fn extraction_finished(&mut self, _split: Split) {}
    /// The probe finished epoch `epoch` (0-based) of `epochs` with this mean loss.
    fn probe_epoch(&mut self, _epoch: usize, _epochs: usize, _loss: f64) {}
}

/// An [`EvalProgress`] that ignores everything.
#[derive(Debug, Default)]
pub struct NoProgress;
impl EvalProgress for NoProgress {}

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// A checkpoint directory, or a run directory (its newest complete checkpoint).
    pub checkpoint: PathBuf,
    /// The student (default) or, for methods that have one, the momentum teacher.
    pub which: Which,
    /// Labelled shards the kNN searches and the probe trains on.
    pub train_shards: Vec<PathBuf>,
    /// Labelled shards the accuracies are measured on.
    pub val_shards: Vec<PathBuf>,
    /// How images become features (`max_samples` is ignored: see `max_train`, `max_val`).
    pub extract: ExtractOptions,
    /// Use at most this many training images (the first ones of the seeded order).
    pub max_train: Option<usize>,
    /// Use at most this many validation images.
    pub max_val: Option<usize>,
    /// The kNN classifier.
    pub knn: KnnSettings,
    /// The linear probe.
    pub probe: ProbeSettings,
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The checkpoint directory read.
    pub checkpoint: PathBuf,
    /// Optimiser steps the checkpoint had completed.
    pub step: u64,
    /// Which token(s) the features are.
    pub pooling: Pooling,
    /// Width of a feature vector.
    pub feature_dim: usize,
    /// Classes (largest label + 1).
    pub num_classes: usize,
    /// Training images with features.
    pub train_images: usize,
    /// Validation images with features.
    pub val_images: usize,
    /// Samples the pipeline skipped (undecodable images), both splits.
    pub skipped_images: u64,
    /// Neighbours that vote.
    pub knn_k: usize,
    /// Vote temperature.
    pub knn_temperature: f64,
    /// kNN top-1 accuracy on the validation images, in [0, 1].
    pub knn_top1: f64,
    /// kNN top-5 accuracy, in [0, 1].
    pub knn_top5: f64,
    /// Linear-probe top-1 accuracy on the validation images, in [0, 1].
    pub linear_probe_top1: f64,
    /// Linear-probe top-1 accuracy on its own training images, in [0, 1].
    pub linear_probe_train_top1: f64,
    /// Epochs the probe trained.
    pub probe_epochs: usize,
    /// Seconds spent extracting features (both splits).
    pub extraction_seconds: f64,
    /// Seconds for the whole evaluation.
    pub seconds: f64,
}

/// Load the encoder, extract features of both splits, run the kNN and the linear probe.
///
/// Features are extracted on `AB::InnerBackend` (no autodiff); only the probe's head is
/// trained with `AB`.
pub fn evaluate<AB>(
    options: &EvalOptions,
    device: &AB::Device,
    progress: &mut dyn EvalProgress,
) -> Result<EvalReport, EvalError>
where
    AB: AutodiffBackend,
    AB::InnerBackend: HostUpload,
{
    let started = Instant::now();
    options.knn.check()?;
    options.probe.check()?;
    options.extract.check()?;
    for (option, max) in [
        ("max_train", options.max_train),
        ("max_val", options.max_val),
    ] {
        if max == Some(0) {
            return Err(EvalError::setting(option, "must be at least 1"));
        }
    }

    // Decide up front: the checkpoint loads and every shard is labelled.
    let encoder =
        load_encoder::<AB>(&options.checkpoint, options.which, device).map_err(|source| {
            EvalError::Checkpoint {
                path: options.checkpoint.clone(),
                source: Box::new(source),
            }
        })?;
    let field = &options.extract.label_field;
    features::check_labelled(&options.train_shards, field)?;
    features::check_labelled(&options.val_shards, field)?;

    let extraction = Instant::now();
    let extract = |split, shards: &[PathBuf], max, progress: &mut dyn EvalProgress| {
        let opts = ExtractOptions {
            max_samples: max,
            ..options.extract.clone()
        };
        features::extract(&encoder, shards, split, &opts, device, progress)
    };
    let train = extract(
        Split::Train,
        &options.train_shards,
        options.max_train,
        progress,
    )?;
    let val = extract(Split::Val, &options.val_shards, options.max_val, progress)?;
    let extraction_seconds = extraction.elapsed().as_secs_f64();

    let num_classes = train
        .labels
        .iter()
        .chain(&val.labels)
        .max()
        .map_or(0, |&m| m + 1);
    let knn = knn_accuracy::<AB::InnerBackend>(&train, &val, num_classes, &options.knn, device)?;
    let probe = linear_probe::<AB>(
        &train,
        &val,
        num_classes,
        &options.probe,
        device,
        &mut |epoch, loss| progress.probe_epoch(epoch, options.probe.epochs, loss),
    )?;

    Ok(EvalReport {
        checkpoint: encoder.checkpoint,
        step: encoder.step,
        pooling: options.extract.pooling,
        feature_dim: train.dim,
        num_classes,
        train_images: train.len(),
        val_images: val.len(),
        skipped_images: train.skipped + val.skipped,
        knn_k: options.knn.k.min(train.len()),
        knn_temperature: options.knn.temperature,
        knn_top1: knn.top1,
        knn_top5: knn.top5,
        linear_probe_top1: probe.top1,
        linear_probe_train_top1: probe.train_top1,
        probe_epochs: options.probe.epochs,
        extraction_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}
