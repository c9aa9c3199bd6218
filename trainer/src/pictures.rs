//! Pictures a person looks at during and after a run: MAE reconstructions and the loss curve.
//!
//! Both are drawn on the host with the `image` crate (no plotting stack, no fonts from the
//! system): a reconstruction grid is a few samples as rows of *original | masked |
//! reconstruction* (the model's prediction for the masked patches pasted next to the visible
//! ones, as in the MAE paper's figures), and the loss curve is the raw per-step loss with a
//! smoothed line over it, on axes with numbered ticks drawn from a built-in 3x5 digit font.
//! Files are written under a temporary name and renamed, so a picture is never half there.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};

use crate::feeder::Normalize;

/// Errors writing a picture.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    /// Creating, writing or renaming the file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The picture file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// PNG encoding failed.
    #[error("encoding {path}")]
    Encode {
        /// The picture file.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: image::ImageError,
    },
    /// The tensors handed over do not fit together.
    #[error("reconstruction inputs disagree: {what}")]
    Shape {
        /// Which sizes disagree.
        what: String,
    },
}

/// Host copies of the first few samples of a step, enough to draw reconstructions.
///
/// # Shapes
/// `images: [n, 3, h, w]` normalised as fed to the model, `pred: [n, l, p*p*3]` in MAE's
/// patch layout (row-major patch grid; inside a patch `(row, col, channel)`), `mask: [n, l]`
/// with 1 = masked.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    /// Samples.
    pub n: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// Normalised images, NCHW.
    pub images: Vec<f32>,
    /// The model's per-patch prediction.
    pub pred: Vec<f32>,
    /// 1 = masked, 0 = visible.
    pub mask: Vec<f32>,
    /// Whether `pred` is in per-patch normalised units (MAE `norm_pix_loss`): then each
    /// predicted patch is mapped back with the mean and variance of the true patch, as the
    /// MAE visualisation notebook does.
    pub norm_pix: bool,
}

const GAP: u32 = 2;
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const MASKED: Rgb<u8> = Rgb([96, 96, 96]);

impl Reconstruction {
    fn check(&self) -> Result<(), PictureError> {
        let (n, h, w, p) = (self.n, self.height, self.width, self.patch);
        if p == 0 || h % p != 0 || w % p != 0 {
            return Err(PictureError::Shape {
                what: format!("image {h}x{w} is not a whole number of {p}-pixel patches"),
            });
        }
        let l = (h / p) * (w / p);
        let checks = [
            ("images", self.images.len(), n * 3 * h * w),
            ("pred", self.pred.len(), n * l * p * p * 3),
            ("mask", self.mask.len(), n * l),
        ];
        for (what, have, want) in checks {
            if have != want {
                return Err(PictureError::Shape {
                    what: format!("{what} has {have} values, expected {want}"),
                });
            }
        }
        Ok(())
    }

