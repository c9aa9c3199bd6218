//! Picture grids a person can see: nearest-neighbour upscaling (pixels stay square and
//! sharp, as for any image of a few dozen pixels) and a band of column headings on top.

use image::imageops::{FilterType, resize};
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::PictureError;
use super::plot::{FONT, ensure_fonts};

/// The smallest side, in pixels, that a grid cell is upscaled to.
pub const MIN_CELL: u32 = 128;
/// Height of the heading band, in pixels.
pub const HEADING: u32 = 28;
/// Largest upscaling factor.
const MAX_SCALE: u32 = 8;

/// The whole-number factor that brings a cell of `side` pixels to at least [`MIN_CELL`]
/// (1 for cells already that large; at most 8).
pub fn scale_for(side: u32) -> u32 {
    MIN_CELL.div_ceil(side.max(1)).clamp(1, MAX_SCALE)
}

/// `grid` (equal-width columns, one per heading, separated and framed by equal gaps)
/// upscaled `scale` times, nearest neighbour, under a white band with `headings` centred
/// over their columns.
pub fn with_headings(
    grid: &RgbImage,
    headings: &[&str],
    scale: u32,
) -> Result<RgbImage, PictureError> {
    let scale = scale.max(1);
    let (w, h) = (grid.width() * scale, grid.height() * scale);
    let big = resize(grid, w, h, FilterType::Nearest);
    let mut out = RgbImage::from_pixel(w, h + HEADING, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, &big, 0, i64::from(HEADING));
    if headings.is_empty() {
        return Ok(out);
    }
    ensure_fonts();
    let (width, height) = out.dimensions();
    let mut buf = out.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        let style = TextStyle::from((FONT, 16).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center));
        let column = f64::from(width) / headings.len() as f64;
        for (i, text) in headings.iter().enumerate() {
            let x = (column * (i as f64 + 0.5)) as i32;
            root.draw_text(text, &style, (x, HEADING as i32 / 2))
                .map_err(|e| PictureError::Plot {
                    title: "column headings".into(),
                    message: e.to_string(),
                })?;
        }
        root.present().map_err(|e| PictureError::Plot {
            title: "column headings".into(),
            message: e.to_string(),
        })?;
    }
    RgbImage::from_raw(width, height, buf).ok_or_else(|| PictureError::Shape {
        what: "heading buffer size".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_reaches_the_minimum_cell() {
        assert_eq!(scale_for(32), 4);
        assert_eq!(scale_for(30), 5);
        assert_eq!(scale_for(224), 1);
        assert_eq!(scale_for(4), MAX_SCALE);
    }
}
