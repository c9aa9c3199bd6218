//! Colour transforms with torchvision's formulas: ColorJitter, RandomGrayscale, Solarize.
//!
//! ColorJitter works on a float copy of the view (scratch, reused) in [0, 1] and clamps
//! after every step, like torchvision on float tensors, and rounds once at the end.
//! torchvision on u8 tensors (and PIL) re-quantise after each of the four steps; the
//! difference is at most about one level per step.
//!
//! Greyscale uses ITU-R 601-2 luma, `L = 0.299 R + 0.587 G + 0.114 B` (PIL's `convert("L")`
//! and torchvision's `rgb_to_grayscale`, which writes 0.2989).

use rand::Rng;
use rand::seq::SliceRandom;

use super::crop::uniform;

/// Luma weights (ITU-R 601-2).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// ColorJitter's factor ranges, as torchvision derives them from the constructor
/// arguments: brightness/contrast/saturation `b` give `[max(0, 1 - b), 1 + b]`, hue `h`
/// gives `[-h, h]`; a zero argument disables that step (and draws nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorJitter {
    /// Brightness strength (0 = off).
    pub brightness: f64,
    /// Contrast strength (0 = off).
    pub contrast: f64,
    /// Saturation strength (0 = off).
    pub saturation: f64,
    /// Hue strength in [0, 0.5] (0 = off).
    pub hue: f64,
}

/// The factors drawn for one application of [`ColorJitter`], in application order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterDraw {
    /// The order the four steps run in (0 brightness, 1 contrast, 2 saturation, 3 hue).
    pub order: [u8; 4],
    /// Brightness factor (1 = unchanged).
    pub brightness: Option<f32>,
    /// Contrast factor (1 = unchanged).
    pub contrast: Option<f32>,
    /// Saturation factor (1 = unchanged).
    pub saturation: Option<f32>,
    /// Hue shift in turns (0 = unchanged).
    pub hue: Option<f32>,
}

impl ColorJitter {
    /// torchvision `ColorJitter.get_params`: a random permutation of the four steps, then
    /// each enabled factor uniform in its range.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> JitterDraw {
        let mut order = [0u8, 1, 2, 3];
        order.shuffle(rng);
        let factor = |rng: &mut R, strength: f64| {
            (strength > 0.0).then(|| uniform(rng, (1.0 - strength).max(0.0), 1.0 + strength) as f32)
        };
        let brightness = factor(rng, self.brightness);
        let contrast = factor(rng, self.contrast);
        let saturation = factor(rng, self.saturation);
        let hue = (self.hue > 0.0).then(|| uniform(rng, -self.hue, self.hue) as f32);
        JitterDraw {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }
}

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
///
/// The loops are compiled twice: for baseline x86-64 (SSE2, 4 lanes) and for AVX2 (8
/// lanes), chosen at run time. Rust never fuses a multiply and an add on its own, so both
/// give the same bits.
pub fn apply_jitter(draw: &JitterDraw, pixels: &mut [u8], work: &mut Vec<f32>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { apply_jitter_avx2(draw, pixels, work) };
        return;
    }
    jitter_passes(draw, pixels, work);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn apply_jitter_avx2(draw: &JitterDraw, pixels: &mut [u8], work: &mut Vec<f32>) {
    jitter_passes(draw, pixels, work);
}

