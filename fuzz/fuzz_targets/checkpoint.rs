//! Checkpoint loading from arbitrary bytes: a checkpoint of a tiny MAE (the trainer's
//! `TINY_MAE_RECIPE`) gets one of its files replaced by the input, then `--resume`'s path runs on it:
//! `checkpoint::newest` (verification against `state.json`'s sizes and SHA-256) and
//! `checkpoint::load` (burn's record decoding, the optimiser's state checks). Neither may
//! panic, and a checkpoint that loads must train: one step runs on it.
//!
//! The first input byte chooses the file (`% 4`: `state.json`, `model.mpk`, `optim.mpk`,
//! `method.mpk`) and, for a record file, what `state.json` says about it (`/ 4 % 3`):
//! - 0: the digests of the intact checkpoint (verification must refuse changed bytes);
//! - 1: the digest of the new bytes, so they reach burn's decoder as if this program had
//!   written them (a record of another shape, or a crafted file);
//! - 2: no digests at all, as checkpoints written before digests were recorded: the bytes
//!   reach burn's decoder unchecked.
//!
//! Built only with `--features trainer` (it builds burn under sanitizer coverage, far
//! longer than every other target together). The CI smoke builds it without
//! AddressSanitizer (`scripts/fuzz-smoke.sh checkpoint+plain`, 10 minutes instead of 43);
//! long runs use the ASan build (docs/RELIABILITY.md).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::backend::{Autodiff, Flex};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use tessera_pipeline::{MaskBatch, PipelineState, Recipe};
use tessera_trainer::checkpoint::{self, RngState, Saved, TrainerState};
use tessera_trainer::config::{ResolvedTrainConfig, TINY_MAE_RECIPE, TrainerConfig};
use tessera_trainer::objectives::mae::{MaeInput, MaeMethod};
use tessera_trainer::objectives::{Method, MethodConfig, NoState};
use tessera_trainer::optim::Optim;

type B = Autodiff<Flex>;

const FILES: [&str; 4] = ["state.json", "model.mpk", "optim.mpk", "method.mpk"];

/// The intact checkpoint every input starts from, and where inputs are written.
struct Template {
    config: ResolvedTrainConfig,
    method: MaeMethod,
    /// The intact files, in [`FILES`] order.
    files: Vec<Vec<u8>>,
    /// `state.json` of the intact checkpoint, parsed.
    state: serde_json::Value,
    /// The run directory the inputs are written into (kept alive).
    run: tempfile::TempDir,
    /// `run/checkpoints/step-00000001`.
    dir: PathBuf,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        // std's panic hook instead of libFuzzer's aborting one (see `fuzz_target!` below).
        drop(std::panic::take_hook());
        let recipe = Recipe::parse(TINY_MAE_RECIPE, "fuzz.toml").expect("recipe");
        let config = TrainerConfig::from_recipe(&recipe)
            .and_then(|c| c.resolve(&recipe, None, 1))
            .expect("config");
        let MethodConfig::Mae(method) = &config.method else {
            unreachable!("an MAE recipe")
        };
        let method = method.clone();
        let device = Default::default();
        let model = Method::<B>::init(&method, config.backbone.init(&device), &device).0;
        let mut optim = Optim::new(config.optim, &model);
        let model = train_step(model, &mut optim, &config);
        let state = TrainerState {
            step: 1,
            pipeline: PipelineState {
                seed: 0,
                epoch: 1,
                rank: 0,
                world_size: 1,
                samples_consumed: 2,
            },
            ranks: Vec::new(),
            rng: RngState::capture(&rand_chacha::ChaCha8Rng::seed_from_u64(7)),
            config: config.clone(),
        };
        let run = tempfile::tempdir().expect("temp dir");
        let saved = Saved::<B, MaeMethod> {
            model: &model,
            optim: &optim,
            method_state: &NoState::<Flex>::default(),
        };
        let dir = checkpoint::save(run.path(), saved, &state, 1).expect("save");
        let files = FILES
            .iter()
            .map(|name| std::fs::read(dir.join(name)).expect("read"))
            .collect::<Vec<_>>();
        let state = serde_json::from_slice(&files[0]).expect("state.json");
        if let Some(seeds) = std::env::var_os("CHECKPOINT_FUZZ_SEEDS") {
            write_seeds(Path::new(&seeds), &files);
        }
        Template {
            config,
            method,
            files,
            state,
            run,
            dir,
        }
    })
}

