//! Geometry: RandomResizedCrop and Resize+CenterCrop parameters, the crop-and-resize
//! itself, and horizontal flips.
//!
//! The crop box is computed in source pixels exactly as torchvision computes it
//! (`RandomResizedCrop.get_params`, `Resize` + `CenterCrop`); the crop and the resize are
//! then one call to `fast_image_resize`, which reads only the crop's pixels and writes the
//! output straight into the caller's slot. Its convolution filters widen with the
//! downscale factor (antialiasing) exactly as PIL's `Image.resize` does, and use the same
//! kernels (triangle for bilinear; Keys cubic with a = -0.5 for bicubic), so results match
//! PIL and torchvision's `antialias=True` up to rounding: against Pillow 13 the mean
//! difference is 0.13-0.16 levels and the maximum 1 level (`tests/transforms_reference.rs`).
//! RandomResizedCrop crops first (the filter clamps at the crop's edges, as torchvision's
//! `F.resized_crop`); Resize + CenterCrop reads beyond the box (as resizing the whole image
//! then cropping does). Mixing the two up costs up to 15 levels along the view's border.

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::Rng;

use super::TransformError;
use crate::decode::RgbImage;
use crate::recipe::Interpolation;

/// A crop rectangle in source pixels (torchvision's `i, j, h, w`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    /// Top row (torchvision `i`).
    pub top: f64,
    /// Left column (torchvision `j`).
    pub left: f64,
    /// Height in source pixels.
    pub height: f64,
    /// Width in source pixels.
    pub width: f64,
}

/// torchvision `RandomResizedCrop.get_params(img, scale, ratio)`.
///
/// Up to 10 tries: area fraction uniform in `scale`, aspect ratio (w/h) log-uniform in
/// `ratio`, `w = round(sqrt(area * ar))`, `h = round(sqrt(area / ar))` (Python's round:
/// half to even); accepted when it fits, with the corner uniform over all positions.
/// Otherwise the fallback: the largest centred crop whose aspect is clamped into `ratio`
/// (the whole image when its aspect is already inside).
pub fn random_resized_crop_box<R: Rng + ?Sized>(
    rng: &mut R,
    width: u32,
    height: u32,
    scale: [f64; 2],
    ratio: [f64; 2],
) -> CropBox {
    let (w_img, h_img) = (i64::from(width), i64::from(height));
    let area = (w_img * h_img) as f64;
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale[0], scale[1]);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even() as i64;
        let h = (target_area / aspect).sqrt().round_ties_even() as i64;
        if 0 < w && w <= w_img && 0 < h && h <= h_img {
            let top = rng.random_range(0..=h_img - h);
            let left = rng.random_range(0..=w_img - w);
            return CropBox {
                top: top as f64,
                left: left as f64,
                height: h as f64,
                width: w as f64,
            };
        }
    }
    let in_ratio = w_img as f64 / h_img as f64;
    let (w, h) = if in_ratio < ratio[0] {
        (w_img, (w_img as f64 / ratio[0]).round_ties_even() as i64)
    } else if in_ratio > ratio[1] {
        ((h_img as f64 * ratio[1]).round_ties_even() as i64, h_img)
    } else {
        (w_img, h_img)
    };
    CropBox {
        top: ((h_img - h) / 2) as f64,
        left: ((w_img - w) / 2) as f64,
        height: h as f64,
        width: w as f64,
    }
}

/// torchvision `Resize(resize)` (shorter side, long side truncated as torchvision does)
/// followed by `CenterCrop(size)`, expressed as one box in source pixels.
pub fn center_crop_box(width: u32, height: u32, resize: u32, size: u32) -> CropBox {
    let (w, h) = (f64::from(width), f64::from(height));
    let (new_w, new_h) = if width <= height {
        (f64::from(resize), (f64::from(resize) * h / w).floor())
    } else {
        ((f64::from(resize) * w / h).floor(), f64::from(resize))
    };
    let size = f64::from(size);
    let top = ((new_h - size) / 2.0).round_ties_even();
    let left = ((new_w - size) / 2.0).round_ties_even();
    let (sx, sy) = (w / new_w, h / new_h);
    CropBox {
        top: top * sy,
        left: left * sx,
        height: size * sy,
        width: size * sx,
    }
}

