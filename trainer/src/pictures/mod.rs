//! Pictures a person looks at during and after a run: MAE reconstructions and plots.
//!
//! A reconstruction grid is a few samples as rows of *original | masked | reconstruction*
//! (the model's prediction for the masked patches pasted next to the visible ones, as in the
//! MAE paper's figures), upscaled nearest-neighbour to a visible size under column headings
//! ([`grid`]). Curves (loss, learning rate, throughput; one run or several overlaid) are
//! drawn with `plotters` ([`plot`]): title, labelled axes, legend, a debiased smoothed line,
//! PNG for the run directory and SVG for `tessera report`. Text uses DejaVu Sans embedded
//! in the program, so nothing depends on the fonts a machine has. Files are written under a
//! temporary name and renamed, so a picture is never half there.

pub mod grid;
pub mod plot;

use std::fs::File;
use std::io::Write;
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
    /// The plotting library failed to draw.
    #[error("drawing the plot `{title}`: {message}")]
    Plot {
        /// The plot's title.
        title: String,
        /// The library's error.
        message: String,
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

    /// The grid at one image pixel per pixel: one row per sample, columns original |
    /// masked | reconstruction.
    pub fn render_raw(&self, normalize: Normalize) -> Result<RgbImage, PictureError> {
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

    /// The grid of [`Self::render_raw`], upscaled to cells of at least
    /// [`grid::MIN_CELL`] pixels, under the column headings.
    pub fn render(&self, normalize: Normalize) -> Result<RgbImage, PictureError> {
        let raw = self.render_raw(normalize)?;
        let cell = self.height.max(self.width) as u32;
        grid::with_headings(
            &raw,
            &["original", "masked", "reconstruction"],
            grid::scale_for(cell),
        )
    }
}

/// `img` as a PNG file's bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, PictureError> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .map_err(|source| PictureError::Encode {
            path: PathBuf::from("<memory>"),
            source,
        })?;
    Ok(out.into_inner())
}

/// Write `img` as PNG at `path`, atomically (temporary name, fsync, rename).
pub fn save_png(img: &RgbImage, path: &Path) -> Result<(), PictureError> {
    let png = encode_png(img).map_err(|e| match e {
        PictureError::Encode { source, .. } => PictureError::Encode {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    })?;
    write_atomically(&png, path)
}

/// Write `bytes` (an encoded picture) at `path`: temporary name, fsync, rename.
pub fn write_atomically(bytes: &[u8], path: &Path) -> Result<(), PictureError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| PictureError::Io {
            op,
            path: p,
            source,
        }
    };
    {
        let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
        file.write_all(bytes).map_err(io("writing", &tmp))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io("renaming", path))
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
        let img = r.render_raw(Normalize::default()).unwrap();
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
    fn render_upscales_under_headings_and_saves_atomically() {
        let (h, w, p) = (8, 8, 4);
        let r = Reconstruction {
            n: 2,
            height: h,
            width: w,
            patch: p,
            images: vec![0.5; 2 * 3 * h * w],
            pred: vec![0.0; 2 * 4 * p * p * 3],
            mask: vec![0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0],
            norm_pix: false,
        };
        let raw = r.render_raw(Normalize::default()).unwrap();
        let big = r.render(Normalize::default()).unwrap();
        let scale = grid::scale_for(8);
        assert_eq!(scale, 8, "8-pixel cells get the largest factor");
        assert_eq!(big.width(), raw.width() * scale);
        assert_eq!(big.height(), raw.height() * scale + grid::HEADING);
        // Nearest neighbour: every raw pixel becomes a scale x scale block of its colour.
        let (x, y) = (GAP + 2 * (8 + GAP) + 5, GAP + 3);
        let want = *raw.get_pixel(x, y);
        for dy in 0..scale {
            for dx in 0..scale {
                let got = *big.get_pixel(x * scale + dx, grid::HEADING + y * scale + dy);
                assert_eq!(got, want);
            }
        }
        // The heading band has dark text pixels.
        let band_text = (0..big.width())
            .flat_map(|x| (0..grid::HEADING).map(move |y| (x, y)))
            .filter(|&(x, y)| big.get_pixel(x, y).0.iter().all(|&c| c < 100))
            .count();
        assert!(band_text > 50, "headings drawn ({band_text} dark pixels)");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        save_png(&big, &path).unwrap();
        assert_eq!(image::open(&path).unwrap().width(), big.width());
        assert!(!dir.path().join("grid.png.tmp").exists());
    }
}
