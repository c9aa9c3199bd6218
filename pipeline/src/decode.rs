//! Image decoding: bytes of a sample field to an upright 8-bit RGB image in a reused buffer.
//!
//! The format is sniffed from the content ([`image::guess_format`]), never taken from the
//! field name: web crawls hold PNGs named `.jpg` and HTML named `.jpg`. JPEG, the hot path,
//! goes straight to `zune-jpeg` (the decoder `image` itself wraps) and writes into the
//! caller's [`RgbImage`]: no copy of the input, no `DynamicImage`, headers parsed once.
//! PNG, WebP and GIF (first frame) go through `image`'s decoders into a reused scratch
//! buffer and are converted to RGB from there.
//!
//! What every decode guarantees:
//! - the pixel count is checked from the header, before any pixel buffer is allocated
//!   ([`DecodeError::TooManyPixels`]), which stops decompression bombs;
//! - the EXIF orientation is applied, so the output is upright;
//! - the output is 8-bit RGB: greyscale is replicated, alpha is dropped (as PIL's
//!   `convert("RGB")`), palettes are expanded, 16-bit samples are rounded to 8 bits, CMYK
//!   JPEGs (Adobe inverted, as Photoshop and ImageMagick write them) are converted by
//!   zune-jpeg;
//! - failure is a typed [`DecodeError`] with a short [`DecodeError::reason`] for counting
//!   rejects; a panic inside a decoder is caught and reported as corrupt.
//!
//! Where libjpeg-turbo was built (the default `libjpeg-turbo` feature, with `nasm` found at
//! build time: `build.rs`; `TESSERA_JPEG=zune` at run time keeps zune-jpeg;
//! [`jpeg_decoder`] says which), JPEGs go through it instead: a
//! faster full decode, and [`Decoder::decode_for_crop`] decodes only the part of the image
//! a view's crop covers, at a reduced DCT scale where the crop will be downscaled 2x or
//! more. Without it (zune-jpeg 0.5 can do neither) `decode_for_crop` decodes the whole
//! image and draws the crop on it: the same crop, the same pixels, more work. Colour
//! management (ICC profiles) is ignored, as in PIL and torchvision's default pipelines.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

mod convert;
mod error;
mod orient;
#[cfg(tessera_libjpeg_turbo)]
mod turbo;

use convert::native_to_rgb;
use error::jpeg_error;
pub use error::{BackendError, DecodeError};
use orient::{exif_value, orient};

use image::metadata::Orientation;
use image::{ImageDecoder, ImageFormat};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::errors::DecodeErrors as JpegErrors;

use crate::transforms::CropBox;

/// The JPEG decoder this process uses: libjpeg-turbo where `build.rs` built it in and
/// `TESSERA_JPEG=zune` is not set at run time, else zune-jpeg: `"libjpeg-turbo (SIMD, ...)"`
/// or `"zune-jpeg (pure Rust; <why>)"`. `tessera profile` prints it.
pub fn jpeg_decoder() -> &'static str {
    if cfg!(tessera_libjpeg_turbo) && zune_jpeg_requested() {
        return "zune-jpeg (pure Rust; TESSERA_JPEG=zune at run time)";
    }
    env!("TESSERA_JPEG_DECODER")
}

/// Whether JPEGs go through libjpeg-turbo in this process (see [`jpeg_decoder`]).
pub fn uses_libjpeg_turbo() -> bool {
    cfg!(tessera_libjpeg_turbo) && !zune_jpeg_requested()
}

/// `TESSERA_JPEG=zune` in the environment, read once: the pure-Rust decoder for every
/// [`Decoder`] of the process, in a build that has libjpeg-turbo too (comparing the two,
/// testing the path of machines without nasm without a rebuild).
fn zune_jpeg_requested() -> bool {
    static REQUESTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REQUESTED.get_or_init(|| std::env::var("TESSERA_JPEG").is_ok_and(|v| v == "zune"))
}

