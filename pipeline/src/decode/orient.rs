//! EXIF orientation: the eight rotations and flips, applied to a decoded [`RgbImage`].

use image::metadata::Orientation;

use super::RgbImage;

pub(super) fn exif_value(orientation: Orientation) -> u8 {
    match orientation {
        Orientation::NoTransforms => 1,
        Orientation::FlipHorizontal => 2,
        Orientation::Rotate180 => 3,
        Orientation::FlipVertical => 4,
        Orientation::Rotate90FlipH => 5,
        Orientation::Rotate90 => 6,
        Orientation::Rotate270FlipH => 7,
        Orientation::Rotate270 => 8,
    }
}

/// Write `src` transformed by `orientation` into `out` (EXIF semantics: the result is
/// what a viewer displays).
pub(super) fn orient(src: &RgbImage, orientation: Orientation, out: &mut RgbImage) {
    let (w, h) = (src.width as usize, src.height as usize);
    let swaps = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let (ow, oh) = if swaps { (h, w) } else { (w, h) };
    out.resize(ow as u32, oh as u32);
    // For each output pixel, the source pixel it shows.
    let source = |ox: usize, oy: usize| -> (usize, usize) {
        match orientation {
            Orientation::NoTransforms => (ox, oy),
            Orientation::FlipHorizontal => (w - 1 - ox, oy),
            Orientation::FlipVertical => (ox, h - 1 - oy),
            Orientation::Rotate180 => (w - 1 - ox, h - 1 - oy),
            Orientation::Rotate90 => (oy, h - 1 - ox),
            Orientation::Rotate270 => (w - 1 - oy, ox),
            Orientation::Rotate90FlipH => (oy, ox),
            Orientation::Rotate270FlipH => (w - 1 - oy, h - 1 - ox),
        }
    };
    for oy in 0..oh {
        let row = &mut out.data[oy * ow * 3..(oy + 1) * ow * 3];
        for (ox, dst) in row.chunks_exact_mut(3).enumerate() {
            let (sx, sy) = source(ox, oy);
            let i = (sy * w + sx) * 3;
            dst.copy_from_slice(&src.data[i..i + 3]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_3x2() -> RgbImage {
        // Pixel value = 10 * (y * 3 + x), in all channels.
        let mut img = RgbImage::new(3, 2);
        for y in 0..2u32 {
            for x in 0..3u32 {
                let v = (10 * (y * 3 + x)) as u8;
                let i = ((y * 3 + x) * 3) as usize;
                img.data[i..i + 3].fill(v);
            }
        }
        img
    }

    #[test]
    fn orientations_map_corners_as_exif_says() {
        let src = image_3x2();
        let mut out = RgbImage::default();
        // Rotate90 (EXIF 6): the bottom-left source pixel becomes the top-left.
        orient(&src, Orientation::Rotate90, &mut out);
        assert_eq!((out.width, out.height), (2, 3));
        assert_eq!(out.pixel(0, 0)[0], 30);
        assert_eq!(out.pixel(1, 0)[0], 0);
        // Rotate270 (EXIF 8): the top-right source pixel becomes the top-left.
        orient(&src, Orientation::Rotate270, &mut out);
        assert_eq!(out.pixel(0, 0)[0], 20);
        orient(&src, Orientation::Rotate180, &mut out);
        assert_eq!(out.pixel(0, 0)[0], 50);
        orient(&src, Orientation::FlipHorizontal, &mut out);
        assert_eq!(out.pixel(0, 1)[0], 50);
        orient(&src, Orientation::FlipVertical, &mut out);
        assert_eq!(out.pixel(0, 0)[0], 30);
        // Transpose (EXIF 5) and transverse (EXIF 7).
        orient(&src, Orientation::Rotate90FlipH, &mut out);
        assert_eq!((out.pixel(0, 0)[0], out.pixel(1, 2)[0]), (0, 50));
        orient(&src, Orientation::Rotate270FlipH, &mut out);
        assert_eq!((out.pixel(0, 0)[0], out.pixel(1, 2)[0]), (50, 0));
    }
}
