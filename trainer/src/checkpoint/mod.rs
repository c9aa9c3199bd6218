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
//! [`latest`] ignores and the next save removes; a save that fails (a full disk) removes
//! its own. Only the newest `keep` complete checkpoints are kept.
//!
//! `state.json` also records the size and SHA-256 of the three record files ([`verify`]):
//! [`latest`] passes over a damaged newest checkpoint (a truncated or changed file) to the
//! newest intact one, and every load checks the bytes before burn decodes them, so errors
//! name the damaged file instead of surfacing as burn's decode messages.
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
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Record, Recorder, RecorderError};
use burn::tensor::backend::{AutodiffBackend, Backend};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tessera_pipeline::PipelineState;

use crate::config::ResolvedTrainConfig;
use crate::error::{Error, Result};
use crate::objectives::Method;
use crate::optim::{Optim, ParamGroups};

mod verify;
pub use verify::{Damage, Digests, FileDigest, Newest, Skipped, newest, verify};
use verify::{read_state, read_verified};

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
    /// Every rank's position, by rank, in a data-parallel run (`pipeline` is rank 0's);
    /// empty for a single process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranks: Vec<PipelineState>,
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

/// Where [`save`] puts the checkpoint after `step` steps of the run in `run_dir`.
pub fn path_for(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(CHECKPOINTS_DIR).join(dir_name(step))
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

/// burn's error as one line, without the advice about records from before burn 0.14 that
/// burn attaches to every failed tensor decode, damaged bytes included: it does not apply
/// to checkpoints written by this program and sends the reader the wrong way.
fn burn_message(error: &RecorderError) -> String {
    let text = match error {
        RecorderError::FileNotFound(m) | RecorderError::DeserializeError(m) => m.as_str(),
        RecorderError::Unknown(m) => m.as_str(),
    };
    let text = text
        .split("The internal data format has changed")
        .next()
        .unwrap_or(text);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn encode<B: Backend, R: Record<B>>(record: R, path: &Path) -> Result<Vec<u8>> {
    Recorder::<B>::record(&Rec::default(), record, ()).map_err(|e| Error::Record {
        path: path.to_path_buf(),
        message: burn_message(&e),
    })
}

/// Decodes the checked bytes of `name` in `dir`. Since the bytes are those that were
/// saved, a failure here means the record is not this model's (another recipe).
///
/// burn builds a record's parameters from the decoded values infallibly
/// (`Record::from_item`) and panics on one it cannot use, such as a malformed parameter
/// id: bytes that pass the digest check only because `state.json` has none (a checkpoint
/// from before digests) or was rewritten with them. Such a panic is caught here and
/// reported as an error naming the file, instead of ending the program (found by the
/// `checkpoint` fuzz target).
fn decode<B: Backend, R: Record<B>>(
    dir: &Path,
    name: &str,
    digests: Option<&Digests>,
    device: &B::Device,
) -> Result<R> {
    let bytes = read_verified(dir, name, digests)?;
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Recorder::<B>::load(&Rec::default(), bytes, device)
    }));
    let message = match loaded {
        Ok(Ok(record)) => return Ok(record),
        Ok(Err(e)) => format!(
            "{} (the file is not a record of this model: was the checkpoint written for \
             another model or recipe?)",
            burn_message(&e)
        ),
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("no message");
            format!(
                "burn cannot build the record from it: {text} (the file is damaged, or was \
                 not written by this program)"
            )
        }
    };
    Err(Error::Record {
        path: dir.join(name),
        message,
    })
}

