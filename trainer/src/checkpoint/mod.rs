//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! ```text
//! RUN/checkpoints/step-00001000/
//!     model.mpk           burn record of the trained model (named MessagePack, f32)
//!     optim.mpk           optimiser state (moments, momentum buffers, step counts)
//!     method.mpk          the method's untrained state: momentum teacher, queue, centre
//!     state.json          step, PipelineState, trainer RNG, schedule, resolved config
//! ```
//!
//! A checkpoint is written into `checkpoints/.tmp-step-…` (each file fsynced, then the
//! directory), renamed to `step-{:08}` and the parent directory fsynced: the rename is what
//! makes it complete, so a crash or kill leaves at worst a `.tmp-` directory that
//! [`latest`] ignores and the next save removes. Only the newest `keep` complete
//! checkpoints are kept.
//!
//! What makes a resumed run reproduce the uninterrupted one bit for bit on CPU: the f32
//! weights, the optimiser's state and the method's teacher and queues (full precision
//! records, parameter ids kept),
//! the step (the schedule is a pure function of it, [`crate::schedule`]), the pipeline's
//! [`PipelineState`] (the exact sample stream continues), and the trainer's own RNG.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Record, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tessera_pipeline::PipelineState;

use crate::config::ResolvedTrainConfig;
use crate::error::{Error, Result};
use crate::objectives::Method;
use crate::optim::Optim;

/// Subdirectory of a run directory holding its checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
const MODEL_FILE: &str = "model.mpk";
const OPTIM_FILE: &str = "optim.mpk";
const METHOD_FILE: &str = "method.mpk";
const STATE_FILE: &str = "state.json";
const TMP_PREFIX: &str = ".tmp-";

type Rec = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// The position of a ChaCha8 generator: seed, stream and word position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte key.
    pub seed: [u8; 32],
    /// Stream id.
    pub stream: u64,
    /// Position in 32-bit words, as a decimal string (JSON numbers stop at 2^53).
    pub word_pos: String,
}

impl RngState {
    /// Captures `rng`'s position.
    pub fn capture(rng: &ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    /// A generator at the captured position.
    pub fn restore(&self) -> Option<ChaCha8Rng> {
        use rand::SeedableRng;
        let mut rng = ChaCha8Rng::from_seed(self.seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().ok()?);
        Some(rng)
    }
}

/// The non-tensor part of a checkpoint (`state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps completed; the next step to run has this index.
    pub step: u64,
    /// The pipeline's position after the last batch consumed by `step` steps.
    pub pipeline: PipelineState,
    /// The trainer's own RNG.
    pub rng: RngState,
    /// The resolved config of the run that wrote it (the schedule is in it).
    pub config: ResolvedTrainConfig,
}

/// What [`load`] returns.
pub struct Restored<B: AutodiffBackend, M: Method<B>> {
    /// The model with the saved weights (and the saved parameter ids).
    pub model: M::Model,
    /// The method's saved state (teacher, queue, centre).
    pub method_state: M::State,
    /// The optimiser with the saved state, over `model`.
    pub optim: Optim<M::Model, B>,
    /// `state.json`.
    pub state: TrainerState,
    /// The checkpoint directory read.
    pub dir: PathBuf,
}

/// The directory name of the checkpoint after `step` steps.
pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn parse_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    (digits.len() >= 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(Error::io("creating", path))?;
    file.write_all(bytes).map_err(Error::io("writing", path))?;
    file.sync_all().map_err(Error::io("syncing", path))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("syncing directory", path))
}

