//! Recipe files (TOML) from arbitrary text: parsing and validation never panic, and a
//! recipe that validates can be used: its views are listed, each view's crop, resize and
//! transform chain runs on a small image, and each mask is drawn, in bounded time and
//! memory (a recipe is user input; its numbers must be checked up front, not trusted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use tessera_pipeline::Recipe;
use tessera_pipeline::decode::RgbImage;
use tessera_pipeline::masks::MaskGenerator;
use tessera_pipeline::transforms::{TransformScratch, ViewTransform};

/// Views up to this side are rendered (larger ones only slow the fuzzer: same code).
const MAX_RENDERED_SIDE: u32 = 256;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(recipe) = Recipe::parse(text, "fuzz.toml") else {
        return;
    };
    let instances = recipe.view_instances();
    assert!(!instances.is_empty());
    let mut image = RgbImage::new(37, 23);
    for (i, px) in image.data.iter_mut().enumerate() {
        *px = (i * 31 % 251) as u8;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(data.len() as u64);
    let mut scratch = TransformScratch::new();
    for spec in &recipe.views {
        if spec.size <= MAX_RENDERED_SIDE {
            let view = ViewTransform::new(spec);
            let mut out = vec![0u8; view.output_len()];
            view.apply(&image, &mut rng, &mut scratch, &mut out)
                .expect("a validated view renders a non-empty image");
        }
        if let Some(mask) = &spec.mask {
            let generator = MaskGenerator::new(mask, spec.size);
            let n = generator.num_patches();
            let keep = generator.num_keep();
            let random = matches!(mask, tessera_pipeline::masks::MaskSpec::Random { .. });
            let mut m = vec![0u8; n];
            let mut ids_keep = vec![0u32; if random { keep } else { 0 }];
            let mut ids_restore = vec![0u32; if random { n } else { 0 }];
            for _ in 0..2 {
                generator.generate(&mut rng, &mut m, &mut ids_keep, &mut ids_restore);
                assert!(m.iter().all(|&v| v <= 1));
            }
        }
    }
});
