//! Checkpoint round trips, pruning, verification and failed saves on a tiny MAE.

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
    let device = Default::default();
    Method::<B>::init(&method(config), config.backbone.init(&device), &device).0
}

fn saved<'a>(model: &'a MaeModel<B>, optim: &'a Optim<MaeModel<B>, B>) -> Saved<'a, B, MaeMethod> {
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
        ranks: Vec::new(),
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
    // The damaged step-50 is no fallback, so it does not count toward the 2 kept: the
    // intact step-20 stays beside step-30.
    assert!(
        root.join("step-00000020").join(STATE_FILE).is_file(),
        "a damaged checkpoint pushed out an intact one"
    );
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

/// Saves checkpoints of the same tiny model at `steps` and returns the run directory.
fn saved_run(steps: &[u64], keep: usize) -> tempfile::TempDir {
    let config = crate::config::tiny_resolved_for_tests();
    let run = tempfile::tempdir().unwrap();
    let model = init(&config);
    let optim = Optim::new(config.optim, &model);
    let rng = ChaCha8Rng::seed_from_u64(3);
    for &step in steps {
        save(
            run.path(),
            saved(&model, &optim),
            &state(step, &config, &rng),
            keep,
        )
        .unwrap();
    }
    run
}

/// Rewrites `state.json` of the checkpoint in `dir` through `edit`.
fn edit_state(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join(STATE_FILE);
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
}

/// A run with one checkpoint (step 5) whose `state.json` has no digests, as checkpoints
/// written before digests were recorded; and that checkpoint's directory.
fn saved_without_digests() -> (tempfile::TempDir, std::path::PathBuf) {
    let run = saved_run(&[5], 1);
    let dir = run.path().join(CHECKPOINTS_DIR).join("step-00000005");
    edit_state(&dir, |state| {
        state.remove("files");
    });
    (run, dir)
}

/// A record of the same architecture at another size decodes (burn's `load_record` takes
/// tensors of any shape): loading names the file and the first parameter whose shape
/// differs, instead of a panic in the first step (found while writing the `checkpoint` fuzz
/// target: `load_record` does not compare shapes).
#[test]
fn a_record_of_another_model_size_is_refused_with_the_shapes() {
    let device = Default::default();
    let config = crate::config::tiny_resolved_for_tests();
    let run = saved_run(&[10], 1);
    let dir = run.path().join(CHECKPOINTS_DIR).join("step-00000010");
    let mut wider = config.clone();
    match &mut wider.backbone {
        crate::backbone::BackboneConfig::Vit(vit) => vit.embed_dim *= 2,
        other => panic!("{other:?}"),
    }
    let model = Method::<B>::init(&method(&wider), wider.backbone.init(&device), &device).0;
    let err = load_model::<B, _>(&dir, model, &device).expect_err("shapes differ");
    let text = tessera_shards::error::Chain(&err).to_string();
    assert!(text.contains("model.mpk"), "{text}");
    assert!(text.contains("where the model's is"), "{text}");
    let err = load::<B, MaeMethod>(&dir, &method(&wider), &wider, &device)
        .err()
        .expect("shapes differ");
    assert!(matches!(err, Error::Record { .. }), "{err}");
    // The same model size still loads.
    load_model::<B, _>(&dir, init(&config), &device).expect("same size loads");
}

/// burn panics building a parameter whose id it cannot parse (`ParamId::deserialize`):
/// bytes that reach it unchecked (a checkpoint without digests) give an error naming the
/// file instead. The `checkpoint` fuzz target's first crash, one changed byte of an id.
#[test]
fn a_record_burn_cannot_build_is_an_error_not_a_panic() {
    let device = Default::default();
    let config = crate::config::tiny_resolved_for_tests();
    let (_run, dir) = saved_without_digests();
    // MessagePack `"id"` then a 13-character string (base32 of 8 bytes): make it invalid.
    let mut bytes = fs::read(dir.join(MODEL_FILE)).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w[..3] == *b"\xa2id" && w[3] == 0xa0 + 13)
        .expect("a parameter id");
    bytes[at + 4] = b'!';
    fs::write(dir.join(MODEL_FILE), bytes).unwrap();

    let err = load::<B, MaeMethod>(&dir, &method(&config), &config, &device)
        .err()
        .expect("an id burn cannot parse");
    let text = tessera_shards::error::Chain(&err).to_string();
    assert!(
        text.contains("model.mpk") && text.contains("Invalid id"),
        "{text}"
    );
}

