//! Decode and view-transform throughput (single thread).
//!
//! `cargo bench -p tessera-pipeline --bench decode` (a plain timing harness: median of
//! 5 runs, each long enough to be stable; no criterion, to keep the dev-dependency tree
//! small). Compares, for the same JPEG bytes:
//! - `image`: `image::load_from_memory(..).to_rgb8()`, the usual Rust path (a fresh
//!   `DynamicImage` and RGB buffer per image; copies the input; parses headers twice);
//! - `tessera`: `Decoder::decode` into a reused `RgbImage` (zune-jpeg direct), as the
//!   pipeline workers run it.
//!
//! It also times the per-view transforms on a decoded 500x375 photo.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tessera_pipeline::decode::{Decoder, RgbImage};
use tessera_pipeline::recipe::Recipe;
use tessera_pipeline::rng::sample_rng;
use tessera_pipeline::transforms::{TransformScratch, ViewTransform};

const RUNS: usize = 5;

/// Median seconds per call of `f` over RUNS runs of `iters` calls.
fn median_per_call(iters: usize, mut f: impl FnMut(usize)) -> f64 {
    // Warm up (allocations, caches).
    for i in 0..iters.min(3) {
        f(i);
    }
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..iters {
                f(i);
            }
            start.elapsed().as_secs_f64() / iters as f64
        })
        .collect();
    runs.sort_by(|a, b| a.total_cmp(b));
    runs[RUNS / 2]
}

/// Enough iterations for ~0.25 s per run.
fn iters_for(one: Duration) -> usize {
    ((0.25 / one.as_secs_f64().max(1e-6)) as usize).clamp(1, 100_000)
}

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata")
}

fn main() {
    let files = [
        "hostile/files/baseline_ref.jpg",
        "hostile/files/progressive_cjpeg_q90.jpg",
        "hostile/files/sampling_444.jpg",
        "hostile/files/gray_cjpeg.jpg",
        "photos/grace_hopper.jpg",
        "photos/rocket.jpg",
        "hostile/files/large_6000x4000.jpg",
    ];
    println!("# JPEG decode, full size, 1 thread, median of {RUNS} runs");
    println!(
        "{:<44} {:>10} {:>12} {:>12} {:>7}",
        "file", "size", "image img/s", "ours img/s", "ratio"
    );
    let mut decoder = Decoder::default();
    let mut out = RgbImage::default();
    for file in files {
        let bytes = std::fs::read(shared().join(file)).expect("test data present");
        decoder.decode(&bytes, &mut out).expect("decodes");
        let size = format!("{}x{}", out.width, out.height);
        let start = Instant::now();
        black_box(image::load_from_memory(&bytes).expect("decodes").to_rgb8());
        let iters = iters_for(start.elapsed());
        let image_s = median_per_call(iters, |_| {
            black_box(
                image::load_from_memory(black_box(&bytes))
                    .expect("decodes")
                    .to_rgb8(),
            );
        });
        let ours_s = median_per_call(iters, |_| {
            decoder
                .decode(black_box(&bytes), &mut out)
                .expect("decodes");
            black_box(&out);
        });
        println!(
            "{file:<44} {size:>10} {:>12.1} {:>12.1} {:>6.2}x",
            1.0 / image_s,
            1.0 / ours_s,
            image_s / ours_s
        );
    }

    println!("\n# View transforms on a decoded 500x375 photo (baseline_ref.jpg), 1 thread");
    let bytes = std::fs::read(shared().join("hostile/files/baseline_ref.jpg")).expect("present");
    decoder.decode(&bytes, &mut out).expect("decodes");
    let cases = [
        (
            "RRC 224 bicubic (scale 0.08-1)",
            "size = 224\ninterpolation = \"bicubic\"\n",
        ),
        (
            "RRC 224 bilinear (scale 0.08-1)",
            "size = 224\ninterpolation = \"bilinear\"\n",
        ),
        (
            "RRC 96 bicubic (scale 0.05-0.4)",
            "size = 96\nscale = [0.05, 0.4]\ninterpolation = \"bicubic\"\n",
        ),
        (
            "RRC 224 + hflip",
            "size = 224\ninterpolation = \"bicubic\"\n[[views.transforms]]\nop = \"horizontal_flip\"\np = 1.0\n",
        ),
        (
            "RRC 224 + jitter(0.4,0.4,0.2,0.1)",
            "size = 224\ninterpolation = \"bicubic\"\n[[views.transforms]]\nop = \"color_jitter\"\np = 1.0\nbrightness = 0.4\ncontrast = 0.4\nsaturation = 0.2\nhue = 0.1\n",
        ),
        (
            "RRC 224 + blur k=23",
            "size = 224\ninterpolation = \"bicubic\"\n[[views.transforms]]\nop = \"gaussian_blur\"\np = 1.0\nkernel_size = 23\n",
        ),
        (
            "RRC 224 + blur k from sigma",
            "size = 224\ninterpolation = \"bicubic\"\n[[views.transforms]]\nop = \"gaussian_blur\"\np = 1.0\n",
        ),
        (
            "RRC 224 + grayscale + solarize",
            "size = 224\ninterpolation = \"bicubic\"\n[[views.transforms]]\nop = \"grayscale\"\np = 1.0\n[[views.transforms]]\nop = \"solarize\"\np = 1.0\n",
        ),
    ];
    let mut scratch = TransformScratch::new();
    let mut baseline = 0.0;
    for (label, view) in cases {
        let recipe = Recipe::parse(
            &format!("[data]\nbatch_size = 1\n[[views]]\nname = \"v\"\n{view}"),
            "bench",
        )
        .expect("valid");
        let transform = ViewTransform::new(&recipe.views[0]);
        let mut slot = vec![0u8; transform.output_len()];
        let per = median_per_call(2000, |i| {
            transform
                .apply(
                    &out,
                    &mut sample_rng(0, 0, i as u64),
                    &mut scratch,
                    &mut slot,
                )
                .expect("applies");
            black_box(&slot);
        });
        if baseline == 0.0 {
            baseline = per;
        }
        println!(
            "{label:<40} {:>8.1} us/view  (+{:>6.1} us over RRC)",
            per * 1e6,
            (per - baseline) * 1e6
        );
    }

    for name in ["mae", "simclr", "dino"] {
        let recipe = Recipe::load(name).expect("builtin");
        let transforms: Vec<_> = recipe.views.iter().map(ViewTransform::new).collect();
        let instances = recipe.view_instances();
        let mut slots: Vec<Vec<u8>> = instances
            .iter()
            .map(|v| vec![0u8; transforms[v.spec].output_len()])
            .collect();
        let per = median_per_call(300, |i| {
            let mut rng = sample_rng(0, 0, i as u64);
            for (instance, slot) in instances.iter().zip(slots.iter_mut()) {
                transforms[instance.spec]
                    .apply(&out, &mut rng, &mut scratch, slot)
                    .expect("applies");
            }
            black_box(&slots);
        });
        println!(
            "{:<40} {:>8.1} us/sample ({} views, excluding decode)",
            format!("recipe {name}"),
            per * 1e6,
            instances.len()
        );
    }
}
