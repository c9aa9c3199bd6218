//! The transforms as they were before issue #16 made them faster, kept as test oracles:
//! each faster version is checked against these on real photos (`tests` below and in
//! [`super::color`], [`super::blur`]).

use super::color::{JitterDraw, hue_shifted};

/// Luma weights (ITU-R 601-2).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Pixels per block: the steps run over structure-of-arrays blocks of this many pixels
/// (on the stack), written without branches so that they vectorise.
const BLOCK: usize = 64;

/// One block of float pixels in [0, 1], as separate channel arrays.
struct Block {
    r: [f32; BLOCK],
    g: [f32; BLOCK],
    b: [f32; BLOCK],
}

/// Apply drawn jitter factors to RGB u8 pixels in place.
///
/// Brightness, saturation and hue are per-pixel, so the steps before contrast run in one
/// pass that also sums the luma contrast needs, and the steps from contrast on run in a
/// second pass (one pass when contrast is off). `work` holds the float intermediate
/// between the passes (reused scratch).
pub(crate) fn apply_jitter(draw: &JitterDraw, pixels: &mut [u8], work: &mut Vec<f32>) {
    let split = match draw.contrast {
        Some(_) => draw
            .order
            .iter()
            .position(|&s| s == 1)
            .unwrap_or(draw.order.len()),
        None => draw.order.len(),
    };
    let (before, after) = (&draw.order[..split], &draw.order[(split + 1).min(4)..]);
    let mut block = Block {
        r: [0.0; BLOCK],
        g: [0.0; BLOCK],
        b: [0.0; BLOCK],
    };
    let Some(contrast) = draw.contrast else {
        for chunk in pixels.chunks_mut(BLOCK * 3) {
            let n = block.load_u8(chunk);
            block.steps(before, draw, n);
            block.store_u8(chunk, n);
        }
        return;
    };
    work.clear();
    work.resize(pixels.len(), 0.0);
    let mut luma_sum = 0f64;
    for (chunk, out) in pixels.chunks(BLOCK * 3).zip(work.chunks_mut(BLOCK * 3)) {
        let n = block.load_u8(chunk);
        block.steps(before, draw, n);
        luma_sum += f64::from(block.luma_sum(n));
        block.store_f32(out, n);
    }
    // blend(img, mean(grey(img)), f)
    let mean = (luma_sum / (pixels.len() / 3).max(1) as f64) as f32;
    for (chunk, saved) in pixels.chunks_mut(BLOCK * 3).zip(work.chunks(BLOCK * 3)) {
        let n = block.load_f32(saved);
        for ch in [&mut block.r, &mut block.g, &mut block.b] {
            for x in &mut ch[..n] {
                *x = (contrast * *x + (1.0 - contrast) * mean).clamp(0.0, 1.0);
            }
        }
        block.steps(after, draw, n);
        block.store_u8(chunk, n);
    }
}

impl Block {
    fn load_u8(&mut self, px: &[u8]) -> usize {
        let n = px.len() / 3;
        for (i, p) in px.chunks_exact(3).enumerate() {
            self.r[i] = f32::from(p[0]) * (1.0 / 255.0);
            self.g[i] = f32::from(p[1]) * (1.0 / 255.0);
            self.b[i] = f32::from(p[2]) * (1.0 / 255.0);
        }
        n
    }

    fn load_f32(&mut self, px: &[f32]) -> usize {
        let n = px.len() / 3;
        for (i, p) in px.chunks_exact(3).enumerate() {
            (self.r[i], self.g[i], self.b[i]) = (p[0], p[1], p[2]);
        }
        n
    }

    fn store_u8(&self, px: &mut [u8], n: usize) {
        // Round half up with a truncating cast (values >= 0): `f32::round` is a libm
        // call on baseline x86-64.
        for (i, p) in px.chunks_exact_mut(3).take(n).enumerate() {
            p[0] = (self.r[i] * 255.0 + 0.5) as u8;
            p[1] = (self.g[i] * 255.0 + 0.5) as u8;
            p[2] = (self.b[i] * 255.0 + 0.5) as u8;
        }
    }

    fn store_f32(&self, px: &mut [f32], n: usize) {
        for (i, p) in px.chunks_exact_mut(3).take(n).enumerate() {
            p.copy_from_slice(&[self.r[i], self.g[i], self.b[i]]);
        }
    }