/// Issue 14: state.json records every record file's size and SHA-256, a damaged newest
/// checkpoint is passed over (naming the file and what is wrong), loading it fails with
/// that and not with burn's message, and an older intact one is used.
#[test]
fn damaged_newest_checkpoint_is_named_and_skipped() {
    let device = Default::default();
    let config = crate::config::tiny_resolved_for_tests();
    let run = saved_run(&[10, 20], 2);
    let root = run.path().join(CHECKPOINTS_DIR);
    let (older, newer) = (root.join("step-00000010"), root.join("step-00000020"));

    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(newer.join(STATE_FILE)).unwrap()).unwrap();
    for name in [MODEL_FILE, OPTIM_FILE, METHOD_FILE] {
        let bytes = fs::read(newer.join(name)).unwrap();
        assert_eq!(
            json["files"][name]["bytes"],
            bytes.len() as u64,
            "{name} size recorded"
        );
        assert_eq!(
            json["files"][name]["sha256"],
            FileDigest::of(&bytes).sha256,
            "{name} digest recorded"
        );
    }
    assert_eq!(verify(&newer).unwrap().step, 20);

    // Truncated: the size says so.
    let model = newer.join(MODEL_FILE);
    let bytes = fs::read(&model).unwrap();
    fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let found = newest(run.path()).unwrap();
    assert_eq!(found.dir, Some(older.clone()));
    assert_eq!(found.skipped.len(), 1);
    assert_eq!(found.skipped[0].dir, newer);
    let message = found.skipped[0].error.to_string();
    assert!(
        message.contains("model.mpk") && message.contains("truncated"),
        "{message}"
    );
    assert_eq!(latest(run.path()).unwrap(), Some(older.clone()));
    let err = load::<B, MaeMethod>(&newer, &method(&config), &config, &device)
        .err()
        .expect("a damaged checkpoint does not load");
    assert!(
        matches!(&err, Error::DamagedCheckpoint { path, damage: Damage::Size { .. } } if *path == model),
        "{err}"
    );

    // Same size, other bytes: the digest says so, for the loaders too.
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    fs::write(&model, &flipped).unwrap();
    let found = newest(run.path()).unwrap();
    assert_eq!(found.dir, Some(older.clone()));
    assert!(matches!(
        found.skipped[0].error,
        Error::DamagedCheckpoint {
            damage: Damage::Checksum,
            ..
        }
    ));
    let err =
        load_model::<B, _>(&newer, init(&config), &device).expect_err("changed bytes do not load");
    let text = tessera_shards::error::Chain(&err).to_string();
    assert!(
        text.contains("model.mpk") && text.contains("SHA-256"),
        "{text}"
    );
    assert!(!text.contains("data format"), "{text}");

    // A truncated state.json does not parse; a missing file is named.
    fs::write(&model, &bytes).unwrap();
    assert_eq!(latest(run.path()).unwrap(), Some(newer.clone()));
    fs::remove_file(newer.join(OPTIM_FILE)).unwrap();
    let err = verify(&newer).unwrap_err();
    assert!(
        matches!(&err, Error::DamagedCheckpoint { damage: Damage::Missing, path } if path.ends_with(OPTIM_FILE)),
        "{err}"
    );
    let state = fs::read(older.join(STATE_FILE)).unwrap();
    fs::write(older.join(STATE_FILE), &state[..state.len() / 2]).unwrap();
    let found = newest(run.path()).unwrap();
    assert_eq!(found.dir, None);
    assert_eq!(found.skipped.len(), 2);
    assert!(matches!(found.skipped[1].error, Error::State { .. }));
}

/// A `state.json` whose list of digests lost a record's name (one flipped bit turned
/// `model.mpk` into another name; found by the damage property test below) neither
/// verifies nor loads: the loaders refuse a record without its digest, as `verify` does.
#[test]
fn a_record_missing_from_the_digests_neither_verifies_nor_loads() {
    let device = Default::default();
    let config = crate::config::tiny_resolved_for_tests();
    let run = saved_run(&[10], 2);
    let dir = run.path().join(CHECKPOINTS_DIR).join("step-00000010");
    let text = fs::read_to_string(dir.join(STATE_FILE)).unwrap();
    for (name, renamed) in [(MODEL_FILE, "model.mpl"), (METHOD_FILE, "method.mpj")] {
        let quoted = format!("\"{name}\"");
        assert_eq!(text.matches(&quoted).count(), 1, "{name} listed once");
        let damaged = text.replace(&quoted, &format!("\"{renamed}\""));
        fs::write(dir.join(STATE_FILE), damaged).unwrap();
        let unrecorded = |err: &Error| match err {
            Error::DamagedCheckpoint { path, damage } => {
                matches!(damage, Damage::Unrecorded) && path.ends_with(name)
            }
            _ => false,
        };
        let err = verify(&dir).unwrap_err();
        assert!(unrecorded(&err), "{err}");
        let err = load::<B, MaeMethod>(&dir, &method(&config), &config, &device)
            .err()
            .expect("a record without its digest does not load");
        assert!(unrecorded(&err), "{err}");
        assert!(err.to_string().contains("step-00000010"), "{err}");
    }
    fs::write(dir.join(STATE_FILE), &text).unwrap();
    assert_eq!(verify(&dir).unwrap().step, 10);
}