/// Loads `record` into `module` and checks that every parameter (and running statistic)
/// kept its shape: burn's `load_record` takes a tensor of any shape, and a wrong one only
/// fails later, as a panic in the first step. A record decodes with wrong shapes when it
/// was written for the same architecture at another size, or was crafted.
fn load_checked<B: Backend, M: Module<B>>(module: M, record: M::Record, path: &Path) -> Result<M> {
    let expected = ParamGroups::new(&module).params;
    let module = module.load_record(record);
    let loaded = ParamGroups::new(&module).params;
    for (want, got) in expected.iter().zip(&loaded) {
        if want.shape != got.shape {
            return Err(Error::Record {
                path: path.to_path_buf(),
                message: format!(
                    "`{}` has shape {:?} where the model's is {:?} (the file is not a record \
                     of this model: was the checkpoint written for another model size?)",
                    got.name, got.shape, want.shape
                ),
            });
        }
    }
    Ok(module)
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
///
/// A save that fails (a full disk) removes its partial copy and leaves every earlier
/// checkpoint as it was: [`Error::SaveCheckpoint`], naming the checkpoint and the cause.
pub fn save<B: AutodiffBackend, M: Method<B>>(
    run_dir: &Path,
    saved: Saved<'_, B, M>,
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf> {
    let root = run_dir.join(CHECKPOINTS_DIR);
    let name = dir_name(state.step);
    let dest = root.join(&name);
    let tmp = root.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
    let written = fs::create_dir_all(&root)
        .map_err(Error::io("creating", &root))
        .and_then(|()| write_into::<B, M>(&tmp, saved, state))
        .and_then(|()| install(&root, &tmp, &dest, &name));
    if let Err(source) = written {
        if tmp.exists()
            && let Err(e) = fs::remove_dir_all(&tmp)
        {
            tracing::warn!(
                "cannot remove the partial checkpoint {}: {e}",
                tmp.display()
            );
        }
        return Err(Error::SaveCheckpoint {
            path: dest,
            source: Box::new(source),
        });
    }
    prune(&root, keep.max(1))?;
    tracing::debug!(dir = %dest.display(), "checkpoint written");
    Ok(dest)
}

/// Writes every file of the checkpoint into the fresh directory `tmp`, each fsynced, the
/// record files' sizes and digests into `state.json`, then fsyncs `tmp`.
fn write_into<B: AutodiffBackend, M: Method<B>>(
    tmp: &Path,
    saved: Saved<'_, B, M>,
    state: &TrainerState,
) -> Result<()> {
    if tmp.exists() {
        fs::remove_dir_all(tmp).map_err(Error::io("removing", tmp))?;
    }
    fs::create_dir(tmp).map_err(Error::io("creating", tmp))?;
    let mut digests = Digests::new();
    let mut write = |name: &str, bytes: Vec<u8>| -> Result<()> {
        write_file(&tmp.join(name), &bytes)?;
        digests.insert(name.to_string(), FileDigest::of(&bytes));
        Ok(())
    };
    let path = tmp.join(MODEL_FILE);
    write(
        MODEL_FILE,
        encode::<B, _>(saved.model.clone().into_record(), &path)?,
    )?;
    let path = tmp.join(OPTIM_FILE);
    write(OPTIM_FILE, encode::<B, _>(saved.optim.record(), &path)?)?;
    let path = tmp.join(METHOD_FILE);
    write(
        METHOD_FILE,
        encode::<B::InnerBackend, _>(saved.method_state.clone().into_record(), &path)?,
    )?;

    let path = tmp.join(STATE_FILE);
    let json = serde_json::to_value(state)
        .and_then(|mut value| {
            if let serde_json::Value::Object(map) = &mut value {
                map.insert("files".into(), serde_json::to_value(&digests)?);
            }
            serde_json::to_vec_pretty(&value)
        })
        .map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
    write_file(&path, &json)?;
    sync_dir(tmp)
}

/// Renames the written `tmp` to `dest` (the step that makes it complete) and fsyncs `root`.
fn install(root: &Path, tmp: &Path, dest: &Path, name: &str) -> Result<()> {
    if dest.exists() {
        // Same step written again (e.g. at exit right after a periodic save): move the old
        // one aside first so that `dest` is never a mix of the two.
        let old = root.join(format!("{TMP_PREFIX}old-{name}-{}", std::process::id()));
        fs::rename(dest, &old).map_err(Error::io("renaming", dest))?;
        if let Err(e) = fs::rename(tmp, dest) {
            // Put the previous copy back: it stays the complete checkpoint of this step.
            let _ = fs::rename(&old, dest);
            return Err(Error::io("renaming", tmp)(e));
        }
        if let Err(e) = fs::remove_dir_all(&old) {
            tracing::warn!("cannot remove {} (the next save will): {e}", old.display());
        }
    } else {
        fs::rename(tmp, dest).map_err(Error::io("renaming", tmp))?;
    }
    sync_dir(root)
}

/// Checkpoint directories (`step-N`, renamed from a partial save only once complete)
/// under `root` (a `checkpoints/` directory), oldest first. Listed whether or not they
/// are intact: one that lost its `state.json` is damaged, and [`newest`] says so.
fn step_dirs(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io("listing", root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("listing", root))?;
        if let Some(step) = entry.file_name().to_str().and_then(parse_dir_name)
            && entry.path().is_dir()
        {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Removes checkpoints older than the newest `keep` that have their `state.json`. A
/// damaged `step-N` without one never counts toward `keep` (it is no fallback), so it
/// cannot push out the intact checkpoint that `--resume` would fall back to.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let found = step_dirs(root)?;
    let kept_from = found
        .iter()
        .rev()
        .filter(|(_, dir)| dir.join(STATE_FILE).is_file())
        .nth(keep.saturating_sub(1))
        .map(|(step, _)| *step);
    for (step, dir) in &found {
        if kept_from.is_some_and(|oldest_kept| *step < oldest_kept) {
            fs::remove_dir_all(dir).map_err(Error::io("removing old checkpoint", dir))?;
        }
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

/// The newest complete checkpoint of the run in `run_dir` that verifies, if any. Partial
/// (`.tmp-`) directories are ignored; damaged ones are logged and passed over ([`newest`]
/// also says which).
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(newest(run_dir)?.dir)
}

/// `path` itself when it is a checkpoint directory, else the newest complete checkpoint of
/// the run directory `path` that verifies.
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
    Ok(read_state(dir)?.0)
}

/// Loads the model weights of the checkpoint in `dir` into `model` (any backend: the
/// record is backend-independent, so export can load an autodiff run into a plain backend).
/// The file is checked against `state.json`'s digest first.
pub fn load_model<B: Backend, M: Module<B>>(dir: &Path, model: M, device: &B::Device) -> Result<M> {
    let (_, digests) = read_state(dir)?;
    let record = decode::<B, _>(dir, MODEL_FILE, digests.as_ref(), device)?;
    load_checked(model, record, &dir.join(MODEL_FILE))
}

/// Loads the method state of the checkpoint in `dir` into `state` (built by the same
/// method), after checking the file against `state.json`'s digest.
pub fn load_method_state<B: Backend, S: Module<B>>(
    dir: &Path,
    state: S,
    device: &B::Device,
) -> Result<S> {
    let (_, digests) = read_state(dir)?;
    let record = decode::<B, _>(dir, METHOD_FILE, digests.as_ref(), device)?;
    load_checked(state, record, &dir.join(METHOD_FILE))
}

/// Loads the checkpoint in `dir` for `method`: weights and method state into a freshly
/// built model (same config), then the optimiser over the loaded model with its saved
/// state. Every file is checked against `state.json`'s digests before it is decoded.
pub fn load<B: AutodiffBackend, M: Method<B>>(
    dir: &Path,
    method: &M,
    config: &ResolvedTrainConfig,
    device: &B::Device,
) -> Result<Restored<B, M>> {
    let (state, digests) = read_state(dir)?;
    let digests = digests.as_ref();
    let (model, method_state) = method.init(config.backbone.init(device), device);
    let record = decode::<B, _>(dir, MODEL_FILE, digests, device)?;
    let model = load_checked(model, record, &dir.join(MODEL_FILE))?;
    let record = decode::<B::InnerBackend, _>(dir, METHOD_FILE, digests, device)?;
    let method_state = load_checked(method_state, record, &dir.join(METHOD_FILE))?;
    let record = decode::<B, _>(dir, OPTIM_FILE, digests, device)?;
    let optim = Optim::new(config.optim, &model)
        .load_record(record)
        .map_err(|e| Error::Record {
            path: dir.join(OPTIM_FILE),
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
mod tests;
