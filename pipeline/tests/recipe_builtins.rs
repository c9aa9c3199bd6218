//! Every builtin recipe loads, expands to the views its paper uses, and bad recipes fail
//! with messages that name the key.

use tessera_pipeline::masks::{MaskGenerator, MaskSpec};
use tessera_pipeline::recipe::{Interpolation, Recipe};
use tessera_pipeline::transforms::TransformSpec;

#[test]
fn every_builtin_loads() {
    let names: Vec<_> = Recipe::builtin_names().collect();
    for required in [
        "mae",
        "mae_vit_base",
        "mae_vit_tiny_cifar",
        "simmim",
        "simclr",
        "byol",
        "dino",
        "ibot",
    ] {
        assert!(names.contains(&required), "missing builtin {required}");
    }
    for name in names {
        let recipe = Recipe::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!recipe.view_instances().is_empty(), "{name}");
    }
}

#[test]
fn dino_has_two_globals_and_ten_locals_with_its_probabilities() {
    let recipe = Recipe::load("dino").unwrap();
    let names: Vec<_> = recipe
        .view_instances()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names.len(), 12);
    assert_eq!(&names[..3], ["global_1", "global_2", "local_1"]);
    assert_eq!(names[11], "local_10");
    let blur_p = |view: usize| {
        recipe.views[view].transforms.iter().find_map(|t| match t {
            TransformSpec::GaussianBlur { p, .. } => Some(*p),
            _ => None,
        })
    };
    assert_eq!(
        (blur_p(0), blur_p(1), blur_p(2)),
        (Some(1.0), Some(0.1), Some(0.5))
    );
    let has_solarize = |view: usize| {
        recipe.views[view]
            .transforms
            .iter()
            .any(|t| matches!(t, TransformSpec::Solarize { p, .. } if *p == 0.2))
    };
    assert!(!has_solarize(0) && has_solarize(1) && !has_solarize(2));
    assert_eq!(recipe.views[2].size, 96);
    assert_eq!(recipe.views[2].scale(), [0.05, 0.4]);
    assert_eq!(recipe.views[0].interpolation, Interpolation::Bicubic);
    assert!(recipe.views.iter().all(|v| v.mask.is_none()));
}

#[test]
fn mask_recipes_bind_to_their_grids() {
    let mae = Recipe::load("mae").unwrap();
    let generator = MaskGenerator::new(mae.views[0].mask.as_ref().unwrap(), mae.views[0].size);
    assert_eq!((generator.num_patches(), generator.num_keep()), (196, 49));
    let cifar = Recipe::load("mae_vit_tiny_cifar").unwrap();
    let generator = MaskGenerator::new(cifar.views[0].mask.as_ref().unwrap(), cifar.views[0].size);
    assert_eq!((generator.num_patches(), generator.num_keep()), (64, 16));
    let simmim = Recipe::load("simmim").unwrap();
    assert!(matches!(
        simmim.views[0].mask,
        Some(MaskSpec::Simmim {
            mask_patch_size: 32,
            ..
        })
    ));
    let ibot = Recipe::load("ibot").unwrap();
    let masked: Vec<_> = ibot.views.iter().map(|v| v.mask.is_some()).collect();
    assert_eq!(masked, [true, true, false]);
}

const BASE: &str = "[data]\nbatch_size = 8\n[[views]]\nname = \"v\"\nsize = 224\n";

/// The whole error chain (the top error names the recipe; the cause says what is wrong).
fn error_of(text: &str) -> String {
    let err = Recipe::parse(text, "test.toml").unwrap_err();
    tessera_shards::error::Chain(&err).to_string()
}

