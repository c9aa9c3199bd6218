//! Augmentation on the training device (`[augment] on_device = true`, issue #16): colour
//! jitter, greyscale, Gaussian blur and solarize as tensor operations, per sample, with the
//! draws the CPU workers made ([`tessera_pipeline::transforms::device`]).
//!
//! The formulas are the CPU's ([`tessera_pipeline::transforms::color`], `blur`), step by
//! step and in the same f32 operation order, and the pixels are rounded to u8 levels after
//! each step as the CPU's u8 views are. So on the CPU backend the device's images equal
//! the CPU path's up to the order of the contrast mean's sum (a level at most, rarely);
//! on a GPU, fused multiply-adds may move a rounding by a level.
//!
//! Every step is applied to the whole batch and kept only where the sample drew it
//! (`mask_where`): samples whose coin said no keep their pixels bit for bit. ColorJitter's
//! random order is handled the same way: at each of its four positions, each of the four
//! operations runs for the samples that put it there.
//!
//! Pixels come in and go out as f32 in u8 levels (`0..=255`, whole numbers), `[n, 3, h, w]`;
//! the uploader normalises afterwards.

use burn::prelude::*;
use burn::tensor::{Bool, TensorData};
use tessera_pipeline::transforms::blur;
use tessera_pipeline::transforms::color::JitterDraw;
use tessera_pipeline::transforms::{DeviceDraws, DeviceStep, MAX_DEVICE_STEPS};

/// Luma weights (ITU-R 601-2), as the CPU's jitter uses them.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Apply one view's recorded steps to its pixels.
///
/// # Shapes
/// `pixels: [n, 3, h, w]` (u8 levels as f32), `draws: n` entries; returns `[n, 3, h, w]`.
pub fn apply_draws<B: Backend>(
    pixels: Tensor<B, 4>,
    draws: &[DeviceDraws],
    device: &B::Device,
) -> Tensor<B, 4> {
    let mut x = pixels; // [n, 3, h, w]
    for position in 0..MAX_DEVICE_STEPS {
        let column: Vec<DeviceStep> = draws.iter().map(|d| d[position]).collect();
        if column.iter().any(|s| matches!(s, DeviceStep::Jitter(_))) {
            x = jitter(x, &column, device);
        }
        if column.iter().any(|s| matches!(s, DeviceStep::Grayscale)) {
            x = grayscale(x, &column, device);
        }
        if column
            .iter()
            .any(|s| matches!(s, DeviceStep::GaussianBlur { .. }))
        {
            x = gaussian_blur(x, &column, device);
        }
        if column
            .iter()
            .any(|s| matches!(s, DeviceStep::Solarize { .. }))
        {
            x = solarize(x, &column, device);
        }
    }
    x
}

/// A per-sample value as a `[n, 1, 1, 1]` tensor expanded to `shape`.
fn per_sample<B: Backend>(values: &[f32], shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    Tensor::<B, 1>::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
        .reshape([values.len(), 1, 1, 1])
        .expand(shape)
}

/// A per-sample flag as a `[n, 1, 1, 1]` mask expanded to `shape`.
fn per_sample_mask<B: Backend>(
    flags: &[bool],
    shape: [usize; 4],
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    Tensor::<B, 1, Bool>::from_data(TensorData::new(flags.to_vec(), [flags.len()]), device)
        .reshape([flags.len(), 1, 1, 1])
        .expand(shape)
}

/// `r, g, b` planes of `[n, 3, h, w]`, each `[n, 1, h, w]`.
fn planes<B: Backend>(x: &Tensor<B, 4>) -> [Tensor<B, 4>; 3] {
    let [n, _, h, w] = x.dims();
    std::array::from_fn(|c| x.clone().slice([0..n, c..c + 1, 0..h, 0..w]))
}

/// `0.299 r + 0.587 g + 0.114 b`, summed in the CPU's order. # Shapes `[n, 1, h, w]`.
fn luma<B: Backend>(x: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [r, g, b] = planes(x);
    r * LUMA[0] + g * LUMA[1] + b * LUMA[2]
}