    fn luma_sum(&self, n: usize) -> f32 {
        (0..n)
            .map(|i| LUMA[0] * self.r[i] + LUMA[1] * self.g[i] + LUMA[2] * self.b[i])
            .sum()
    }

    /// Brightness (0), saturation (2) and hue (3) steps, in `steps` order.
    fn steps(&mut self, steps: &[u8], draw: &JitterDraw, n: usize) {
        for &step in steps {
            match (step, draw.brightness, draw.saturation, draw.hue) {
                (0, Some(f), _, _) => {
                    // blend(img, black, f)
                    for ch in [&mut self.r, &mut self.g, &mut self.b] {
                        for x in &mut ch[..n] {
                            *x = (*x * f).clamp(0.0, 1.0);
                        }
                    }
                }
                (2, _, Some(f), _) => {
                    // blend(img, grey(img), f)
                    for i in 0..n {
                        let grey = LUMA[0] * self.r[i] + LUMA[1] * self.g[i] + LUMA[2] * self.b[i];
                        let mix = (1.0 - f) * grey;
                        self.r[i] = (f * self.r[i] + mix).clamp(0.0, 1.0);
                        self.g[i] = (f * self.g[i] + mix).clamp(0.0, 1.0);
                        self.b[i] = (f * self.b[i] + mix).clamp(0.0, 1.0);
                    }
                }
                (3, _, _, Some(shift)) => {
                    for i in 0..n {
                        let [r, g, b] = hue_shifted(self.r[i], self.g[i], self.b[i], shift);
                        (self.r[i], self.g[i], self.b[i]) = (r, g, b);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Gaussian blur as before issue #16: f32 horizontal pass into a full image, then vertical.
pub(crate) fn gaussian_blur(
    pixels: &mut [u8],
    side: usize,
    sigma: f32,
    kernel_size: Option<u32>,
    work: &mut Vec<f32>,
    weights: &mut Vec<f32>,
) {
    let k = kernel_size.map_or_else(|| 2 * (3.0 * sigma).ceil() as usize + 1, |k| k as usize);
    let full_radius = k / 2;
    let gauss = |x: f32| (-(x * x) / (2.0 * sigma * sigma)).exp();
    // Normalise over the full kernel as torchvision does, then skip the taps beyond 5
    // sigma (weight below exp(-12.5) = 4e-6 of the peak; together they move no output by
    // more than 0.01 level). SimCLR/BYOL's fixed 23 taps with a small sigma shrink a lot.
    let total: f32 = (0..k).map(|t| gauss(t as f32 - full_radius as f32)).sum();
    let radius = full_radius.min((5.0 * sigma).ceil() as usize);
    weights.clear();
    weights.extend((0..2 * radius + 1).map(|t| gauss(t as f32 - radius as f32) / total));

    // torch's 'reflect' padding (mirror without repeating the edge), folded as many times
    // as needed when the kernel is wider than the image.
    let n = side as isize;
    let reflect = |i: isize| -> usize {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n - 1);
        let i = i.rem_euclid(period);
        (if i >= n { period - i } else { i }) as usize
    };
    let row_len = side * 3;
    let padded_len = (side + 2 * radius) * 3;
    // Scratch layout: [horizontal result: side * row_len][padded row][accumulator row].
    work.clear();
    work.resize(side * row_len + padded_len + row_len, 0.0);
    let (horizontal, rest) = work.split_at_mut(side * row_len);
    let (padded, acc) = rest.split_at_mut(padded_len);

    // Horizontal pass: pixels -> horizontal (f32).
    for y in 0..side {
        let row = &pixels[y * row_len..(y + 1) * row_len];
        // The interior is a straight copy; only the 2 * radius border pixels need the
        // reflected index (an integer division each, too slow for every pixel).
        for (dst, &v) in padded[radius * 3..(radius + side) * 3].iter_mut().zip(row) {
            *dst = f32::from(v);
        }
        for p in (0..radius).chain(radius + side..side + 2 * radius) {
            let sx = reflect(p as isize - radius as isize);
            for c in 0..3 {
                padded[p * 3 + c] = f32::from(row[sx * 3 + c]);
            }
        }
        let out = &mut horizontal[y * row_len..(y + 1) * row_len];
        out.fill(0.0);
        for (t, &w) in weights.iter().enumerate() {
            let shifted = &padded[t * 3..t * 3 + row_len];
            for (o, &v) in out.iter_mut().zip(shifted) {
                *o += w * v;
            }
        }
    }
    // Vertical pass: horizontal -> pixels, rounding (torchvision rounds before the u8 cast).
    for y in 0..side {
        acc.fill(0.0);
        for (t, &w) in weights.iter().enumerate() {
            let sy = reflect(y as isize + t as isize - radius as isize);
            let src = &horizontal[sy * row_len..(sy + 1) * row_len];
            for (a, &v) in acc.iter_mut().zip(src) {
                *a += w * v;
            }
        }
        let out = &mut pixels[y * row_len..(y + 1) * row_len];
        for (o, &a) in out.iter_mut().zip(acc.iter()) {
            // Round half up by a saturating truncating cast (`f32::round` is a libm call).
            *o = (a + 0.5) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::decode::{Decoder, RgbImage};
    use crate::recipe::Interpolation;
    use crate::rng::sample_rng;
    use crate::transforms::color::ColorJitter;
    use crate::transforms::crop::{random_resized_crop_box, uniform};
    use crate::transforms::{TransformScratch, blur, color, resized_crop};

    /// Views of the shared real photos (JPEG and PNG), as DINO's crops make them: 224 and
    /// 96 pixels, bicubic, several crops each.
    fn photo_views() -> Vec<(Vec<u8>, usize)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/photos");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("shared photos present")
            .map(|e| e.expect("readable").path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "png"))
            .collect();
        names.sort();
        assert!(names.len() >= 4, "{names:?}");
        let (mut decoder, mut image) = (Decoder::default(), RgbImage::default());
        let mut scratch = TransformScratch::new();
        let mut views = Vec::new();
        for (i, path) in names.iter().enumerate() {
            decoder
                .decode(&std::fs::read(path).expect("readable"), &mut image)
                .expect("decodes");
            for (j, size) in [224u32, 96, 96].into_iter().enumerate() {
                let mut rng = sample_rng(16, i as u64, j as u64);
                let crop = random_resized_crop_box(
                    &mut rng,
                    image.width,
                    image.height,
                    [0.05, 1.0],
                    [0.75, 4.0 / 3.0],
                );
                let mut out = vec![0u8; (size * size * 3) as usize];
                resized_crop(
                    &image,
                    crop,
                    size,
                    Interpolation::Bicubic,
                    &mut scratch,
                    &mut out,
                )
                .expect("resizes");
                views.push((out, size as usize));
            }
        }
        views
    }

    #[test]
    fn jitter_equals_the_previous_implementation_on_photos() {
        let jitter = ColorJitter {
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
        };
        let mut work = Vec::new();
        for (v, (view, _)) in photo_views().iter().enumerate() {
            for id in 0..12 {
                let draw = jitter.draw(&mut sample_rng(17, v as u64, id));
                let (mut fast, mut slow) = (view.clone(), view.clone());
                color::apply_jitter(&draw, &mut fast, &mut work);
                super::apply_jitter(&draw, &mut slow, &mut work);
                assert!(fast == slow, "view {v}, draw {draw:?}");
            }
        }
    }

    #[test]
    fn blur_equals_the_previous_implementation_on_photos() {
        let (mut work, mut weights) = (Vec::new(), Vec::new());
        for (v, (view, side)) in photo_views().iter().enumerate() {
            let mut rng = sample_rng(18, v as u64, 0);
            for kernel_size in [None, Some(23), Some(3)] {
                let sigma = uniform(&mut rng, 0.1, 2.0) as f32;
                let (mut fast, mut slow) = (view.clone(), view.clone());
                blur::gaussian_blur(
                    &mut fast,
                    *side,
                    sigma,
                    kernel_size,
                    &mut work,
                    &mut weights,
                );
                super::gaussian_blur(
                    &mut slow,
                    *side,
                    sigma,
                    kernel_size,
                    &mut work,
                    &mut weights,
                );
                assert!(
                    fast == slow,
                    "view {v}, sigma {sigma}, kernel {kernel_size:?}"
                );
            }
        }
    }
}