fn encode<B: Backend, R: Record<B>>(record: R, path: &Path) -> Result<Vec<u8>> {
    Recorder::<B>::record(&Rec::default(), record, ()).map_err(|e| Error::Record {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn decode<B: Backend, R: Record<B>>(path: &Path, device: &B::Device) -> Result<R> {
    let bytes = fs::read(path).map_err(Error::io("reading", path))?;
    Recorder::<B>::load(&Rec::default(), bytes, device).map_err(|e| Error::Record {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// What a checkpoint holds besides `state.json`.
pub struct Saved<'a, B: AutodiffBackend, M: Method<B>> {
    /// The trained model.
    pub model: &'a M::Model,
    /// Its optimiser.
    pub optim: &'a Optim<M::Model, B>,
    /// The method's untrained state.
    pub method_state: &'a M::State,
}

/// Writes a checkpoint of `saved` and `state` under `run_dir/checkpoints/`, atomically,
/// then deletes all but the newest `keep` complete checkpoints. Returns its directory. A
/// complete checkpoint of the same step is replaced.
pub fn save<B: AutodiffBackend, M: Method<B>>(
    run_dir: &Path,
    saved: Saved<'_, B, M>,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    fs::create_dir_all(&root).map_err(Error::io("creating", &root))?;
    let name = dir_name(state.step);
    let tmp = root.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(Error::io("removing", &tmp))?;
    }
    fs::create_dir(&tmp).map_err(Error::io("creating", &tmp))?;

    let path = tmp.join(MODEL_FILE);
    write_file(
        &path,
        &encode::<B, _>(saved.model.clone().into_record(), &path)?,
    )?;
    let path = tmp.join(OPTIM_FILE);
    write_file(&path, &encode::<B, _>(saved.optim.record(), &path)?)?;
    let path = tmp.join(METHOD_FILE);
    write_file(
        &path,
        &encode::<B::InnerBackend, _>(saved.method_state.clone().into_record(), &path)?,
    )?;
    let path = tmp.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(state).map_err(|source| Error::State {
        path: path.clone(),
        source,
    })?;
    write_file(&path, &json)?;
    sync_dir(&tmp)?;

    let dest = root.join(&name);
    if dest.exists() {
        // Same step written again (e.g. at exit right after a periodic save): move the old
        // one aside first so that `dest` is never a mix of the two.
        let old = root.join(format!("{TMP_PREFIX}old-{name}-{}", std::process::id()));
        fs::rename(&dest, &old).map_err(Error::io("renaming", &dest))?;
        fs::rename(&tmp, &dest).map_err(Error::io("renaming", &tmp))?;
        fs::remove_dir_all(&old).map_err(Error::io("removing", &old))?;
    } else {
        fs::rename(&tmp, &dest).map_err(Error::io("renaming", &tmp))?;
    }
    sync_dir(&root)?;
    prune(&root, keep.max(1))?;
    tracing::debug!(dir = %dest.display(), "checkpoint written");
    Ok(dest)
}

/// Complete checkpoints under `root` (a `checkpoints/` directory), oldest first.
fn complete(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io("listing", root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("listing", root))?;
        if let Some(step) = entry.file_name().to_str().and_then(parse_dir_name)
            && entry.path().join(STATE_FILE).is_file()
        {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let found = complete(root)?;
    for (_, dir) in &found[..found.len().saturating_sub(keep)] {
        fs::remove_dir_all(dir).map_err(Error::io("removing old checkpoint", dir))?;
    }
    // Leftovers of interrupted saves (this process's own temp dir is already renamed).
    for entry in fs::read_dir(root).map_err(Error::io("listing", root))? {
        let entry = entry.map_err(Error::io("listing", root))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TMP_PREFIX))
        {
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(Error::io("removing partial checkpoint", &path))?;
        }
    }
    Ok(())
}

/// The newest complete checkpoint of the run in `run_dir`, if any. Partial (`.tmp-`)
/// directories are ignored.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(complete(&run_dir.join(CHECKPOINTS_DIR))?
        .pop()
        .map(|(_, dir)| dir))
}

/// `path` itself when it is a checkpoint directory, else the newest complete checkpoint of
/// the run directory `path`.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() && path.join(MODEL_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    latest(path)?.ok_or_else(|| Error::NoCheckpoint {
        path: path.to_path_buf(),
    })
}

/// Reads `state.json` of the checkpoint in `dir`.
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let bytes = fs::read(&path).map_err(Error::io("reading", &path))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::State { path, source })
}