/// Python's `random.uniform` / torch's `uniform_`: `a + (b - a) * U[0, 1)`.
pub(crate) fn uniform<R: Rng + ?Sized>(rng: &mut R, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

/// How the resampling filter treats the crop's edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Edges {
    /// The crop is an image of its own: the filter clamps at its edges. torchvision's
    /// `F.resized_crop` (RandomResizedCrop) crops first, then resizes. Box must be integer.
    OfCrop,
    /// The filter reads the source beyond the crop: a resize of the whole image followed
    /// by a crop (`Resize` + `CenterCrop`), or Pillow's `resize(box=...)`.
    OfSource,
}

/// Cut `crop` from `image` and resize it to `size x size`, writing into `out`.
pub(crate) fn crop_resize(
    resizer: &mut Resizer,
    image: &RgbImage,
    crop: CropBox,
    edges: Edges,
    size: u32,
    interpolation: Interpolation,
    out: &mut [u8],
) -> Result<(), TransformError> {
    let src = ImageRef::new(image.width, image.height, &image.data, PixelType::U8x3)?;
    let mut dst = Image::from_slice_u8(size, size, out, PixelType::U8x3)?;
    let filter = match interpolation {
        Interpolation::Bilinear => FilterType::Bilinear,
        Interpolation::Bicubic => FilterType::CatmullRom,
    };
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    match edges {
        Edges::OfCrop => {
            let view = CroppedImage::new(
                &src,
                crop.left as u32,
                crop.top as u32,
                crop.width as u32,
                crop.height as u32,
            )?;
            resizer.resize(&view, &mut dst, &options)?;
        }
        Edges::OfSource => {
            let options = options.crop(crop.left, crop.top, crop.width, crop.height);
            resizer.resize(&src, &mut dst, &options)?;
        }
    }
    Ok(())
}

/// Mirror each row of a `width`-wide RGB image in place; `row` is scratch for one row.
///
/// Reversing 3-byte pixels one at a time cost 65 us per 224x224 view (a third of the
/// resize itself). Instead each row is copied aside and written back in blocks of 16
/// pixels whose fixed-index reversal the compiler turns into byte shuffles; with AVX2
/// (checked at run time) that is about 3x faster.
pub(crate) fn flip_horizontal(pixels: &mut [u8], width: usize, row: &mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { flip_rows_avx2(pixels, width, row) };
        return;
    }
    flip_rows(pixels, width, row);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn flip_rows_avx2(pixels: &mut [u8], width: usize, row: &mut Vec<u8>) {
    flip_rows(pixels, width, row);
}

/// Pixels per block of [`flip_rows`]; 48 bytes.
const FLIP_BLOCK: usize = 16;