/// ColorJitter ([`tessera_pipeline::transforms::color::apply_jitter`]) in [0, 1], then
/// rounded to levels; only for the samples with a [`DeviceStep::Jitter`].
fn jitter<B: Backend>(
    levels: Tensor<B, 4>,
    column: &[DeviceStep],
    device: &B::Device,
) -> Tensor<B, 4> {
    let shape = levels.dims();
    let drawn: Vec<Option<JitterDraw>> = column
        .iter()
        .map(|s| match s {
            DeviceStep::Jitter(draw) => Some(*draw),
            _ => None,
        })
        .collect();
    let mut x = levels.clone() * (1.0f32 / 255.0); // [n, 3, h, w] in [0, 1]
    for k in 0..4 {
        for step in 0..4u8 {
            // Which samples run `step` at position `k`, and with which factor.
            let factor = |d: &JitterDraw| match step {
                0 => d.brightness,
                1 => d.contrast,
                2 => d.saturation,
                _ => d.hue,
            };
            let chosen: Vec<Option<f32>> = drawn
                .iter()
                .map(|d| d.filter(|d| d.order[k] == step).and_then(|d| factor(&d)))
                .collect();
            if chosen.iter().all(Option::is_none) {
                continue;
            }
            let flags: Vec<bool> = chosen.iter().map(Option::is_some).collect();
            let f: Vec<f32> = chosen.iter().map(|c| c.unwrap_or(1.0)).collect();
            let stepped = match step {
                0 => (x.clone() * per_sample(&f, shape, device)).clamp(0.0, 1.0),
                1 => {
                    // blend(img, mean(grey(img)), f)
                    let [n, _, h, w] = shape;
                    let mean = luma(&x)
                        .reshape([n, h * w])
                        .mean_dim(1)
                        .reshape([n, 1, 1, 1])
                        .expand(shape);
                    let one_minus: Vec<f32> = f.iter().map(|f| 1.0 - f).collect();
                    (per_sample(&f, shape, device) * x.clone()
                        + per_sample(&one_minus, shape, device) * mean)
                        .clamp(0.0, 1.0)
                }
                2 => {
                    // blend(img, grey(img), f)
                    let one_minus: Vec<f32> = f.iter().map(|f| 1.0 - f).collect();
                    let mix = per_sample(&one_minus, shape, device) * luma(&x).expand(shape);
                    (per_sample(&f, shape, device) * x.clone() + mix).clamp(0.0, 1.0)
                }
                _ => {
                    let shifts: Vec<f32> = chosen.iter().map(|c| 6.0 * c.unwrap_or(0.0)).collect();
                    hue_shifted(&x, &shifts, device)
                }
            };
            x = x.mask_where(per_sample_mask(&flags, shape, device), stepped);
        }
    }
    let rounded = (x * 255.0 + 0.5).floor();
    let applied: Vec<bool> = drawn.iter().map(Option::is_some).collect();
    levels.mask_where(per_sample_mask(&applied, shape, device), rounded)
}

