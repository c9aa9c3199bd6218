//! `tessera preview`: what the model will see, as one picture.
//!
//! Runs the real loader (same decode, views, masks and randomness as training) for one
//! batch and lays it out as a grid: one row per sample, one column per view, every view
//! scaled to a common height, masked patches greyed out so the visible ones stand out.

use image::{Rgb, RgbImage};

use crate::batch::{Batch, MaskBatch};
use crate::loader::{Loader, LoaderError, LoaderOptions};

/// Height of every tile in the grid, pixels.
pub const TILE_HEIGHT: u32 = 160;
/// Gap between tiles, pixels.
const GAP: u32 = 6;

/// Why no preview could be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The loader failed to start or stopped with an error.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// Every sample of the shards was rejected (or there were none).
    #[error("the shards gave no usable sample to preview")]
    NoSamples,
    /// The PNG could not be written.
    #[error("writing {}", path.display())]
    Write {
        path: std::path::PathBuf,
        source: image::ImageError,
    },
    /// The finished PNG could not be renamed into place.
    #[error("renaming {} into place", path.display())]
    Rename {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Write `grid` as a PNG at `path`, under a temporary name first so a half-written file
/// never appears.
pub fn write_png(grid: &RgbImage, path: &std::path::Path) -> Result<(), PreviewError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    grid.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|source| PreviewError::Write {
            path: tmp.clone(),
            source,
        })?;
    std::fs::rename(&tmp, path).map_err(|source| PreviewError::Rename {
        path: path.to_path_buf(),
        source,
    })
}

/// Draw the first `samples` samples of `options` (its batch size is replaced).
pub fn preview(mut options: LoaderOptions, samples: usize) -> Result<RgbImage, PreviewError> {
    options.graph.batch_size = samples.max(1);
    options.graph.epochs = Some(1);
    options.graph.ordered = true;
    options.graph.prefetch_batches = 1;
    let mut loader = Loader::start(options)?;
    let batch = loader.next_batch().ok_or(PreviewError::NoSamples)??;
    Ok(draw(&batch))
}

/// Lay out a batch: rows = samples, columns = views.
pub fn draw(batch: &Batch) -> RgbImage {
    let n = batch.labels.len();
    let widths: Vec<u32> = batch
        .views
        .iter()
        .map(|v| (v.width as u32 * TILE_HEIGHT).div_ceil(v.height.max(1) as u32))
        .collect();
    let width = GAP + widths.iter().map(|w| w + GAP).sum::<u32>();
    let height = GAP + n as u32 * (TILE_HEIGHT + GAP);
    let mut grid = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for s in 0..n {
        let top = GAP + s as u32 * (TILE_HEIGHT + GAP);
        let mut left = GAP;
        for (v, view) in batch.views.iter().enumerate() {
            let per_sample = view.height * view.width * 3;
            let pixels = view.data[s * per_sample..(s + 1) * per_sample].to_vec();
            let Some(mut tile) = RgbImage::from_raw(view.width as u32, view.height as u32, pixels)
            else {
                continue;
            };
            if let Some(Some(mask)) = batch.masks.get(v) {
                grey_masked_patches(&mut tile, mask, s);
            }
            let scaled = image::imageops::resize(
                &tile,
                widths[v],
                TILE_HEIGHT,
                image::imageops::FilterType::Triangle,
            );
            image::imageops::replace(&mut grid, &scaled, left as i64, top as i64);
            left += widths[v] + GAP;
        }
    }
    grid
}

/// Grey out (blend towards mid-grey with a blue tint) the masked patches of sample `s`.
fn grey_masked_patches(tile: &mut RgbImage, mask: &MaskBatch, s: usize) {
    let side = (mask.num_patches as f64).sqrt().round() as u32;
    if side == 0 || side * side != mask.num_patches as u32 {
        return;
    }
    let (w, h) = tile.dimensions();
    let (pw, ph) = (w / side, h / side);
    let sample = &mask.mask[s * mask.num_patches..(s + 1) * mask.num_patches];
    for (i, &m) in sample.iter().enumerate() {
        if m == 0 {
            continue;
        }
        let (px, py) = (i as u32 % side, i as u32 / side);
        for y in py * ph..(py + 1) * ph {
            for x in px * pw..(px + 1) * pw {
                let p = tile.get_pixel_mut(x, y);
                let tint = [90u16, 90, 140];
                for (channel, tint) in p.0.iter_mut().zip(tint) {
                    *channel = ((*channel as u16 + 2 * tint) / 3) as u8;
                }
            }
        }
    }
}
