//! Views against reference values.
//!
//! Resampling references in `fixtures/` were made with Pillow 13 from
//! `shared/testdata/photos/chelsea.png` exactly as torchvision transforms a PIL image:
//! `Resize(73)` + `CenterCrop(64)` (bilinear and bicubic), and `F.resized_crop` boxes
//! (a 4x bicubic downscale and a 4x bilinear upscale). torchvision's tensor path with
//! `antialias=True` uses the same kernels as PIL. Measured: mean |diff| 0.13-0.16 levels,
//! max 1 level (fixed-point rounding), for all four cases.

use std::path::PathBuf;

use tessera_pipeline::decode::{Decoder, RgbImage};
use tessera_pipeline::recipe::{Interpolation, Recipe};
use tessera_pipeline::rng::sample_rng;
use tessera_pipeline::transforms::{CropBox, TransformScratch, ViewTransform, resized_crop};

fn load(path: PathBuf) -> RgbImage {
    let mut out = RgbImage::default();
    Decoder::default()
        .decode(&std::fs::read(&path).unwrap(), &mut out)
        .unwrap();
    out
}

fn fixture(name: &str) -> RgbImage {
    load(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
}

fn photo(name: &str) -> RgbImage {
    load(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/photos")
            .join(name),
    )
}

/// (mean, max) absolute difference in levels.
fn diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len());
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    let mean = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.len() as f64;
    (mean, max)
}

fn view(text: &str) -> ViewTransform {
    let recipe = Recipe::parse(
        &format!("[data]\nbatch_size = 1\n[[views]]\nname = \"v\"\n{text}"),
        "test",
    )
    .unwrap();
    ViewTransform::new(&recipe.views[0])
}

#[test]
fn center_crop_matches_pillow() {
    let src = photo("chelsea.png");
    for (interp, file) in [
        ("bilinear", "chelsea_resize73_center64_bilinear.png"),
        ("bicubic", "chelsea_resize73_center64_bicubic.png"),
    ] {
        let transform = view(&format!(
            "size = 64\ncrop = \"center\"\nresize = 73\ninterpolation = \"{interp}\"\n"
        ));
        let mut out = vec![0u8; transform.output_len()];
        transform
            .apply(
                &src,
                &mut sample_rng(0, 0, 0),
                &mut TransformScratch::new(),
                &mut out,
            )
            .unwrap();
        let (mean, max) = diff(&out, &fixture(file).data);
        eprintln!("Resize(73)+CenterCrop(64) {interp} vs Pillow: mean {mean:.3} max {max}");
        // fast_image_resize works in fixed point like Pillow; differences are rounding.
        assert!(mean < 0.3 && max <= 1, "{interp}: mean {mean} max {max}");
    }
}

#[test]
fn resized_crop_matches_pillow_down_and_up() {
    let src = photo("chelsea.png");
    let mut scratch = TransformScratch::new();
    let mut out = vec![0u8; 64 * 64 * 3];
    let down = CropBox {
        top: 50.0,
        left: 100.0,
        height: 200.0,
        width: 250.0,
    };
    resized_crop(
        &src,
        down,
        64,
        Interpolation::Bicubic,
        &mut scratch,
        &mut out,
    )
    .unwrap();
    let (mean, max) = diff(
        &out,
        &fixture("chelsea_box100_50_250x200_to64_bicubic.png").data,
    );
    eprintln!("resized_crop 250x200 -> 64 bicubic vs Pillow: mean {mean:.3} max {max}");
    assert!(mean < 0.3 && max <= 1, "down: mean {mean} max {max}");
    let up = CropBox {
        top: 100.0,
        left: 200.0,
        height: 12.0,
        width: 16.0,
    };
    resized_crop(
        &src,
        up,
        64,
        Interpolation::Bilinear,
        &mut scratch,
        &mut out,
    )
    .unwrap();
    let (mean, max) = diff(
        &out,
        &fixture("chelsea_box200_100_16x12_to64_bilinear.png").data,
    );
    eprintln!("resized_crop 16x12 -> 64 bilinear vs Pillow: mean {mean:.3} max {max}");
    assert!(mean < 0.3 && max <= 1, "up: mean {mean} max {max}");
}