/// Default pixel limit: 89.5 Mpixel, the threshold at which PIL warns of a decompression
/// bomb. A 12000x9000 image (108 Mpixel, 324 MB as RGB) is refused.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (`height x width x 3`).
///
/// Meant to be reused: [`RgbImage::resize`] keeps the allocation when the new image is
/// not larger, so a worker decoding many images allocates only for the largest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `height * width * 3` bytes (may be longer capacity; the length is exact).
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An image of the given size filled with black.
    pub fn new(width: u32, height: u32) -> Self {
        let mut image = RgbImage::default();
        image.resize(width, height);
        image
    }

    /// Set the size, reusing the allocation unless it is far larger than needed (then it
    /// is freed: one huge image must not pin its size in a worker for the rest of a run);
    /// pixel contents are unspecified afterwards.
    pub fn resize(&mut self, width: u32, height: u32) {
        self.width = width;
        self.height = height;
        resize_buffer(&mut self.data, width as usize * height as usize * 3);
    }

    /// The pixel at (x, y) as `[r, g, b]`.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// Resize a reused buffer to `len` bytes, first freeing it when it is far larger than that
/// ([`has_slack`](tessera_shards::sample::has_slack)).
fn resize_buffer(buffer: &mut Vec<u8>, len: usize) {
    if tessera_shards::sample::has_slack(buffer.capacity(), len) {
        *buffer = Vec::new();
    }
    buffer.resize(len, 0);
}

/// The container formats the decoder recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// JPEG (baseline or progressive; not arithmetic-coded).
    Jpeg,
    /// PNG (any bit depth, interlaced or not).
    Png,
    /// WebP (lossy or lossless; first frame).
    WebP,
    /// GIF (first frame).
    Gif,
}

impl SourceFormat {
    /// Lower-case name, as used in error messages and statistics.
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Jpeg => "jpeg",
            SourceFormat::Png => "png",
            SourceFormat::WebP => "webp",
            SourceFormat::Gif => "gif",
        }
    }
}

/// What a successful decode found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeInfo {
    /// The format sniffed from the bytes.
    pub format: SourceFormat,
    /// Width as stored in the file, before orientation.
    pub stored_width: u32,
    /// Height as stored in the file, before orientation.
    pub stored_height: u32,
    /// EXIF orientation that was applied (1 = none, 2..=8 as in the EXIF standard).
    pub orientation: u8,
    /// Denominator of the DCT scaling used (1 = full size; see [`Decoder::decode`]).
    pub scale_denominator: u8,
}

/// A crop-aware decode's question: the view's side, and how to draw its crop from the
/// upright image size (called exactly once, before or after decoding).
pub(crate) struct CropRequest<'a> {
    /// Only the libjpeg-turbo path can use it (to pick a DCT scale).
    #[cfg_attr(not(tessera_libjpeg_turbo), allow(dead_code))]
    size: u32,
    draw: &'a mut dyn FnMut(u32, u32) -> CropBox,
}

/// A per-worker decoder: settings plus scratch buffers reused across samples.
#[derive(Debug)]
pub struct Decoder {
    max_pixels: u64,
    /// Native-format pixels from `image`'s decoders, before conversion to RGB.
    native: Vec<u8>,
    /// Pre-orientation pixels when an EXIF rotation or flip must be applied.
    unoriented: RgbImage,
    /// Accept truncated JPEGs (missing part filled with grey) instead of refusing them.
    lenient_jpeg: bool,
    /// libjpeg-turbo's decompressor, reused across images.
    #[cfg(tessera_libjpeg_turbo)]
    turbo: turbo::TurboJpeg,
    /// Send JPEGs to zune-jpeg although libjpeg-turbo is built in ([`Decoder::with_zune_jpeg`]).
    #[cfg(tessera_libjpeg_turbo)]
    zune_only: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_PIXELS)
    }
}

impl Decoder {
    /// A decoder refusing images with more than `max_pixels` pixels (width x height).
    pub fn new(max_pixels: u64) -> Self {
        Decoder {
            max_pixels,
            native: Vec::new(),
            unoriented: RgbImage::default(),
            lenient_jpeg: false,
            #[cfg(tessera_libjpeg_turbo)]
            turbo: turbo::TurboJpeg::new(),
            #[cfg(tessera_libjpeg_turbo)]
            zune_only: zune_jpeg_requested(),
        }
    }