/// Loads the model weights of the checkpoint in `dir` into `model` (any backend: the
/// record is backend-independent, so export can load an autodiff run into a plain backend).
pub fn load_model<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    dir: &Path,
    model: M,
    device: &B::Device,
) -> Result<M> {
    let path = dir.join(MODEL_FILE);
    let bytes = fs::read(&path).map_err(Error::io("reading", &path))?;
    let record =
        Recorder::<B>::load(&Rec::default(), bytes, device).map_err(|e| Error::Record {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(model.load_record(record))
}

/// Loads the method state of the checkpoint in `dir` into `state` (built by the same method).
pub fn load_method_state<B: Backend, S: Module<B>>(
    dir: &Path,
    state: S,
    device: &B::Device,
) -> Result<S> {
    let record = decode::<B, _>(&dir.join(METHOD_FILE), device)?;
    Ok(state.load_record(record))
}

/// Loads the checkpoint in `dir` for `method`: weights and method state into a freshly
/// built model (same config), then the optimiser over the loaded model with its saved state.
pub fn load<B: AutodiffBackend, M: Method<B>>(
    dir: &Path,
    method: &M,
    config: &ResolvedTrainConfig,
    device: &B::Device,
) -> Result<Restored<B, M>> {
    let state = load_state(dir)?;
    let (model, method_state) = method.init(&config.backbone, device);
    let model = load_model::<B, _>(dir, model, device)?;
    let method_state = load_method_state::<B::InnerBackend, _>(dir, method_state, device)?;
    let path = dir.join(OPTIM_FILE);
    let record = decode::<B, _>(&path, device)?;
    let optim = Optim::new(config.optim, &model)
        .load_record(record)
        .map_err(|e| Error::Record {
            path,
            message: e.to_string(),
        })?;
    Ok(Restored {
        model,
        method_state,
        optim,
        state,
        dir: dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objectives::mae::{MaeInput, MaeMethod, MaeModel};
    use crate::objectives::{Method, MethodConfig, NoState};
    use burn::backend::{Autodiff, Flex};
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{Tensor, TensorData};
    use rand::{Rng, SeedableRng};
    use tessera_pipeline::MaskBatch;

    type B = Autodiff<Flex>;

    /// The batch of step `step`: seeded pixels and a mask keeping one patch of four.
    fn batch(step: u64, device: &burn::tensor::Device<B>) -> MaeInput<B> {
        let mut rng = ChaCha8Rng::seed_from_u64(step);
        let pixels: Vec<f32> = (0..2 * 3 * 8 * 8)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let images = Tensor::from_data(TensorData::new(pixels, [2, 3, 8, 8]), device);
        let (mut mask, mut ids_keep, mut ids_restore) = (vec![], vec![], vec![]);
        for s in 0..2u32 {
            let keep = (step as u32 + s) % 4;
            let shuffle: Vec<u32> = std::iter::once(keep)
                .chain((0..4).filter(|&i| i != keep))
                .collect();
            let mut restore = [0u32; 4];
            for (pos, &patch) in shuffle.iter().enumerate() {
                restore[patch as usize] = pos as u32;
            }
            mask.extend((0..4).map(|i| u8::from(i != keep)));
            ids_keep.push(keep);
            ids_restore.extend(restore);
        }
        let masks = MaskBatch {
            len: 2,
            num_patches: 4,
            mask,
            ids_keep,
            ids_restore,
            num_keep: 1,
        };
        MaeInput::new(images, &masks, device).unwrap()
    }

    fn method(config: &ResolvedTrainConfig) -> MaeMethod {
        match &config.method {
            MethodConfig::Mae(m) => m.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn init(config: &ResolvedTrainConfig) -> MaeModel<B> {
        Method::<B>::init(&method(config), &config.backbone, &Default::default()).0
    }

    fn saved<'a>(
        model: &'a MaeModel<B>,
        optim: &'a Optim<MaeModel<B>, B>,
    ) -> Saved<'a, B, MaeMethod> {
        const NONE: &NoState<Flex> = &std::marker::PhantomData;
        Saved {
            model,
            optim,
            method_state: NONE,
        }
    }

    fn train(
        model: MaeModel<B>,
        optim: &mut Optim<MaeModel<B>, B>,
        steps: std::ops::Range<u64>,
        config: &ResolvedTrainConfig,
    ) -> (MaeModel<B>, Vec<f32>) {
        let device = Default::default();
        let mut model = model;
        let mut losses = vec![];
        for step in steps {
            let loss = model.forward(batch(step, &device)).loss;
            losses.push(loss.clone().into_scalar());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let wd = config.weight_decay.value(step);
            model = optim.step(config.schedule.lr(step), wd, model, grads);
        }
        (model, losses)
    }

    struct Values(Vec<(ParamIdString, Vec<f32>)>);
    type ParamIdString = String;
    impl ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0.push((
                param.id.to_string(),
                param.val().into_data().to_vec::<f32>().unwrap(),
            ));
        }
    }
    fn values(model: &MaeModel<B>) -> Vec<(String, Vec<f32>)> {
        let mut v = Values(vec![]);
        model.visit(&mut v);
        v.0
    }

    fn state(step: u64, config: &ResolvedTrainConfig, rng: &ChaCha8Rng) -> TrainerState {
        TrainerState {
            step,
            pipeline: PipelineState {
                seed: 0,
                epoch: 1,
                rank: 0,
                world_size: 1,
                samples_consumed: 2 * step,
            },
            rng: RngState::capture(rng),
            config: config.clone(),
        }
    }

    /// Saving after 2 steps and resuming gives the uninterrupted run's next losses exactly.
    #[test]
    fn resume_reproduces_the_uninterrupted_run() {
        let device = Default::default();
        let config = crate::config::tiny_resolved_for_tests();
        let run = tempfile::tempdir().unwrap();
        let model = init(&config);
        let mut optim = Optim::new(config.optim, &model);
        let (model, _) = train(model, &mut optim, 0..2, &config);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let _: u64 = rng.random();
        let dir = save(
            run.path(),
            saved(&model, &optim),
            &state(2, &config, &rng),
            3,
        )
        .unwrap();
        assert_eq!(dir, run.path().join("checkpoints/step-00000002"));
        let saved_values = values(&model);
        let (_, uninterrupted) = train(model, &mut optim, 2..5, &config);

        let restored = load::<B, MaeMethod>(
            &latest(run.path()).unwrap().unwrap(),
            &method(&config),
            &config,
            &device,
        )
        .unwrap();
        assert_eq!(
            values(&restored.model),
            saved_values,
            "weights and parameter ids restored"
        );
        assert_eq!(restored.state, state(2, &config, &rng));
        let mut rng2 = restored.state.rng.restore().unwrap();
        assert_eq!(rng2.random::<u64>(), rng.random::<u64>(), "rng continues");
        let mut optim = restored.optim;
        let (_, resumed) = train(restored.model, &mut optim, 2..5, &config);
        assert_eq!(resumed, uninterrupted);
    }

    #[test]
    fn latest_ignores_partial_saves_and_old_ones_are_pruned() {
        let _device: burn::tensor::Device<B> = Default::default();
        let config = crate::config::tiny_resolved_for_tests();
        let run = tempfile::tempdir().unwrap();
        assert_eq!(latest(run.path()).unwrap(), None);
        assert!(matches!(
            resolve(run.path()),
            Err(Error::NoCheckpoint { .. })
        ));
        let model = init(&config);
        let optim = Optim::new(config.optim, &model);
        let rng = ChaCha8Rng::seed_from_u64(1);
        for step in [10, 20, 30] {
            save(
                run.path(),
                saved(&model, &optim),
                &state(step, &config, &rng),
                2,
            )
            .unwrap();
        }
        // A save killed half way: a temp dir, and a renamed dir without state.json.
        let root = run.path().join(CHECKPOINTS_DIR);
        fs::create_dir_all(root.join(".tmp-step-00000040-999")).unwrap();
        fs::create_dir_all(root.join("step-00000050")).unwrap();
        assert_eq!(
            latest(run.path()).unwrap(),
            Some(root.join("step-00000030"))
        );
        assert_eq!(resolve(run.path()).unwrap(), root.join("step-00000030"));
        assert_eq!(
            resolve(&root.join("step-00000020")).unwrap(),
            root.join("step-00000020")
        );
        assert!(
            !root.join("step-00000010").exists(),
            "only the newest 2 kept"
        );
        // Saving the same step again replaces it whole; the next save clears the temp dir.
        save(
            run.path(),
            saved(&model, &optim),
            &state(30, &config, &rng),
            2,
        )
        .unwrap();
        assert!(!root.join(".tmp-step-00000040-999").exists());
        assert_eq!(load_state(&root.join("step-00000030")).unwrap().step, 30);
    }

    #[test]
    fn export_reads_the_newest_checkpoint_of_a_run() {
        let _device: burn::tensor::Device<B> = Default::default();
        let config = crate::config::tiny_resolved_for_tests();
        let run = tempfile::tempdir().unwrap();
        let model = init(&config);
        let optim = Optim::new(config.optim, &model);
        save(
            run.path(),
            saved(&model, &optim),
            &state(4, &config, &ChaCha8Rng::seed_from_u64(0)),
            1,
        )
        .unwrap();
        let out = run.path().join("encoder.safetensors");
        let summary = crate::export::export(run.path(), crate::eval::Which::Student, &out).unwrap();
        assert_eq!(summary.step, 4);
        let depth = match &config.backbone {
            crate::backbone::BackboneConfig::Vit(v) => v.depth,
            other => panic!("{other:?}"),
        };
        assert_eq!(summary.tensors, 6 + 12 * depth);
        let bytes = fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let cls: Vec<f32> = st
            .tensor("cls_token")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(
            cls,
            model
                .encoder
                .cls_token
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        );
    }
}