    /// The grid: one row per sample, columns original | masked | reconstruction.
    pub fn render(&self, normalize: Normalize) -> Result<RgbImage, PictureError> {
        self.check()?;
        let (n, h, w, p) = (self.n, self.height, self.width, self.patch);
        let (gh, gw) = (h / p, w / p);
        let l = gh * gw;
        let cols = 3u32;
        let cell_w = w as u32 + GAP;
        let cell_h = h as u32 + GAP;
        let mut img =
            RgbImage::from_pixel(cols * cell_w + GAP, n as u32 * cell_h + GAP, BACKGROUND);
        let to_u8 = |v: f32, c: usize| {
            ((v * normalize.std[c] + normalize.mean[c]) * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        };
        let mut patch_px = vec![0f32; p * p * 3];
        for s in 0..n {
            let image = &self.images[s * 3 * h * w..(s + 1) * 3 * h * w];
            let oy = GAP + s as u32 * cell_h;
            for pi in 0..l {
                let (py, px) = (pi / gw, pi % gw);
                let masked = self.mask[s * l + pi] > 0.5;
                // The true patch in (row, col, channel) order, like MAE's `patchify`.
                for i in 0..p {
                    for j in 0..p {
                        for c in 0..3 {
                            patch_px[(i * p + j) * 3 + c] =
                                image[(c * h + py * p + i) * w + px * p + j];
                        }
                    }
                }
                let pred = &self.pred[(s * l + pi) * p * p * 3..(s * l + pi + 1) * p * p * 3];
                let (mean, std) = if self.norm_pix {
                    let len = patch_px.len() as f32;
                    let mean = patch_px.iter().sum::<f32>() / len;
                    // torch's `var` is unbiased (n - 1), as in MAE's forward_loss.
                    let var = patch_px
                        .iter()
                        .map(|v| (v - mean) * (v - mean))
                        .sum::<f32>()
                        / (len - 1.0).max(1.0);
                    (mean, (var + 1e-6).sqrt())
                } else {
                    (0.0, 1.0)
                };
                for i in 0..p {
                    for j in 0..p {
                        let rgb =
                            |v: &dyn Fn(usize) -> f32| Rgb(std::array::from_fn(|c| to_u8(v(c), c)));
                        let orig = rgb(&|c| patch_px[(i * p + j) * 3 + c]);
                        let recon = if masked {
                            rgb(&|c| pred[(i * p + j) * 3 + c] * std + mean)
                        } else {
                            orig
                        };
                        let (x, y) = ((px * p + j) as u32, oy + (py * p + i) as u32);
                        img.put_pixel(GAP + x, y, orig);
                        img.put_pixel(GAP + cell_w + x, y, if masked { MASKED } else { orig });
                        img.put_pixel(GAP + 2 * cell_w + x, y, recon);
                    }
                }
            }
        }
        Ok(img)
    }
}

/// Write `img` as PNG at `path`, atomically (temporary name, fsync, rename).
pub fn save_png(img: &RgbImage, path: &Path) -> Result<(), PictureError> {
    let tmp = path.with_extension("png.tmp");
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| PictureError::Io {
            op,
            path: p,
            source,
        }
    };
    {
        let file = File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut out = BufWriter::new(file);
        img.write_to(&mut out, ImageFormat::Png)
            .map_err(|source| PictureError::Encode {
                path: path.to_path_buf(),
                source,
            })?;
        out.flush().map_err(io("writing", &tmp))?;
        let file = out.into_inner().map_err(|e| PictureError::Io {
            op: "writing",
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io("syncing", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("renaming", path))
}

/// Draw the loss curve of `points` (step, loss): the raw loss in light blue, an
/// exponential moving average in dark blue, axes with numbered ticks.
pub fn loss_curve(points: &[(u64, f64)], width: u32, height: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(width, height, BACKGROUND);
    let (left, right, top, bottom) = (70i64, 20i64, 20i64, 40i64);
    let (x0, x1, y0, y1) = (left, width as i64 - right, height as i64 - bottom, top);
    let finite: Vec<(u64, f64)> = points
        .iter()
        .copied()
        .filter(|(_, l)| l.is_finite())
        .collect();
    let axis = Rgb([0, 0, 0]);
    let grid = Rgb([225, 225, 225]);
    if finite.is_empty() || x1 <= x0 + 10 || y0 <= y1 + 10 {
        draw_line(&mut img, (x0, y0), (x1, y0), axis);
        draw_line(&mut img, (x0, y0), (x0, y1), axis);
        return img;
    }
    let smin = finite.first().map(|p| p.0).unwrap_or(0) as f64;
    let smax = (finite.last().map(|p| p.0).unwrap_or(0) as f64).max(smin + 1.0);
    let (mut lmin, mut lmax) = finite
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if lmax - lmin < 1e-12 {
        lmin -= 0.5;
        lmax += 0.5;
    }
    let pad = (lmax - lmin) * 0.05;
    let (lmin, lmax) = (lmin - pad, lmax + pad);
    let sx = |s: f64| x0 + ((s - smin) / (smax - smin) * (x1 - x0) as f64).round() as i64;
    let sy = |l: f64| y0 - ((l - lmin) / (lmax - lmin) * (y0 - y1) as f64).round() as i64;

    // Grid and ticks.
    for t in nice_ticks(lmin, lmax, 6) {
        let y = sy(t);
        draw_line(&mut img, (x0, y), (x1, y), grid);
        draw_line(&mut img, (x0 - 5, y), (x0, y), axis);
        let label = format_tick(t);
        let w = text_width(&label, 2);
        draw_text(&mut img, &label, x0 - 8 - w, y - 5, 2, axis);
    }
    for t in nice_ticks(smin, smax, 8) {
        let x = sx(t);
        draw_line(&mut img, (x, y0), (x, y1), grid);
        draw_line(&mut img, (x, y0), (x, y0 + 5), axis);
        let label = format_tick(t);
        let w = text_width(&label, 2);
        draw_text(&mut img, &label, x - w / 2, y0 + 10, 2, axis);
    }
    draw_line(&mut img, (x0, y0), (x1, y0), axis);
    draw_line(&mut img, (x0, y0), (x0, y1), axis);

    // Raw loss, then its moving average on top.
    let raw = Rgb([150, 190, 235]);
    let smooth = Rgb([20, 60, 160]);
    for pair in finite.windows(2) {
        draw_line(
            &mut img,
            (sx(pair[0].0 as f64), sy(pair[0].1)),
            (sx(pair[1].0 as f64), sy(pair[1].1)),
            raw,
        );
    }
    let alpha = (10.0 / finite.len() as f64).clamp(0.02, 1.0);
    let mut ema = finite[0].1;
    let mut prev = (sx(finite[0].0 as f64), sy(ema));
    for &(s, l) in &finite[1..] {
        ema += alpha * (l - ema);
        let next = (sx(s as f64), sy(ema));
        draw_line(&mut img, prev, next, smooth);
        draw_line(&mut img, (prev.0, prev.1 + 1), (next.0, next.1 + 1), smooth);
        prev = next;
    }
    img
}

/// About `count` round tick values covering `[lo, hi]` (1, 2 or 5 times a power of ten apart).
fn nice_ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    let raw = (hi - lo) / count.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return vec![lo];
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn format_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-3..1e6).contains(&a) {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{v:.1e}")
    }
}

/// 3x5 bitmaps (rows top to bottom, 3 bits each, MSB = left) for the tick labels.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        'e' => [0b000, 0b111, 0b111, 0b100, 0b111],
        _ => return None,
    })
}

fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * 4 * scale
}

fn draw_text(img: &mut RgbImage, s: &str, x: i64, y: i64, scale: i64, color: Rgb<u8>) {
    for (k, c) in s.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        let cx = x + k as i64 * 4 * scale;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits & (0b100 >> col) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            put(img, cx + col * scale + dx, y + r as i64 * scale + dy, color);
                        }
                    }
                }
            }
        }
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, color);
    }
}

/// Bresenham's line, clipped to the image.
fn draw_line(img: &mut RgbImage, (mut x, mut y): (i64, i64), (x1, y1): (i64, i64), color: Rgb<u8>) {
    let dx = (x1 - x).abs();
    let dy = -(y1 - y).abs();
    let (sx, sy) = (if x < x1 { 1 } else { -1 }, if y < y1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        put(img, x, y, color);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconstruction_pastes_predictions_into_masked_patches_only() {
        // One 4x4 image of 2x2 patches; patch 1 (top right) masked; prediction = 0 (the mean).
        let (h, w, p) = (4, 4, 2);
        let images = vec![1.0f32; 3 * h * w];
        let pred = vec![0.0f32; 4 * p * p * 3];
        let mask = vec![0.0, 1.0, 0.0, 0.0];
        let r = Reconstruction {
            n: 1,
            height: h,
            width: w,
            patch: p,
            images,
            pred,
            mask,
            norm_pix: false,
        };
        let img = r.render(Normalize::default()).unwrap();
        assert_eq!(img.dimensions(), (3 * (4 + GAP) + GAP, 4 + 2 * GAP));
        let cell = 4 + GAP;
        let orig = *img.get_pixel(GAP, GAP);
        assert_eq!(
            *img.get_pixel(GAP + cell + 3, GAP),
            MASKED,
            "masked patch greyed out"
        );
        assert_eq!(*img.get_pixel(GAP + cell, GAP), orig, "visible patch shown");
        let predicted = *img.get_pixel(GAP + 2 * cell + 3, GAP);
        // Prediction 0 in normalised units is the ImageNet mean colour.
        let mean = Normalize::default().mean.map(|m| (m * 255.0).round() as u8);
        assert_eq!(predicted, Rgb(mean));
        assert_eq!(
            *img.get_pixel(GAP + 2 * cell, GAP),
            orig,
            "visible patch kept in the reconstruction"
        );
    }

    #[test]
    fn mismatched_shapes_are_reported() {
        let r = Reconstruction {
            n: 1,
            height: 4,
            width: 4,
            patch: 2,
            images: vec![0.0; 10],
            pred: vec![],
            mask: vec![],
            norm_pix: false,
        };
        assert!(
            r.render(Normalize::default())
                .unwrap_err()
                .to_string()
                .contains("images has 10 values")
        );
    }

    #[test]
    fn loss_curve_draws_something_and_saves_atomically() {
        let points: Vec<(u64, f64)> = (0..50).map(|s| (s, 1.0 / (1.0 + s as f64) + 0.2)).collect();
        let img = loss_curve(&points, 400, 300);
        let coloured = img.pixels().filter(|p| p.0[2] > p.0[0] + 40).count();
        assert!(
            coloured > 100,
            "the curve is drawn ({coloured} blue pixels)"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        save_png(&img, &path).unwrap();
        assert_eq!(image::open(&path).unwrap().width(), 400);
        assert!(!dir.path().join("loss.png.tmp").exists());
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(format_tick(0.25), "0.25");
        assert_eq!(format_tick(1500.0), "1500");
    }
}