    /// Accept truncated JPEGs, filling the missing part with grey (libjpeg-turbo and
    /// `image` behave so). Off by default: a half-grey image is wrong training data, so
    /// truncation is reported as [`DecodeError::Corrupt`].
    pub fn with_lenient_jpeg(mut self, lenient: bool) -> Self {
        self.lenient_jpeg = lenient;
        self
    }

    /// Decode JPEGs with the pure-Rust zune-jpeg (`true`) or libjpeg-turbo (`false`, the
    /// default unless `TESSERA_JPEG=zune` is set) where libjpeg-turbo is built in; a no-op
    /// where it is not. One build then exercises both decoders, as the `decode` fuzz target
    /// does.
    #[cfg_attr(not(tessera_libjpeg_turbo), allow(unused_mut, unused_variables))]
    pub fn with_zune_jpeg(mut self, zune: bool) -> Self {
        #[cfg(tessera_libjpeg_turbo)]
        {
            self.zune_only = zune;
        }
        self
    }

    /// The configured pixel limit.
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// Decode `bytes` into `out` (resized to fit), upright and RGB, at full size.
    ///
    /// On error `out` is left empty (0x0).
    pub fn decode(&mut self, bytes: &[u8], out: &mut RgbImage) -> Result<DecodeInfo, DecodeError> {
        self.decode_any(bytes, out, None).map(|(info, _)| info)
    }

    /// Decode what one view needs: `draw_crop(width, height)` draws the view's crop box
    /// from the upright image size, and `out` receives at least that box's pixels; the
    /// returned box locates the crop in `out`.
    ///
    /// With the `libjpeg-turbo` feature an upright JPEG is decoded only over the crop's
    /// rows and MCU columns (the same pixels a full decode gives there), and at 1/2, 1/4
    /// or 1/8 scale when the crop's shorter side is at least that many times `size`
    /// ([`DecodeInfo::scale_denominator`]; the box is then rounded to whole pixels).
    /// Otherwise the whole image is decoded and the box is the drawn one.
    pub fn decode_for_crop(
        &mut self,
        bytes: &[u8],
        out: &mut RgbImage,
        size: u32,
        draw_crop: &mut dyn FnMut(u32, u32) -> CropBox,
    ) -> Result<(DecodeInfo, CropBox), DecodeError> {
        let request = CropRequest {
            size,
            draw: draw_crop,
        };
        let (info, crop) = self.decode_any(bytes, out, Some(request))?;
        // Every path draws the crop when asked to; a missing one would be a bug here.
        let crop = crop.unwrap_or(CropBox {
            top: 0.0,
            left: 0.0,
            height: f64::from(out.height),
            width: f64::from(out.width),
        });
        Ok((info, crop))
    }