#[test]
fn unknown_keys_are_named_everywhere() {
    let err = error_of(&BASE.replace("batch_size", "batch_sise"));
    assert!(
        err.contains("batch_sise") && err.contains("batch_size"),
        "{err}"
    );
    let err = error_of(&format!(
        "{BASE}[[views.transforms]]\nop = \"horizontal_flip\"\nprob = 0.5\n"
    ));
    assert!(err.contains("prob") && err.contains("`p`"), "{err}");
    let err = error_of(&format!("{BASE}[[views.transforms]]\nop = \"mixup\"\n"));
    assert!(
        err.contains("mixup") && err.contains("horizontal_flip"),
        "{err}"
    );
    let err = error_of(&format!(
        "{BASE}[views.mask]\nkind = \"random\"\nratio = 0.75\npatch_size = 16\nblocky = true\n"
    ));
    assert!(err.contains("blocky"), "{err}");
    let err = error_of(&format!("{BASE}[trainer]\nlr = 1\n"));
    assert!(err.contains("trainer") && err.contains("model"), "{err}");
}

#[test]
fn bad_values_name_the_key_and_the_fix() {
    let err = error_of(&format!(
        "{BASE}[[views.transforms]]\nop = \"color_jitter\"\nhue = 0.7\n"
    ));
    assert!(
        err.contains("views[0].transforms[0].hue") && err.contains("[0, 0.5]"),
        "{err}"
    );
    let err = error_of(&format!(
        "{BASE}[[views.transforms]]\nop = \"grayscale\"\np = 1.5\n"
    ));
    assert!(err.contains("views[0].transforms[0].p"), "{err}");
    let err = error_of(&format!(
        "{BASE}[[views.transforms]]\nop = \"gaussian_blur\"\nkernel_size = 22\n"
    ));
    assert!(err.contains("kernel_size") && err.contains("odd"), "{err}");
    // Found by the `recipe` fuzz target: a kernel sized from a sigma of 2.3 M took minutes.
    let err = error_of(&format!(
        "{BASE}[[views.transforms]]\nop = \"gaussian_blur\"\nsigma = [0.1, 2333335]\n"
    ));
    assert!(
        err.contains("views[0].transforms[0].sigma") && err.contains("kernel_size"),
        "{err}"
    );
    // One step past the widest kernel (127/3 gives 255 taps).
    let err = error_of(&format!(
        "{BASE}[[views.transforms]]\nop = \"gaussian_blur\"\nsigma = [0.1, 42.34]\n"
    ));
    assert!(err.contains("257 taps"), "{err}");
    // With a kernel size, sigma only shapes the taps; the widest sized kernel is accepted.
    for ok in [
        "sigma = [0.1, 2333335]\nkernel_size = 23",
        "sigma = [0.1, 42.33]",
    ] {
        let recipe = format!("{BASE}[[views.transforms]]\nop = \"gaussian_blur\"\n{ok}\n");
        assert!(Recipe::parse(&recipe, "test.toml").is_ok(), "{ok}");
    }
    let err = error_of(&format!(
        "{BASE}[views.mask]\nkind = \"random\"\nratio = 0.75\npatch_size = 15\n"
    ));
    assert!(
        err.contains("views[0].mask.patch_size") && err.contains("224"),
        "{err}"
    );
    let err = error_of(&BASE.replace("size = 224", "size = 224\nratio = [1.5, 0.5]"));
    assert!(
        err.contains("views[0].ratio: lower bound 1.5 > upper bound 0.5"),
        "{err}"
    );
    let err = error_of(&BASE.replace("size = 224", "size = 224\ncrop = \"center\"\nresize = 200"));
    assert!(err.contains("views[0].resize"), "{err}");
}

#[test]
fn trainer_sections_are_kept_opaque() {
    let text = format!("{BASE}[model]\nkind = \"vit\"\ndepth = 12\n[train]\nepochs = 3\n");
    let recipe = Recipe::parse(&text, "t").unwrap();
    assert_eq!(
        recipe.model.as_ref().unwrap()["depth"].as_integer(),
        Some(12)
    );
    assert_eq!(
        recipe.train.as_ref().unwrap()["epochs"].as_integer(),
        Some(3)
    );
}

#[test]
fn files_load_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(&path, BASE).unwrap();
    let recipe = Recipe::load(path.to_str().unwrap()).unwrap();
    assert_eq!(recipe.data.batch_size, 8);
    assert!(recipe.source.ends_with("mine.toml"));
}