/// The CPU's branch-free hue rotation (`hue_shifted` in the pipeline's colour module),
/// with `six_shifts` = 6 x the shift in turns per sample. # Shapes `[n, 3, h, w]` in [0, 1].
fn hue_shifted<B: Backend>(
    x: &Tensor<B, 4>,
    six_shifts: &[f32],
    device: &B::Device,
) -> Tensor<B, 4> {
    let [n, _, h, w] = x.dims();
    let plane = [n, 1, h, w];
    let [r, g, b] = planes(x);
    let maxc = r.clone().max_pair(g.clone()).max_pair(b.clone());
    let minc = r.clone().min_pair(g.clone()).min_pair(b.clone());
    let chroma = maxc.clone() - minc.clone();
    let has_chroma = chroma.clone().greater_elem(0.0);
    let safe = chroma.clone().mask_fill(has_chroma.clone().bool_not(), 1.0);
    let inv = safe.recip().mask_fill(has_chroma.bool_not(), 0.0);
    let is_r = maxc.clone().equal(r.clone());
    let is_g = is_r
        .clone()
        .bool_not()
        .bool_and(maxc.clone().equal(g.clone()));
    let num = (r.clone() - g.clone())
        .mask_where(is_g.clone(), b.clone() - r.clone())
        .mask_where(is_r.clone(), g - b);
    let base = Tensor::<B, 4>::full(plane, 4.0, device)
        .mask_fill(is_g, 2.0)
        .mask_fill(is_r, 0.0);
    let hue = base + num * inv + per_sample(six_shifts, plane, device) + 12.0;
    let hue = hue.clone() - (hue * (1.0f32 / 6.0)).floor() * 6.0;
    let hue = hue
        .clone()
        .mask_where(hue.clone().greater_equal_elem(6.0), hue - 6.0);
    let sector = hue.clone().floor();
    let f = hue - sector.clone();
    let t = minc.clone() + chroma.clone() * f.clone();
    let q = maxc.clone() - chroma * f;
    // Sextant -> (r, g, b): 0 (v,t,p) 1 (q,v,p) 2 (p,v,t) 3 (p,q,v) 4 (t,p,v) 5 (v,p,q).
    let pick = |max_in: [f32; 2], t_in: f32, q_in: f32| {
        minc.clone()
            .mask_where(sector.clone().equal_elem(q_in), q.clone())
            .mask_where(sector.clone().equal_elem(t_in), t.clone())
            .mask_where(sector.clone().equal_elem(max_in[1]), maxc.clone())
            .mask_where(sector.clone().equal_elem(max_in[0]), maxc.clone())
    };
    Tensor::cat(
        vec![
            pick([0.0, 5.0], 4.0, 1.0),
            pick([1.0, 2.0], 0.0, 3.0),
            pick([3.0, 4.0], 2.0, 5.0),
        ],
        1,
    )
}

/// RandomGrayscale with PIL's fixed point: `(19595 R + 38470 G + 7471 B + 2^15) >> 16`,
/// exact in f32 for u8 levels.
fn grayscale<B: Backend>(
    levels: Tensor<B, 4>,
    column: &[DeviceStep],
    device: &B::Device,
) -> Tensor<B, 4> {
    let shape = levels.dims();
    let [r, g, b] = planes(&levels);
    let grey = ((r * 19595.0 + g * 38470.0 + b * 7471.0 + 32768.0) * (1.0f32 / 65536.0))
        .floor()
        .expand(shape);
    let flags: Vec<bool> = column
        .iter()
        .map(|s| matches!(s, DeviceStep::Grayscale))
        .collect();
    levels.mask_where(per_sample_mask(&flags, shape, device), grey)
}