    fn decode_any(
        &mut self,
        bytes: &[u8],
        out: &mut RgbImage,
        crop: Option<CropRequest<'_>>,
    ) -> Result<(DecodeInfo, Option<CropBox>), DecodeError> {
        if bytes.is_empty() {
            out.resize(0, 0);
            return Err(DecodeError::Empty);
        }
        let format = match image::guess_format(bytes) {
            Ok(format) => format,
            Err(_) => {
                out.resize(0, 0);
                return Err(DecodeError::UnknownFormat {
                    head: bytes[..bytes.len().min(8)].to_vec(),
                    len: bytes.len(),
                });
            }
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.decode_format(format, bytes, out, crop)
        }));
        let result = match result {
            Ok(result) => result,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_string());
                Err(DecodeError::Panicked {
                    format: format_name(format),
                    message,
                })
            }
        };
        if result.is_err() {
            out.resize(0, 0);
        }
        result
    }

    /// Decode by format; a crop request is answered by the JPEG path where it can, else
    /// drawn on the whole decoded image.
    fn decode_format(
        &mut self,
        format: ImageFormat,
        bytes: &[u8],
        out: &mut RgbImage,
        crop: Option<CropRequest<'_>>,
    ) -> Result<(DecodeInfo, Option<CropBox>), DecodeError> {
        #[cfg(tessera_libjpeg_turbo)]
        let crop = match format {
            ImageFormat::Jpeg if !self.zune_only => {
                match self.decode_jpeg_turbo(bytes, out, crop)? {
                    Ok(decoded) => return Ok(decoded),
                    Err(crop) => crop,
                }
            }
            _ => crop,
        };
        let info = match format {
            ImageFormat::Jpeg => self.decode_jpeg(bytes, out),
            ImageFormat::Png => self.decode_with_image(SourceFormat::Png, format, bytes, out),
            ImageFormat::WebP => self.decode_with_image(SourceFormat::WebP, format, bytes, out),
            ImageFormat::Gif => self.decode_with_image(SourceFormat::Gif, format, bytes, out),
            other => Err(DecodeError::Unsupported {
                format: format_name(other),
                source: BackendError::Image(image::ImageError::Unsupported(
                    image::error::UnsupportedError::from_format_and_kind(
                        other.into(),
                        image::error::UnsupportedErrorKind::Format(other.into()),
                    ),
                )),
            }),
        }?;
        Ok((
            info,
            crop.map(|request| (request.draw)(out.width, out.height)),
        ))
    }

    /// JPEG through libjpeg-turbo; `Ok(Err(crop))` hands a JPEG it leaves to zune-jpeg
    /// (CMYK, YCCK) back with the unanswered request.
    #[cfg(tessera_libjpeg_turbo)]
    #[allow(clippy::type_complexity)]
    fn decode_jpeg_turbo<'a>(
        &mut self,
        bytes: &[u8],
        out: &mut RgbImage,
        crop: Option<CropRequest<'a>>,
    ) -> Result<Result<(DecodeInfo, Option<CropBox>), Option<CropRequest<'a>>>, DecodeError> {
        // The request is only consumed when libjpeg takes the image, which it decides
        // from the header; a colour space it cannot convert is known before any drawing.
        let mut request = crop;
        let decoded = self.turbo.decode(
            bytes,
            out,
            &mut self.unoriented,
            self.max_pixels,
            self.lenient_jpeg,
            &mut request,
        )?;
        Ok(match decoded {
            Some(decoded) => Ok((
                DecodeInfo {
                    format: SourceFormat::Jpeg,
                    stored_width: decoded.width,
                    stored_height: decoded.height,
                    orientation: exif_value(decoded.orientation),
                    scale_denominator: decoded.scale_denominator,
                },
                decoded.crop,
            )),
            None => Err(request),
        })
    }

    fn check_pixels(&self, width: u32, height: u32) -> Result<(), DecodeError> {
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(DecodeError::TooManyPixels {
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }

    /// JPEG through zune-jpeg, straight into the output (or the pre-orientation scratch).
    fn decode_jpeg(&mut self, bytes: &[u8], out: &mut RgbImage) -> Result<DecodeInfo, DecodeError> {
        let options = DecoderOptions::default()
            // Strict: truncated entropy data is an error instead of a grey-filled image
            // (which would be silently wrong training data). A missing EOI or trailing junk
            // still decode in strict mode.
            .set_strict_mode(!self.lenient_jpeg)
            // Our own limit (max_pixels) applies; zune's per-side caps would reject panoramas.
            .set_max_width(usize::MAX)
            .set_max_height(usize::MAX)
            .jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        decoder.decode_headers().map_err(|e| jpeg_error(e, bytes))?;
        let (width, height) = decoder
            .dimensions()
            .map(|(w, h)| (w as u32, h as u32))
            .ok_or(DecodeError::Corrupt {
                format: "jpeg",
                source: BackendError::Jpeg(JpegErrors::FormatStatic("no frame header")),
            })?;
        self.check_pixels(width, height)?;
        let orientation = decoder
            .exif()
            .and_then(|exif| Orientation::from_exif_chunk(exif))
            .unwrap_or(Orientation::NoTransforms);
        let target = if orientation == Orientation::NoTransforms {
            &mut *out
        } else {
            &mut self.unoriented
        };
        target.resize(width, height);
        decoder
            .decode_into(&mut target.data)
            .map_err(|e| jpeg_error(e, bytes))?;
        if orientation != Orientation::NoTransforms {
            orient(&self.unoriented, orientation, out);
        }
        Ok(DecodeInfo {
            format: SourceFormat::Jpeg,
            stored_width: width,
            stored_height: height,
            orientation: exif_value(orientation),
            scale_denominator: 1,
        })
    }

    /// PNG, WebP, GIF through `image`: native pixels into scratch, then to RGB.
    fn decode_with_image(
        &mut self,
        source: SourceFormat,
        format: ImageFormat,
        bytes: &[u8],
        out: &mut RgbImage,
    ) -> Result<DecodeInfo, DecodeError> {
        let name = source.name();
        let classify = |error: image::ImageError| match error {
            image::ImageError::Unsupported(_) => DecodeError::Unsupported {
                format: name,
                source: BackendError::Image(error),
            },
            image::ImageError::Limits(_) => DecodeError::AllocationLimit {
                format: name,
                source: BackendError::Image(error),
            },
            other => DecodeError::Corrupt {
                format: name,
                source: BackendError::Image(other),
            },
        };
        let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
        // Header-time size check is ours (below); `image`'s allocation limit is a second
        // line of defence for decoders that allocate internally.
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(self.max_pixels.saturating_mul(8).max(1 << 26));
        reader.limits(limits);
        let mut decoder = reader.into_decoder().map_err(classify)?;
        let (width, height) = decoder.dimensions();
        self.check_pixels(width, height)?;
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        let color = decoder.color_type();
        let len =
            usize::try_from(decoder.total_bytes()).map_err(|_| DecodeError::TooManyPixels {
                width,
                height,
                max_pixels: self.max_pixels,
            })?;
        resize_buffer(&mut self.native, len);
        decoder.read_image(&mut self.native).map_err(classify)?;
        let target = if orientation == Orientation::NoTransforms {
            &mut *out
        } else {
            &mut self.unoriented
        };
        target.resize(width, height);
        native_to_rgb(&self.native, color, &mut target.data).ok_or_else(|| {
            DecodeError::Unsupported {
                format: name,
                source: BackendError::Image(image::ImageError::Unsupported(
                    image::error::UnsupportedError::from_format_and_kind(
                        format.into(),
                        image::error::UnsupportedErrorKind::Color(color.into()),
                    ),
                )),
            }
        })?;
        if orientation != Orientation::NoTransforms {
            orient(&self.unoriented, orientation, out);
        }
        Ok(DecodeInfo {
            format: source,
            stored_width: width,
            stored_height: height,
            orientation: exif_value(orientation),
            scale_denominator: 1,
        })
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    format.extensions_str().first().copied().unwrap_or("image")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_image_keeps_its_buffer_unless_it_is_far_too_large() {
        let mut image = RgbImage::new(4000, 3000);
        image.resize(3000, 2000);
        let kept = image.data.as_ptr();
        image.resize(2000, 2000);
        assert_eq!(image.data.as_ptr(), kept, "similar sizes reuse the buffer");
        image.resize(500, 375);
        assert_eq!(image.data.len(), 500 * 375 * 3);
        assert!(
            image.data.capacity() < 4000 * 3000 * 3,
            "a 36 MB buffer is not kept for a 0.5 MB image"
        );
    }

    #[test]
    fn empty_and_unknown_bytes_are_typed_errors() {
        let mut decoder = Decoder::default();
        let mut out = RgbImage::default();
        let err = decoder.decode(&[], &mut out).unwrap_err();
        assert_eq!(err.reason(), "empty");
        let err = decoder
            .decode(b"<!DOCTYPE html><html>", &mut out)
            .unwrap_err();
        assert_eq!(err.reason(), "unknown_format");
        assert!(err.to_string().contains("3c, 21"), "{err}");
    }
}