#[inline(always)]
fn flip_rows(pixels: &mut [u8], width: usize, row: &mut Vec<u8>) {
    let stride = width * 3;
    row.resize(stride, 0);
    for out in pixels.chunks_exact_mut(stride) {
        row.copy_from_slice(out);
        // Blocks from the row's end go to the start of `out`, each reversed.
        let mut src = row.rchunks_exact(FLIP_BLOCK * 3);
        let mut dst = out.chunks_exact_mut(FLIP_BLOCK * 3);
        for (d, s) in (&mut dst).zip(&mut src) {
            let mut block = [0u8; FLIP_BLOCK * 3];
            for p in 0..FLIP_BLOCK {
                let from = (FLIP_BLOCK - 1 - p) * 3;
                block[3 * p] = s[from];
                block[3 * p + 1] = s[from + 1];
                block[3 * p + 2] = s[from + 2];
            }
            d.copy_from_slice(&block);
        }
        // The remaining (< 16) pixels: the row's first ones, reversed, at the end.
        let rest = src.remainder();
        for (d, s) in dst
            .into_remainder()
            .chunks_exact_mut(3)
            .zip(rest.chunks_exact(3).rev())
        {
            d.copy_from_slice(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::sample_rng;

    #[test]
    fn extreme_aspect_falls_back_to_a_centred_crop() {
        // 2000x20: no (scale, ratio) draw fits, so torchvision's fallback applies:
        // in_ratio 100 > 4/3 -> h = 20, w = round(20 * 4/3) = 27, centred.
        for id in 0..20 {
            let b = random_resized_crop_box(
                &mut sample_rng(0, 0, id),
                2000,
                20,
                [0.08, 1.0],
                [0.75, 4.0 / 3.0],
            );
            assert_eq!(
                b,
                CropBox {
                    top: 0.0,
                    left: 986.0,
                    height: 20.0,
                    width: 27.0
                }
            );
        }
        // And a tall strip: w = 20, h = round(20 / 0.75) = 27.
        let b = random_resized_crop_box(
            &mut sample_rng(0, 0, 0),
            20,
            2000,
            [0.08, 1.0],
            [0.75, 4.0 / 3.0],
        );
        assert_eq!(
            b,
            CropBox {
                top: 986.0,
                left: 0.0,
                height: 27.0,
                width: 20.0
            }
        );
    }

    #[test]
    fn crops_follow_the_scale_and_ratio_distributions() {
        let (w, h) = (500u32, 375u32);
        let n = 4000;
        let (mut log_ratio_sum, mut area_sum) = (0.0, 0.0);
        for id in 0..n {
            let b = random_resized_crop_box(
                &mut sample_rng(1, 0, id),
                w,
                h,
                [0.2, 1.0],
                [0.75, 4.0 / 3.0],
            );
            assert!(b.left >= 0.0 && b.top >= 0.0);
            assert!(b.left + b.width <= f64::from(w) && b.top + b.height <= f64::from(h));
            let frac = b.width * b.height / f64::from(w) / f64::from(h);
            // Rounding of w and h moves the area a little outside the nominal range.
            assert!((0.18..=1.0).contains(&frac), "{frac}");
            log_ratio_sum += (b.width / b.height).ln();
            area_sum += frac;
        }
        // Reference: 400k draws of a Python transcription of torchvision's get_params
        // (Python's `random`): mean ln(w/h) 0.0372 (sd 0.163), mean area 0.4951 (sd 0.186).
        // Rejection of large crops skews both away from the nominal 0 and 0.6. Tolerances
        // are about 5 standard errors for 4000 draws.
        let mean_log_ratio = log_ratio_sum / n as f64;
        assert!((mean_log_ratio - 0.0372).abs() < 0.013, "{mean_log_ratio}");
        let mean_area = area_sum / n as f64;
        assert!((mean_area - 0.4951).abs() < 0.015, "{mean_area}");
    }

    #[test]
    fn crops_are_uniform_over_positions() {
        // scale fixed to 0.25 of a 100x100 image with ratio 1: always 50x50, corner uniform
        // over 0..=50 in both directions.
        let mut lefts = [0u32; 51];
        for id in 0..5100 {
            let b = random_resized_crop_box(
                &mut sample_rng(2, 0, id),
                100,
                100,
                [0.25, 0.25],
                [1.0, 1.0],
            );
            assert_eq!((b.width, b.height), (50.0, 50.0));
            lefts[b.left as usize] += 1;
        }
        assert!(lefts.iter().all(|&c| (50..160).contains(&c)), "{lefts:?}");
    }

    #[test]
    fn center_crop_box_matches_torchvision_arithmetic() {
        // 500x375 -> Resize(256) -> 341x256 -> CenterCrop(224): top 16, left round(58.5)=58.
        let b = center_crop_box(500, 375, 256, 224);
        let s = 375.0 / 256.0;
        assert!((b.top - 16.0 * s).abs() < 1e-9);
        assert!((b.left - 58.0 * 500.0 / 341.0).abs() < 1e-9);
        assert!((b.height - 224.0 * s).abs() < 1e-9);
    }

    #[test]
    fn flip_mirrors_rows() {
        let mut px: Vec<u8> = (0..9).collect();
        flip_horizontal(&mut px, 3, &mut Vec::new());
        assert_eq!(px, [6, 7, 8, 3, 4, 5, 0, 1, 2]);
    }

    #[test]
    fn flip_matches_pixel_reversal_at_every_width() {
        // Widths below, at and around the 16-pixel block, and a view size.
        let mut row = Vec::new();
        for width in [1usize, 2, 15, 16, 17, 31, 32, 33, 47, 96, 224] {
            let height = 3;
            let original: Vec<u8> = (0..width * height * 3)
                .map(|i| (i * 7 % 251) as u8)
                .collect();
            let mut expected = original.clone();
            for r in expected.chunks_exact_mut(width * 3) {
                r.as_chunks_mut::<3>().0.reverse();
            }
            let mut flipped = original.clone();
            flip_horizontal(&mut flipped, width, &mut row);
            assert_eq!(flipped, expected, "width {width}");
            flip_rows(&mut flipped, width, &mut row);
            assert_eq!(flipped, original, "portable path, width {width}");
        }
    }
}