/// Seeds for the corpus: each intact file under each selector (scripts/fuzz-smoke.sh sets
/// `CHECKPOINT_FUZZ_SEEDS` to the corpus directory for one run of no inputs first).
fn write_seeds(dir: &Path, files: &[Vec<u8>]) {
    std::fs::create_dir_all(dir).expect("seed directory");
    for (which, bytes) in files.iter().enumerate() {
        let modes = if which == 0 { 1 } else { 3 };
        for mode in 0..modes {
            let selector = which as u8 + 4 * mode;
            let mut seed = vec![selector];
            seed.extend_from_slice(bytes);
            let name = format!("seed-{}-{mode}", FILES[which]);
            std::fs::write(dir.join(name), seed).expect("seed");
        }
    }
}

/// One MAE step on a fixed batch (2 images, one patch of four kept).
fn train_step(
    model: <MaeMethod as Method<B>>::Model,
    optim: &mut Optim<<MaeMethod as Method<B>>::Model, B>,
    config: &ResolvedTrainConfig,
) -> <MaeMethod as Method<B>>::Model {
    let device = Default::default();
    let pixels: Vec<f32> = (0..2 * 3 * 8 * 8)
        .map(|i| (i % 17) as f32 / 8.0 - 1.0)
        .collect();
    let images = Tensor::from_data(TensorData::new(pixels, [2, 3, 8, 8]), &device);
    let masks = MaskBatch {
        len: 2,
        num_patches: 4,
        mask: vec![0, 1, 1, 1, 1, 0, 1, 1],
        ids_keep: vec![0, 1],
        ids_restore: vec![0, 1, 2, 3, 1, 0, 2, 3],
        num_keep: 1,
    };
    let input = MaeInput::new(images, &masks, &device).expect("batch");
    let loss = model.forward(input).loss;
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optim.step(
        config.schedule.lr(0),
        config.weight_decay.value(0),
        model,
        grads,
    )
}

/// Writes the checkpoint with `FILES[which]` replaced by `data`, `state.json`'s digests
/// as `mode` says (see the module doc).
fn write(t: &Template, which: usize, mode: u8, data: &[u8]) {
    let mut state = t.state.clone();
    if which > 0 {
        let files = state.as_object_mut().expect("object");
        match mode {
            0 => {}
            1 => {
                let digest = checkpoint::FileDigest::of(data);
                files["files"][FILES[which]] = serde_json::to_value(digest).expect("digest");
            }
            _ => {
                files.remove("files");
            }
        }
    }
    for (i, name) in FILES.iter().enumerate() {
        let bytes = if i == which {
            data.to_vec()
        } else if i == 0 {
            serde_json::to_vec(&state).expect("json")
        } else {
            t.files[i].clone()
        };
        std::fs::write(t.dir.join(name), bytes).expect("write");
    }
}

fn resume(t: &Template, run: &Path) {
    let Ok(found) = checkpoint::newest(run) else {
        return;
    };
    let Some(dir) = found.dir else { return };
    let device = Default::default();
    let Ok(restored) = checkpoint::load::<B, MaeMethod>(&dir, &t.method, &t.config, &device) else {
        return;
    };
    // What `tessera train --resume` does next: train on it.
    let mut optim = restored.optim;
    let _ = train_step(restored.model, &mut optim, &t.config);
}

fuzz_target!(|data: &[u8]| {
    let t = template();
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    // The loader catches burn's panics on records it cannot build (and reports them as
    // errors); libFuzzer's panic hook aborts before unwinding, which would make that
    // unreachable, so std's hook is restored (in `template`) and a panic that escapes the
    // loader aborts here instead.
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let which = usize::from(selector % 4);
        write(t, which, selector / 4 % 3, bytes);
        resume(t, t.run.path());
    }));
    if run.is_err() {
        std::process::abort();
    }
});