/// Checkpoints written before digests were recorded still load (files present).
#[test]
fn checkpoints_without_digests_still_load() {
    let device = Default::default();
    let config = crate::config::tiny_resolved_for_tests();
    let (run, dir) = saved_without_digests();
    assert_eq!(latest(run.path()).unwrap(), Some(dir.clone()));
    let restored = load::<B, MaeMethod>(&dir, &method(&config), &config, &device).unwrap();
    assert_eq!(restored.state.step, 5);
}

/// Issue 14: a save that fails leaves the previous checkpoint as it was, removes its own
/// partial copy and says which checkpoint could not be written.
#[test]
fn a_failed_save_leaves_the_previous_checkpoint_and_no_partial_one() {
    let config = crate::config::tiny_resolved_for_tests();
    let run = saved_run(&[7], 2);
    let root = run.path().join(CHECKPOINTS_DIR);
    let dest = root.join("step-00000007");
    let before = fs::read(dest.join(MODEL_FILE)).unwrap();
    // Saving step 7 again moves the old copy aside first; a non-empty directory where it
    // goes makes that rename fail after the new copy is written.
    let aside = root.join(format!(".tmp-old-step-00000007-{}", std::process::id()));
    fs::create_dir_all(aside.join("blocker")).unwrap();
    let model = init(&config);
    let mut optim = Optim::new(config.optim, &model);
    let (model, _) = train(model, &mut optim, 0..1, &config);
    let err = save(
        run.path(),
        saved(&model, &optim),
        &state(7, &config, &ChaCha8Rng::seed_from_u64(3)),
        2,
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::SaveCheckpoint { path, .. } if *path == dest),
        "{err}"
    );
    assert!(err.to_string().contains("untouched"), "{err}");
    assert_eq!(fs::read(dest.join(MODEL_FILE)).unwrap(), before);
    assert_eq!(verify(&dest).unwrap().step, 7);
    let partial = root.join(format!(".tmp-step-00000007-{}", std::process::id()));
    assert!(!partial.exists(), "the partial copy is removed");
}

#[test]
fn burn_messages_lose_the_advice_about_old_records() {
    let message = burn_message(&RecorderError::DeserializeError(
        "Syntax(\"unexpected end\")\nThe internal data format has changed since version \
         0.14.0. If you are trying to load a record saved in a previous version, use ..."
            .into(),
    ));
    assert_eq!(message, "Syntax(\"unexpected end\")");
}

/// One way a checkpoint file can be damaged (issue 14's property test).
#[derive(Debug, Clone)]
enum Harm {
    /// Cut to this fraction of its length (per mille).
    Truncate(u16),
    /// One byte at this fraction of its length (per mille) xor-ed with a non-zero mask.
    Flip(u16, u8),
    /// Replaced by these bytes.
    Replace(Vec<u8>),
    /// These bytes appended.
    Append(Vec<u8>),
    Delete,
}

fn harm() -> impl proptest::strategy::Strategy<Value = Harm> {
    use proptest::prelude::*;
    prop_oneof![
        (0u16..1000).prop_map(Harm::Truncate),
        (0u16..1000, 1u8..=255).prop_map(|(at, mask)| Harm::Flip(at, mask)),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Harm::Replace),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Harm::Append),
        Just(Harm::Delete),
    ]
}

