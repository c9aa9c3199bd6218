//! Gaussian blur with torchvision's `GaussianBlur` semantics.
//!
//! torchvision (SimCLR, BYOL recipes) convolves with a separable kernel of a fixed odd
//! size `k`: weights `exp(-x^2 / (2 sigma^2))` for `x` in `-(k-1)/2 ..= (k-1)/2`,
//! normalised, with reflect padding, rounding back to u8. DINO instead calls PIL's
//! `ImageFilter.GaussianBlur(radius=sigma)` (an extended box-blur approximation whose
//! support grows with sigma). We implement the true Gaussian for both: when a recipe gives
//! no `kernel_size` the kernel is sized from sigma, `k = 2 * ceil(3 sigma) + 1`, which
//! covers 99.7% of the mass as PIL's approximation does; the two differ by rounding-level
//! amounts in smooth regions.

/// The blur's taps for `sigma` and `kernel_size` (odd; `None`: `2 ceil(3 sigma) + 1`), into
/// `weights`; returns the radius `r` (`weights` holds `2 r + 1` taps, centre at `r`).
///
/// Normalised over the full kernel as torchvision does, then cut to 5 sigma: taps beyond
/// weigh below exp(-12.5) = 4e-6 of the peak and together move no output by more than 0.01
/// level. SimCLR/BYOL's fixed 23 taps with a small sigma shrink a lot. The trainer's device
/// augmentation uses the same taps.
pub fn kernel(sigma: f32, kernel_size: Option<u32>, weights: &mut Vec<f32>) -> usize {
    let k = kernel_size.map_or_else(|| taps_for_sigma(sigma), |k| k as usize);
    let full_radius = k / 2;
    let gauss = |x: f32| (-(x * x) / (2.0 * sigma * sigma)).exp();
    let total: f32 = (0..k).map(|t| gauss(t as f32 - full_radius as f32)).sum();
    let radius = full_radius.min((5.0 * sigma).ceil() as usize);
    weights.clear();
    weights.extend((0..2 * radius + 1).map(|t| gauss(t as f32 - radius as f32) / total));
    radius
}

/// The taps of a kernel sized from sigma (no `kernel_size`): `2 ceil(3 sigma) + 1`,
/// saturating for a sigma too wide to count (recipes refuse over 255 taps).
pub fn taps_for_sigma(sigma: f32) -> usize {
    ((3.0 * sigma).ceil() as usize)
        .saturating_mul(2)
        .saturating_add(1)
}

/// torch's 'reflect' padding: the index in `0..n` that position `i` (any integer) reads,
/// mirrored without repeating the edge and folded as many times as needed when the
/// kernel is wider than the image.
pub fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n <= 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let i = i.rem_euclid(period);
    (if i >= n { period - i } else { i }) as usize
}

/// Blur `pixels` (`side x side` RGB u8) in place with a Gaussian of `sigma` and kernel
/// size `kernel_size` (odd; `None`: from sigma). `work` and `weights` are reused scratch.
///
/// Both passes are written as "for each tap, add a weighted shifted row", so the inner
/// loops run over contiguous slices and vectorise; they are compiled for baseline x86-64
/// and for AVX2 (twice the lanes), chosen at run time, with the same arithmetic in the
/// same order (the same bits).
pub fn gaussian_blur(
    pixels: &mut [u8],
    side: usize,
    sigma: f32,
    kernel_size: Option<u32>,
    work: &mut Vec<f32>,
    weights: &mut Vec<f32>,
) {
    let radius = kernel(sigma, kernel_size, weights);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { blur_passes_avx2(pixels, side, radius, weights, work) };
        return;
    }
    blur_passes(pixels, side, radius, weights, work);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn blur_passes_avx2(
    pixels: &mut [u8],
    side: usize,
    radius: usize,
    weights: &[f32],
    work: &mut Vec<f32>,
) {
    blur_passes(pixels, side, radius, weights, work);
}

/// Horizontal then vertical pass with `2 radius + 1` taps and reflect padding.
#[inline(always)]
fn blur_passes(
    pixels: &mut [u8],
    side: usize,
    radius: usize,
    weights: &[f32],
    work: &mut Vec<f32>,
) {
    let reflect = |i: isize| reflect(i, side);
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
    use super::*;

    #[test]
    fn flat_images_are_unchanged() {
        let mut px = vec![77u8; 8 * 8 * 3];
        gaussian_blur(&mut px, 8, 1.5, Some(5), &mut Vec::new(), &mut Vec::new());
        assert!(px.iter().all(|&v| v == 77));
    }

    #[test]
    fn impulse_gives_the_normalised_kernel() {
        // A single bright pixel in the middle of a 9x9 image: the result is the outer
        // product of the 1-D kernel, times 255. sigma 1, k 3: weights e^-0.5, 1, e^-0.5.
        let mut px = vec![0u8; 9 * 9 * 3];
        let centre = (4 * 9 + 4) * 3;
        px[centre..centre + 3].fill(255);
        gaussian_blur(&mut px, 9, 1.0, Some(3), &mut Vec::new(), &mut Vec::new());
        let e = (-0.5f32).exp();
        let (w0, w1) = (1.0 / (1.0 + 2.0 * e), e / (1.0 + 2.0 * e));
        assert_eq!(px[centre], (255.0 * w0 * w0).round() as u8);
        assert_eq!(px[centre + 3], (255.0 * w0 * w1).round() as u8);
        assert_eq!(px[((3 * 9) + 3) * 3], (255.0 * w1 * w1).round() as u8);
        assert_eq!(px[(2 * 9 + 4) * 3], 0);
        // Mass is preserved up to rounding.
        let sum: u32 = px.iter().step_by(3).map(|&v| u32::from(v)).sum();
        assert!((253..=257).contains(&sum), "{sum}");
    }

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() {
        // 1-row structure is easier to see on a 3x3 image with k=3: left column value
        // mixes columns 1, 0, 1 (reflect), not 0, 0, 1 (replicate).
        let mut px = vec![0u8; 3 * 3 * 3];
        for y in 0..3 {
            px[(y * 3 + 1) * 3..(y * 3 + 1) * 3 + 3].fill(90);
        }
        gaussian_blur(&mut px, 3, 1.0, Some(3), &mut Vec::new(), &mut Vec::new());
        let e = (-0.5f32).exp();
        let edge = (90.0 * 2.0 * e / (1.0 + 2.0 * e)).round() as u8;
        assert_eq!(px[0], edge);
    }
}