/// The two passes of [`apply_jitter`], inlined into each instruction-set version.
#[inline(always)]
fn jitter_passes(draw: &JitterDraw, pixels: &mut [u8], work: &mut Vec<f32>) {
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
    #[inline(always)]
    fn load_u8(&mut self, px: &[u8]) -> usize {
        let n = px.len() / 3;
        for (i, p) in px.chunks_exact(3).enumerate() {
            self.r[i] = f32::from(p[0]) * (1.0 / 255.0);
            self.g[i] = f32::from(p[1]) * (1.0 / 255.0);
            self.b[i] = f32::from(p[2]) * (1.0 / 255.0);
        }
        n
    }

    #[inline(always)]
    fn load_f32(&mut self, px: &[f32]) -> usize {
        let n = px.len() / 3;
        for (i, p) in px.chunks_exact(3).enumerate() {
            (self.r[i], self.g[i], self.b[i]) = (p[0], p[1], p[2]);
        }
        n
    }

    #[inline(always)]
    fn store_u8(&self, px: &mut [u8], n: usize) {
        // Round half up with a truncating cast (values >= 0): `f32::round` is a libm
        // call on baseline x86-64.
        for (i, p) in px.chunks_exact_mut(3).take(n).enumerate() {
            p[0] = (self.r[i] * 255.0 + 0.5) as u8;
            p[1] = (self.g[i] * 255.0 + 0.5) as u8;
            p[2] = (self.b[i] * 255.0 + 0.5) as u8;
        }
    }

    #[inline(always)]
    fn store_f32(&self, px: &mut [f32], n: usize) {
        for (i, p) in px.chunks_exact_mut(3).take(n).enumerate() {
            p.copy_from_slice(&[self.r[i], self.g[i], self.b[i]]);
        }
    }

    #[inline(always)]
    fn luma_sum(&self, n: usize) -> f32 {
        (0..n)
            .map(|i| LUMA[0] * self.r[i] + LUMA[1] * self.g[i] + LUMA[2] * self.b[i])
            .sum()
    }

    /// Brightness (0), saturation (2) and hue (3) steps, in `steps` order.
    #[inline(always)]
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

/// torchvision `adjust_hue` on one float pixel: RGB -> HSV (`_rgb2hsv`), `h = (h + shift)
/// mod 1`, HSV -> RGB (`_hsv2rgb`).
pub fn shift_hue(px: &mut [f32], shift: f32) {
    let [r, g, b] = hue_shifted(px[0], px[1], px[2], shift);
    px[0] = r;
    px[1] = g;
    px[2] = b;
}

/// The hue rotation of [`shift_hue`], branch-free so that loops over it vectorise.
///
/// In HSV terms V = max and S = (max - min) / max are unchanged, so `_hsv2rgb`'s
/// `p = v (1 - s)` is the old minimum, `q = v (1 - s f) = max - c f` and
/// `t = v (1 - s (1 - f)) = min + c f` with chroma `c = max - min`; only the sextant and
/// the position in it (`f`) change. No divisions but `1 / c`.
#[inline(always)]
pub(crate) fn hue_shifted(r: f32, g: f32, b: f32, shift: f32) -> [f32; 3] {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let chroma = maxc - minc;
    let inv = if chroma > 0.0 { 1.0 / chroma } else { 0.0 };
    // torchvision's `_rgb2hsv`: which channel is the maximum picks the sextant base.
    let is_r = maxc == r;
    let is_g = !is_r && maxc == g;
    let num = if is_r {
        g - b
    } else if is_g {
        b - r
    } else {
        r - g
    };
    let base = if is_r {
        0.0
    } else if is_g {
        2.0
    } else {
        4.0
    };
    // Hue in sextants, shifted, reduced into [0, 6): base + num/c is in [-1, 5], the
    // shift in [-3, 3], so adding 12 keeps it positive for the truncating reduction.
    let h = base + num * inv + 6.0 * shift + 12.0;
    let h = h - 6.0 * (((h * (1.0 / 6.0)) as i32) as f32);
    let h = if h >= 6.0 { h - 6.0 } else { h };
    let sector = (h as i32) as f32;
    let f = h - sector;
    let t = minc + chroma * f;
    let q = maxc - chroma * f;
    let pick = |max_in: [f32; 2], t_in: f32, q_in: f32| {
        if sector == max_in[0] || sector == max_in[1] {
            maxc
        } else if sector == t_in {
            t
        } else if sector == q_in {
            q
        } else {
            minc
        }
    };
    // Sextant -> (r, g, b): 0 (v,t,p) 1 (q,v,p) 2 (p,v,t) 3 (p,q,v) 4 (t,p,v) 5 (v,p,q).
    [
        pick([0.0, 5.0], 4.0, 1.0),
        pick([1.0, 2.0], 0.0, 3.0),
        pick([3.0, 4.0], 2.0, 5.0),
    ]
}

/// Replace every pixel by its luma in all three channels, with PIL's fixed-point
/// rounding (`(19595 R + 38470 G + 7471 B + 0x8000) >> 16`, i.e. 0.299/0.587/0.114).
pub fn grayscale(pixels: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { grayscale_avx2(pixels) };
        return;
    }
    grayscale_loop(pixels);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn grayscale_avx2(pixels: &mut [u8]) {
    grayscale_loop(pixels);
}

#[inline(always)]
fn grayscale_loop(pixels: &mut [u8]) {
    for px in pixels.chunks_exact_mut(3) {
        let l = (19595 * u32::from(px[0])
            + 38470 * u32::from(px[1])
            + 7471 * u32::from(px[2])
            + 0x8000)
            >> 16;
        px.fill(l as u8);
    }
}

/// PIL `ImageOps.solarize`: every value `>= threshold` becomes `255 - value`.
pub fn solarize(pixels: &mut [u8], threshold: u8) {
    for v in pixels {
        if *v >= threshold {
            *v = 255 - *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::sample_rng;
    use rand::Rng;

    fn only(
        step: u8,
        brightness: Option<f32>,
        contrast: Option<f32>,
        saturation: Option<f32>,
        hue: Option<f32>,
    ) -> JitterDraw {
        let mut order = [0, 1, 2, 3];
        order.rotate_left(step as usize);
        JitterDraw {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        }
    }

    #[test]
    fn brightness_scales_and_clamps() {
        let mut px = [100u8, 200, 10];
        apply_jitter(
            &only(0, Some(1.5), None, None, None),
            &mut px,
            &mut Vec::new(),
        );
        assert_eq!(px, [150, 255, 15]);
    }

    #[test]
    fn contrast_blends_with_the_mean_grey() {
        // Two pixels: black and white. Luma mean = 0.5 (in [0, 1]).
        let mut px = [0u8, 0, 0, 255, 255, 255];
        apply_jitter(
            &only(1, None, Some(0.5), None, None),
            &mut px,
            &mut Vec::new(),
        );
        // 0.5 * 0 + 0.5 * 127.5 = 63.75 -> 64; 0.5 * 255 + 63.75 = 191.25 -> 191.
        assert_eq!(px, [64, 64, 64, 191, 191, 191]);
    }

    #[test]
    fn saturation_zero_is_greyscale() {
        let mut a = [200u8, 100, 50];
        apply_jitter(
            &only(2, None, None, Some(0.0), None),
            &mut a,
            &mut Vec::new(),
        );
        // 0.299*200 + 0.587*100 + 0.114*50 = 124.2
        assert_eq!(a, [124, 124, 124]);
    }

    #[test]
    fn hue_shift_rotates_primaries() {
        // A third of a turn maps red to green and green to blue.
        let mut px = [255u8, 0, 0, 0, 255, 0];
        apply_jitter(
            &only(3, None, None, None, Some(1.0 / 3.0)),
            &mut px,
            &mut Vec::new(),
        );
        assert_eq!(px, [0, 255, 0, 0, 0, 255]);
        // A sixth: red -> yellow.
        let mut px = [255u8, 0, 0];
        apply_jitter(
            &only(3, None, None, None, Some(1.0 / 6.0)),
            &mut px,
            &mut Vec::new(),
        );
        assert_eq!(px, [255, 255, 0]);
        // Grey is unchanged.
        let mut px = [90u8, 90, 90];
        apply_jitter(
            &only(3, None, None, None, Some(0.3)),
            &mut px,
            &mut Vec::new(),
        );
        assert_eq!(px, [90, 90, 90]);
    }

    #[test]
    fn hue_round_trip_is_identity() {
        let mut px = [0.2f32, 0.7, 0.4];
        shift_hue(&mut px, 0.0);
        assert!(
            (px[0] - 0.2).abs() < 1e-6 && (px[1] - 0.7).abs() < 1e-6 && (px[2] - 0.4).abs() < 1e-6
        );
    }

    #[test]
    fn draws_cover_the_ranges_and_permute() {
        let jitter = ColorJitter {
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
        };
        let mut firsts = [0u32; 4];
        for id in 0..2000 {
            let d = jitter.draw(&mut sample_rng(0, 0, id));
            let b = d.brightness.unwrap();
            assert!((0.6..1.4).contains(&b));
            assert!((0.8..1.2).contains(&d.saturation.unwrap()));
            assert!((-0.1..0.1).contains(&d.hue.unwrap()));
            let mut sorted = d.order;
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3]);
            firsts[d.order[0] as usize] += 1;
        }
        assert!(
            firsts.iter().all(|&c| (400..600).contains(&c)),
            "{firsts:?}"
        );
        let off = ColorJitter {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
        };
        let d = off.draw(&mut sample_rng(0, 0, 0));
        assert_eq!(
            (d.brightness, d.contrast, d.saturation, d.hue),
            (None, None, None, None)
        );
    }

    /// torchvision's `_rgb2hsv`, `(h + shift) % 1`, `_hsv2rgb`, transcribed literally in f64.
    fn torchvision_hue(px: [f64; 3], shift: f64) -> [f64; 3] {
        let [r, g, b] = px;
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let eqc = maxc == minc;
        let cr = maxc - minc;
        let s = cr / if eqc { 1.0 } else { maxc };
        let div = if eqc { 1.0 } else { cr };
        let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
        let hr = if maxc == r { bc - gc } else { 0.0 };
        let hg = if maxc == g && maxc != r {
            2.0 + rc - bc
        } else {
            0.0
        };
        let hb = if maxc != g && maxc != r {
            4.0 + gc - rc
        } else {
            0.0
        };
        let h = ((hr + hg + hb) / 6.0 + 1.0) % 1.0;
        let h = (h + shift).rem_euclid(1.0);
        let v = maxc;
        let i = (h * 6.0).floor();
        let f = h * 6.0 - i;
        let p = (v * (1.0 - s)).clamp(0.0, 1.0);
        let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
        let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
        match (i as i64).rem_euclid(6) {
            0 => [v, t, p],
            1 => [q, v, p],
            2 => [p, v, t],
            3 => [p, q, v],
            4 => [t, p, v],
            _ => [v, p, q],
        }
    }

    #[test]
    fn hue_matches_torchvision_formulas() {
        let mut rng = sample_rng(5, 0, 0);
        for _ in 0..20_000 {
            let px: [f32; 3] = [rng.random(), rng.random(), rng.random()];
            let px = if rng.random::<f32>() < 0.1 {
                [px[0], px[0], px[1]]
            } else {
                px
            }; // ties
            let shift = rng.random_range(-0.5f32..=0.5);
            let ours = hue_shifted(px[0], px[1], px[2], shift);
            let reference = torchvision_hue(px.map(f64::from), f64::from(shift));
            for c in 0..3 {
                assert!(
                    (f64::from(ours[c]) - reference[c]).abs() < 1e-5,
                    "{px:?} {shift}: {ours:?} vs {reference:?}"
                );
            }
        }
    }

    /// The formulas applied literally, one full-image pass per step, in f64.
    fn naive_jitter(draw: &JitterDraw, pixels: &[u8]) -> Vec<u8> {
        let mut img: Vec<[f64; 3]> = pixels
            .chunks_exact(3)
            .map(|p| [p[0], p[1], p[2]].map(|v| f64::from(v) / 255.0))
            .collect();
        let grey = |p: &[f64; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        for step in draw.order {
            match step {
                0 => {
                    if let Some(f) = draw.brightness {
                        img.iter_mut()
                            .for_each(|p| *p = p.map(|v| (v * f64::from(f)).clamp(0.0, 1.0)));
                    }
                }
                1 => {
                    if let Some(f) = draw.contrast {
                        let f = f64::from(f);
                        let mean = img.iter().map(grey).sum::<f64>() / img.len() as f64;
                        img.iter_mut().for_each(|p| {
                            *p = p.map(|v| (f * v + (1.0 - f) * mean).clamp(0.0, 1.0))
                        });
                    }
                }
                2 => {
                    if let Some(f) = draw.saturation {
                        let f = f64::from(f);
                        img.iter_mut().for_each(|p| {
                            let g = grey(p);
                            *p = p.map(|v| (f * v + (1.0 - f) * g).clamp(0.0, 1.0));
                        });
                    }
                }
                _ => {
                    if let Some(h) = draw.hue {
                        img.iter_mut()
                            .for_each(|p| *p = torchvision_hue(*p, f64::from(h)));
                    }
                }
            }
        }
        img.iter()
            .flat_map(|p| p.map(|v| (v * 255.0).round() as u8))
            .collect()
    }

    #[test]
    fn fused_passes_equal_the_step_by_step_formulas() {
        let jitter = ColorJitter {
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
        };
        let mut rng = sample_rng(9, 0, 0);
        let pixels: Vec<u8> = (0..64 * 3).map(|_| rng.random()).collect();
        for id in 0..48 {
            let draw = jitter.draw(&mut sample_rng(1, 0, id));
            let mut fused = pixels.clone();
            apply_jitter(&draw, &mut fused, &mut Vec::new());
            let naive = naive_jitter(&draw, &pixels);
            let max = fused
                .iter()
                .zip(&naive)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(max <= 1, "order {:?}: max diff {max}", draw.order);
        }
    }

    #[test]
    fn grayscale_uses_601_luma_in_all_channels() {
        let mut px = [255u8, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30];
        grayscale(&mut px);
        // 76.245, 149.685, 29.07, 0.299*10 + 0.587*20 + 0.114*30 = 18.15
        assert_eq!(px, [76, 76, 76, 150, 150, 150, 29, 29, 29, 18, 18, 18]);
    }

    #[test]
    fn solarize_inverts_from_the_threshold() {
        let mut px = [0u8, 127, 128, 255];
        solarize(&mut px, 128);
        assert_eq!(px, [0, 127, 127, 0]);
    }
}