/// Separable Gaussian blur with each sample's taps ([`blur::kernel`]) and torch's reflect
/// padding, summed tap by tap in the CPU's order, rounded to levels.
fn gaussian_blur<B: Backend>(
    levels: Tensor<B, 4>,
    column: &[DeviceStep],
    device: &B::Device,
) -> Tensor<B, 4> {
    let shape = levels.dims();
    let [n, _, h, w] = shape;
    let mut taps: Vec<Option<Vec<f32>>> = Vec::with_capacity(n);
    let mut scratch = Vec::new();
    for step in column {
        taps.push(match step {
            DeviceStep::GaussianBlur { sigma, kernel_size } => {
                blur::kernel(*sigma, *kernel_size, &mut scratch);
                Some(scratch.clone())
            }
            _ => None,
        });
    }
    let radius = taps
        .iter()
        .flatten()
        .map(|t| t.len() / 2)
        .max()
        .unwrap_or(0);
    // Per tap, each sample's weight; a smaller kernel sits centred among zeros (adding
    // zero products leaves the CPU's sum unchanged).
    let weight = |t: usize| -> Vec<f32> {
        taps.iter()
            .map(|k| {
                k.as_ref().map_or(0.0, |k| {
                    let r = k.len() / 2;
                    (t + r)
                        .checked_sub(radius)
                        .and_then(|i| k.get(i))
                        .copied()
                        .unwrap_or(0.0)
                })
            })
            .collect()
    };
    let index = |len: usize| -> Tensor<B, 1, Int> {
        let idx: Vec<i64> = (0..len + 2 * radius)
            .map(|p| blur::reflect(p as isize - radius as isize, len) as i64)
            .collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [len + 2 * radius]), device)
    };
    // Horizontal pass.
    let padded = levels.clone().select(3, index(w)); // [n, 3, h, w + 2r]
    let mut horizontal = Tensor::<B, 4>::zeros(shape, device);
    for t in 0..2 * radius + 1 {
        let shifted = padded.clone().slice([0..n, 0..3, 0..h, t..t + w]);
        horizontal = horizontal + per_sample(&weight(t), shape, device) * shifted;
    }
    // Vertical pass.
    let padded = horizontal.select(2, index(h)); // [n, 3, h + 2r, w]
    let mut vertical = Tensor::<B, 4>::zeros(shape, device);
    for t in 0..2 * radius + 1 {
        let shifted = padded.clone().slice([0..n, 0..3, t..t + h, 0..w]);
        vertical = vertical + per_sample(&weight(t), shape, device) * shifted;
    }
    let rounded = (vertical + 0.5).floor().clamp(0.0, 255.0);
    let flags: Vec<bool> = taps.iter().map(Option::is_some).collect();
    levels.mask_where(per_sample_mask(&flags, shape, device), rounded)
}

