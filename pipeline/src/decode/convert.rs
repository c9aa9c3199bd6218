//! Conversion of `image`'s native pixel layouts (grey, alpha, 16-bit) to 8-bit RGB.

use image::ColorType;

/// Convert `image`'s native layout to RGB8. `None` for layouts we do not handle (float).
pub(super) fn native_to_rgb(native: &[u8], color: ColorType, rgb: &mut [u8]) -> Option<()> {
    // 16-bit to 8-bit with rounding, as `image`'s conversions do.
    fn narrow(pair: &[u8]) -> u8 {
        let v = u32::from(u16::from_ne_bytes([pair[0], pair[1]]));
        ((v * 255 + 32_895) >> 16) as u8
    }
    let pixels = rgb.chunks_exact_mut(3);
    match color {
        ColorType::Rgb8 => rgb.copy_from_slice(&native[..rgb.len()]),
        ColorType::Rgba8 => {
            for (dst, src) in pixels.zip(native.chunks_exact(4)) {
                dst.copy_from_slice(&src[..3]);
            }
        }
        ColorType::L8 => {
            for (dst, &v) in pixels.zip(native) {
                dst.fill(v);
            }
        }
        ColorType::La8 => {
            for (dst, src) in pixels.zip(native.chunks_exact(2)) {
                dst.fill(src[0]);
            }
        }
        ColorType::Rgb16 => {
            for (dst, src) in pixels.zip(native.chunks_exact(6)) {
                for c in 0..3 {
                    dst[c] = narrow(&src[2 * c..]);
                }
            }
        }
        ColorType::Rgba16 => {
            for (dst, src) in pixels.zip(native.chunks_exact(8)) {
                for c in 0..3 {
                    dst[c] = narrow(&src[2 * c..]);
                }
            }
        }
        ColorType::L16 => {
            for (dst, src) in pixels.zip(native.chunks_exact(2)) {
                dst.fill(narrow(src));
            }
        }
        ColorType::La16 => {
            for (dst, src) in pixels.zip(native.chunks_exact(4)) {
                dst.fill(narrow(src));
            }
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bit_rounds_to_eight() {
        let native: Vec<u8> = [0u16, 257, 65535]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let mut rgb = [0u8; 3];
        native_to_rgb(&native, ColorType::Rgb16, &mut rgb).unwrap();
        assert_eq!(rgb, [0, 1, 255]);
    }
}