fn apply(path: &Path, harm: &Harm) {
    let mut bytes = fs::read(path).unwrap();
    let at = |per_mille: u16, len: usize| len * usize::from(per_mille) / 1000;
    match harm {
        Harm::Truncate(p) => bytes.truncate(at(*p, bytes.len())),
        Harm::Flip(p, mask) => {
            let i = at(*p, bytes.len());
            bytes[i] ^= mask;
        }
        Harm::Replace(new) => bytes.clone_from(new),
        Harm::Append(more) => bytes.extend_from_slice(more),
        Harm::Delete => return fs::remove_file(path).unwrap(),
    }
    fs::write(path, bytes).unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

    /// Issue 14 (checkpoint loading, in place of a libFuzzer target: see RELIABILITY.md):
    /// any damage to one file of the newest checkpoint is caught or harmless. A damaged
    /// record file always fails verification and loading, naming that file, and `--resume`
    /// falls back to the older checkpoint; a damaged `state.json` either fails the same way
    /// or still describes intact records, which then load. Nothing panics.
    #[test]
    fn any_damage_to_a_checkpoint_file_is_caught_or_harmless(
        file in proptest::sample::select(vec![STATE_FILE, MODEL_FILE, OPTIM_FILE, METHOD_FILE]),
        harm in harm(),
    ) {
        let device = Default::default();
        let config = crate::config::tiny_resolved_for_tests();
        let run = saved_run(&[10, 20], 2);
        let root = run.path().join(CHECKPOINTS_DIR);
        let (older, newer) = (root.join("step-00000010"), root.join("step-00000020"));
        let original = fs::read(newer.join(file)).unwrap();
        apply(&newer.join(file), &harm);
        let unchanged = fs::read(newer.join(file)).is_ok_and(|b| b == original);
        proptest::prop_assume!(!unchanged);

        let found = newest(run.path()).unwrap();
        let loaded = load::<B, MaeMethod>(&newer, &method(&config), &config, &device);
        if file == STATE_FILE && found.dir.as_ref() == Some(&newer) {
            // Still parses, and what it says about the records holds: they are intact.
            if let Err(e) = loaded {
                return Err(proptest::test_runner::TestCaseError::fail(format!(
                    "verified but does not load: {}",
                    tessera_shards::error::Chain(&e)
                )));
            }
        } else {
            proptest::prop_assert_eq!(found.dir.as_ref(), Some(&older));
            proptest::prop_assert_eq!(&found.skipped[0].dir, &newer);
            // A record's damage names the record; a state.json that lost its digests'
            // meaning may name the record whose digest no longer matches instead.
            let named = if file == STATE_FILE { "step-00000020" } else { file };
            let message = tessera_shards::error::Chain(&found.skipped[0].error).to_string();
            proptest::prop_assert!(message.contains(named), "{}", message);
            let err = loaded.err().expect("damage found by verify also stops load");
            let text = tessera_shards::error::Chain(&err).to_string();
            proptest::prop_assert!(text.contains(named), "{}", text);
            proptest::prop_assert!(!text.contains("data format"), "{}", text);
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 96, ..Default::default() })]

    /// Damaged record bytes that reach burn's decoder, as the `checkpoint` fuzz target
    /// sends them (in CI, where that target does not run): `state.json` records the
    /// damaged file's own digest (a record of another shape written by this program, or a
    /// crafted file), or no digests at all (a checkpoint from before digests). Loading
    /// either fails with an error naming the file (never burn's advice about old record
    /// formats) or gives a model and optimiser that train: one step runs. Nothing panics.
    #[test]
    fn damaged_records_that_reach_burn_fail_by_name_or_train(
        file in proptest::sample::select(vec![MODEL_FILE, OPTIM_FILE, METHOD_FILE]),
        harm in harm(),
        legacy in proptest::prelude::any::<bool>(),
    ) {
        let device = Default::default();
        let config = crate::config::tiny_resolved_for_tests();
        let run = saved_run(&[10], 1);
        let dir = run.path().join(CHECKPOINTS_DIR).join("step-00000010");
        apply(&dir.join(file), &harm);
        let damaged = fs::read(dir.join(file)).ok();
        edit_state(&dir, |state| {
            if legacy {
                state.remove("files");
            } else if let Some(bytes) = &damaged {
                state["files"][file] = serde_json::to_value(FileDigest::of(bytes)).unwrap();
            }
        });

        match load::<B, MaeMethod>(&dir, &method(&config), &config, &device) {
            Ok(restored) => {
                let mut optim = restored.optim;
                let (_, losses) = train(restored.model, &mut optim, 10..11, &config);
                proptest::prop_assert_eq!(losses.len(), 1);
            }
            Err(e) => {
                let text = tessera_shards::error::Chain(&e).to_string();
                proptest::prop_assert!(text.contains(file), "{}", text);
                proptest::prop_assert!(!text.contains("data format"), "{}", text);
            }
        }
    }
}