/// PIL `ImageOps.solarize`: levels `>= threshold` become `255 - level`.
fn solarize<B: Backend>(
    levels: Tensor<B, 4>,
    column: &[DeviceStep],
    device: &B::Device,
) -> Tensor<B, 4> {
    let shape = levels.dims();
    // A threshold above every level for the samples that did not draw it.
    let thresholds: Vec<f32> = column
        .iter()
        .map(|s| match s {
            DeviceStep::Solarize { threshold } => f32::from(*threshold),
            _ => 256.0,
        })
        .collect();
    let over = levels
        .clone()
        .greater_equal(per_sample(&thresholds, shape, device));
    let inverted = levels.clone().neg() + 255.0;
    levels.mask_where(over, inverted)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use burn::backend::Flex;
    use tessera_pipeline::Recipe;
    use tessera_pipeline::loader::{Loader, LoaderOptions};

    use super::*;
    use crate::feeder::{IMAGENET_STD, Normalize, Uploader};

    type B = Flex;

    /// DINO's chain on small views, with the coins raised so that every step runs for
    /// some samples and not for others.
    const RECIPE: &str = r#"
[data]
batch_size = 12
shuffle_buffer = 1
seed = 16

[[views]]
name = "global"
size = 48
scale = [0.4, 1.0]
interpolation = "bicubic"
[[views.transforms]]
op = "horizontal_flip"
[[views.transforms]]
op = "color_jitter"
p = 0.8
brightness = 0.4
contrast = 0.4
saturation = 0.2
hue = 0.1
[[views.transforms]]
op = "grayscale"
p = 0.3
[[views.transforms]]
op = "gaussian_blur"
p = 0.6
sigma = [0.1, 2.0]
[[views.transforms]]
op = "solarize"
p = 0.4

[[views]]
name = "local"
count = 2
size = 24
scale = [0.05, 0.4]
interpolation = "bicubic"
[[views.transforms]]
op = "color_jitter"
p = 1.0
brightness = 0.4
contrast = 0.4
saturation = 0.2
hue = 0.1
[[views.transforms]]
op = "gaussian_blur"
p = 0.5
kernel_size = 9
"#;

    /// The first batch of the reference shards (real photos) through `recipe`.
    fn first_batch(on_device: bool) -> tessera_pipeline::Batch {
        let text = if on_device {
            format!("[augment]\non_device = true\n{RECIPE}")
        } else {
            RECIPE.to_string()
        };
        let recipe = Recipe::parse(&text, "device-augment test").expect("valid recipe");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/reference-shards");
        let shards = vec![dir.join("ref-000000.tar"), dir.join("ref-000001.tar")];
        let mut options = LoaderOptions::new(shards, recipe);
        options.graph.workers = 2;
        let mut loader = Loader::start(options).expect("loader starts");
        loader
            .next_batch()
            .expect("a batch")
            .expect("the batch loads")
    }

    /// Issue #16: the device path's images equal the CPU path's within rounding.
    #[test]
    fn device_augmentation_equals_the_cpu_chain_on_photos() {
        let cpu = first_batch(false);
        let deferred = first_batch(true);
        assert_eq!(cpu.keys, deferred.keys, "same samples in the same slots");
        let draws = deferred
            .augment
            .as_ref()
            .expect("draws travel with the batch");
        // Every kind of step was drawn for some sample and skipped for another.
        let all: Vec<DeviceStep> = draws.iter().flatten().flatten().copied().collect();
        let kinds: [fn(&DeviceStep) -> bool; 4] = [
            |s: &DeviceStep| matches!(s, DeviceStep::Jitter(_)),
            |s: &DeviceStep| matches!(s, DeviceStep::Grayscale),
            |s: &DeviceStep| matches!(s, DeviceStep::GaussianBlur { .. }),
            |s: &DeviceStep| matches!(s, DeviceStep::Solarize { .. }),
        ];
        for kind in kinds {
            assert!(all.iter().any(kind), "{all:?}");
        }
        // The CPU did leave the work: the deferred batch's u8 views differ.
        assert_ne!(&cpu.views[0].data[..], &deferred.views[0].data[..]);

        let uploader = Uploader::<B>::new(&Default::default(), Normalize::default());
        let cpu = uploader.upload(cpu).expect("uploads");
        let device = uploader.upload(deferred).expect("uploads");
        for (v, (a, b)) in cpu.views.iter().zip(&device.views).enumerate() {
            assert_eq!(a.dims(), b.dims());
            let [_, _, h, w] = a.dims();
            let a = a.to_data().to_vec::<f32>().expect("f32");
            let b = b.to_data().to_vec::<f32>().expect("f32");
            // Back to u8 levels: normalised = (level / 255 - mean) / std.
            let plane = h * w;
            let mut worst = 0f32;
            let mut differing = 0usize;
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                let channel = (i / plane) % 3;
                let levels = (x - y).abs() * 255.0 * IMAGENET_STD[channel];
                worst = worst.max(levels);
                differing += usize::from(levels > 0.01);
            }
            assert!(worst <= 1.01, "view {v}: a pixel differs by {worst} levels");
            assert!(
                differing * 200 <= a.len(),
                "view {v}: {differing} of {} values differ",
                a.len()
            );
        }
    }

    #[test]
    fn skipped_samples_keep_their_pixels_bit_for_bit() {
        let device = Default::default();
        let levels: Vec<f32> = (0..2 * 3 * 5 * 5).map(|i| (i * 37 % 256) as f32).collect();
        let x = Tensor::<B, 1>::from_data(TensorData::new(levels.clone(), [levels.len()]), &device)
            .reshape([2, 3, 5, 5]);
        let mut drawn = DeviceDraws::default();
        drawn[0] = DeviceStep::Grayscale;
        drawn[1] = DeviceStep::GaussianBlur {
            sigma: 1.0,
            kernel_size: None,
        };
        drawn[2] = DeviceStep::Solarize { threshold: 128 };
        let out = apply_draws(x, &[DeviceDraws::default(), drawn], &device);
        let out = out.to_data().to_vec::<f32>().expect("f32");
        assert_eq!(&out[..75], &levels[..75], "the skipped sample is untouched");
        assert_ne!(&out[75..], &levels[75..]);
        // Greyscale made the three planes equal; solarize left nothing at or above 128.
        assert_eq!(&out[75..100], &out[100..125]);
        assert!(out[75..].iter().all(|&v| v < 128.0 && v.fract() == 0.0));
    }
}