#[test]
fn views_depend_only_on_the_rng_and_reuse_scratch() {
    let src = photo("astronaut.png");
    let recipe = Recipe::load("dino").unwrap();
    let transforms: Vec<_> = recipe.views.iter().map(ViewTransform::new).collect();
    let render = |scratch: &mut TransformScratch, id: u64| {
        let mut rng = sample_rng(7, 1, id);
        let mut all = Vec::new();
        for instance in recipe.view_instances() {
            let t = &transforms[instance.spec];
            let mut out = vec![0u8; t.output_len()];
            t.apply(&src, &mut rng, scratch, &mut out).unwrap();
            all.extend(out);
        }
        all
    };
    let mut warm = TransformScratch::new();
    let a = render(&mut warm, 3);
    let _ = render(&mut warm, 4);
    // Same sample, a used scratch and a fresh one: identical bytes.
    assert_eq!(a, render(&mut warm, 3));
    assert_eq!(a, render(&mut TransformScratch::new(), 3));
    assert_ne!(a, render(&mut warm, 5));
    assert_eq!(a.len(), 2 * 224 * 224 * 3 + 10 * 96 * 96 * 3);
}

#[test]
fn tiny_and_extreme_images_still_make_views() {
    let hostile =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/hostile/files");
    let transform = view("size = 224\nscale = [0.08, 1.0]\ninterpolation = \"bicubic\"\n");
    let mut scratch = TransformScratch::new();
    let mut out = vec![0u8; transform.output_len()];
    let one = load(hostile.join("tiny_1x1.jpg"));
    transform
        .apply(&one, &mut sample_rng(0, 0, 0), &mut scratch, &mut out)
        .unwrap();
    // A 1x1 image upsamples to a flat view of its colour.
    assert!(out.chunks_exact(3).all(|p| p == &one.data[..3]));
    let strip = load(hostile.join("extreme_aspect_2000x20.jpg"));
    let record = transform
        .apply(&strip, &mut sample_rng(0, 0, 0), &mut scratch, &mut out)
        .unwrap();
    assert_eq!((record.crop.width, record.crop.height), (27.0, 20.0));
    let err = transform
        .apply(
            &RgbImage::default(),
            &mut sample_rng(0, 0, 0),
            &mut scratch,
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = transform
        .apply(&one, &mut sample_rng(0, 0, 0), &mut scratch, &mut out[..10])
        .unwrap_err();
    assert!(err.to_string().contains("needs 150528"), "{err}");
}

#[test]
fn flip_and_solarize_and_grey_act_on_the_whole_view() {
    let src = photo("coffee.png");
    let base = view("size = 32\ncrop = \"center\"\nresize = 32\n");
    let flipped = view(
        "size = 32\ncrop = \"center\"\nresize = 32\n[[views.transforms]]\nop = \"horizontal_flip\"\np = 1.0\n",
    );
    let solar = view(
        "size = 32\ncrop = \"center\"\nresize = 32\n[[views.transforms]]\nop = \"solarize\"\np = 1.0\n",
    );
    let grey = view(
        "size = 32\ncrop = \"center\"\nresize = 32\n[[views.transforms]]\nop = \"grayscale\"\np = 1.0\n",
    );
    let mut scratch = TransformScratch::new();
    let run = |t: &ViewTransform, scratch: &mut TransformScratch| {
        let mut out = vec![0u8; t.output_len()];
        t.apply(&src, &mut sample_rng(0, 0, 0), scratch, &mut out)
            .unwrap();
        out
    };
    let b = run(&base, &mut scratch);
    let f = run(&flipped, &mut scratch);
    for y in 0..32 {
        for x in 0..32 {
            assert_eq!(b[(y * 32 + x) * 3..][..3], f[(y * 32 + 31 - x) * 3..][..3]);
        }
    }
    let s = run(&solar, &mut scratch);
    assert!(
        b.iter()
            .zip(&s)
            .all(|(&v, &w)| w == if v >= 128 { 255 - v } else { v })
    );
    let g = run(&grey, &mut scratch);
    assert!(g.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
}

#[test]
fn probabilities_are_respected_over_many_samples() {
    // hflip p = 0.5 on an asymmetric image: about half the samples come out mirrored.
    let src = photo("rocket.jpg");
    let t = view(
        "size = 16\ncrop = \"center\"\nresize = 16\n[[views.transforms]]\nop = \"horizontal_flip\"\np = 0.5\n",
    );
    let mut scratch = TransformScratch::new();
    let mut out = vec![0u8; t.output_len()];
    let flips = (0..1000)
        .filter(|&id| {
            t.apply(&src, &mut sample_rng(0, 0, id), &mut scratch, &mut out)
                .unwrap()
                .flipped
        })
        .count();
    assert!((430..570).contains(&flips), "{flips}");
}
