//! One input file → the bytes that go into a shard, or a [`Reject`].
//!
//! The [`Preparer`] sniffs the real format from the content (a PNG named `.jpg` is a PNG),
//! refuses oversized images from the header alone (before any pixel buffer exists),
//! decodes every image fully (a file that does not decode never reaches a shard), and,
//! with a `max_side` cap, resizes larger images (Lanczos3), applies their EXIF orientation
//! and re-encodes them as JPEG. Images within the cap keep their original bytes.
//!
//! JPEGs are decoded with zune-jpeg in strict mode: `image`'s wrapper runs it leniently,
//! which turns a truncated file into a grey-padded "success". Each worker owns one
//! `Preparer`; its pixel, resize and encode buffers are reused from one image to the next.

use std::io::Cursor;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::jpeg::JpegEncoder;
use image::metadata::Orientation;
use image::{
    DynamicImage, ExtendedColorType, ImageBuffer, ImageDecoder, ImageError, ImageFormat,
    ImageReader, Limits,
};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

use super::reject::{Reject, RejectReason};

/// Pillow's default decompression-bomb threshold (`Image.MAX_IMAGE_PIXELS`).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Pixel buffers above this size are released after use instead of kept for reuse, so
/// one huge image does not pin its buffer in every worker for the rest of the run.
const KEEP_BUFFER_BYTES: usize = 64 << 20;

/// How inputs are checked and transformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareOptions {
    /// Images whose header declares more pixels than this are rejected before decoding.
    /// Default [`DEFAULT_MAX_PIXELS`].
    pub max_pixels: u64,
    /// Longest side, in pixels, after orientation. Larger images are resized and
    /// re-encoded as JPEG; `None` keeps every image's original bytes.
    pub max_side: Option<u32>,
    /// JPEG quality (1-100) of re-encoded images. Default 90.
    pub quality: u8,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_side: None,
            quality: 90,
        }
    }
}

/// The image formats Tessera puts in shards, named by their WebDataset field extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// JPEG (`.jpg`).
    Jpeg,
    /// PNG (`.png`).
    Png,
    /// WebP (`.webp`).
    Webp,
    /// GIF (`.gif`; the first frame is verified).
    Gif,
}

impl ImageKind {
    /// The field extension a sample stores this format under.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Gif => "gif",
        }
    }

    /// Lower-case format name for sample metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Gif => "gif",
        }
    }

    fn image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
            Self::Webp => ImageFormat::WebP,
            Self::Gif => ImageFormat::Gif,
        }
    }
}

/// What a resize did, for the sample's `.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resized {
    /// Size after orientation, before resizing: `[width, height]`.
    pub from: [u32; 2],
    /// Size written: `[width, height]`.
    pub to: [u32; 2],
    /// JPEG quality of the re-encoding.
    pub quality: u8,
    /// Whether an alpha channel was dropped (JPEG has none).
    pub alpha_dropped: bool,
}

/// A usable input: what it is and what was done to it. The bytes to store are the input's
/// own unless `resized` is set, in which case they are [`Preparer::encoded`] (a JPEG).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// The real format of the input, sniffed from its content.
    pub kind: ImageKind,
    /// Width as stored in the file (before EXIF orientation).
    pub width: u32,
    /// Height as stored in the file (before EXIF orientation).
    pub height: u32,
    /// EXIF orientation tag (1 = upright; 1 when absent).
    pub orientation: u8,
    /// Set when the image was resized and re-encoded.
    pub resized: Option<Resized>,
}

impl Prepared {
    /// The field extension of the stored bytes.
    pub fn extension(&self) -> &'static str {
        if self.resized.is_some() {
            "jpg"
        } else {
            self.kind.extension()
        }
    }
}

/// Checks, decodes and transforms inputs, reusing its buffers (one per worker).
pub struct Preparer {
    options: PrepareOptions,
    pixels: Vec<u8>,
    resized: Vec<u8>,
    encoded: Vec<u8>,
    resizer: Resizer,
}

impl std::fmt::Debug for Preparer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preparer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Decoded pixels in `Preparer::pixels`: 8-bit grey (1 channel) or RGB (3 channels),
/// unless only verification was needed.
struct Decoded {
    width: u32,
    height: u32,
    channels: usize,
    alpha_dropped: bool,
}

impl Preparer {
    /// A preparer with `options`.
    pub fn new(options: PrepareOptions) -> Self {
        Self {
            options,
            pixels: Vec::new(),
            resized: Vec::new(),
            encoded: Vec::new(),
            resizer: Resizer::new(),
        }
    }

    /// The re-encoded JPEG of the last [`Prepared`] whose `resized` is set.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// Check `data` and prepare it for a shard.
    ///
    /// A panic inside a decoder (hostile files find such bugs) is caught and becomes a
    /// `corrupt` reject; the buffers are then dropped, as they may be half-written.
    pub fn prepare(&mut self, data: &[u8]) -> Result<Prepared, Reject> {
        if data.is_empty() {
            return Err(Reject::new(RejectReason::Empty, "file has zero bytes"));
        }
        let kind = sniff(data)?;
        let guarded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.prepare_kind(data, kind)
        }));
        let result = guarded.unwrap_or_else(|_| {
            self.pixels = Vec::new();
            self.resized = Vec::new();
            self.encoded = Vec::new();
            self.resizer = Resizer::new();
            Err(Reject::new(
                RejectReason::Corrupt,
                "the decoder panicked on this file",
            ))
        });
        if self.pixels.capacity() > KEEP_BUFFER_BYTES {
            self.pixels = Vec::new();
        }
        if self.resized.capacity() > KEEP_BUFFER_BYTES {
            self.resized = Vec::new();
        }
        result
    }

    fn prepare_kind(&mut self, data: &[u8], kind: ImageKind) -> Result<Prepared, Reject> {
        let (width, height, orientation, decoded) = match kind {
            ImageKind::Jpeg => self.decode_jpeg(data)?,
            _ => self.decode_with_image(data, kind)?,
        };
        let mut prepared = Prepared {
            kind,
            width,
            height,
            orientation: orientation.to_exif(),
            resized: None,
        };
        if let Some(decoded) = decoded {
            prepared.resized = Some(self.resize_and_encode(&decoded, orientation)?);
        }
        Ok(prepared)
    }

    /// The size after orientation and, when it exceeds `max_side`, the size to resize to.
    fn resize_target(&self, width: u32, height: u32, orientation: Orientation) -> Option<[u32; 2]> {
        let max_side = self.options.max_side?;
        let [w, h] = oriented_size(width, height, orientation);
        let longest = w.max(h);
        if longest <= max_side {
            return None;
        }
        let scale = f64::from(max_side) / f64::from(longest);
        let fit = |side: u32| ((f64::from(side) * scale).round() as u32).clamp(1, max_side);
        Some([fit(w), fit(h)])
    }

    fn check_pixels(&self, width: u32, height: u32) -> Result<(), Reject> {
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.options.max_pixels {
            return Err(Reject::new(
                RejectReason::TooManyPixels,
                format!(
                    "header declares {width}x{height} = {pixels} pixels, over the limit of {}",
                    self.options.max_pixels
                ),
            ));
        }
        if pixels == 0 {
            return Err(Reject::new(
                RejectReason::Corrupt,
                format!("header declares {width}x{height}"),
            ));
        }
        Ok(())
    }

    /// Strict zune-jpeg decode into `self.pixels` (grey stays grey, everything else RGB).
    /// Returns the decoded pixels only when they are needed for a resize.
    fn decode_jpeg(
        &mut self,
        data: &[u8],
    ) -> Result<(u32, u32, Orientation, Option<Decoded>), Reject> {
        let options = DecoderOptions::default()
            .set_strict_mode(true)
            .set_max_width(usize::MAX)
            .set_max_height(usize::MAX);
        let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(data), options);
        decoder.decode_headers().map_err(jpeg_reject)?;
        let (width, height) = decoder
            .dimensions()
            .ok_or_else(|| Reject::new(RejectReason::Corrupt, "jpeg header has no dimensions"))?;
        let (width, height) = (width as u32, height as u32);
        self.check_pixels(width, height)?;
        let orientation = decoder
            .exif()
            .and_then(|exif| Orientation::from_exif_chunk(exif))
            .unwrap_or(Orientation::NoTransforms);
        let grey = matches!(
            decoder.input_colorspace(),
            Some(ColorSpace::Luma | ColorSpace::LumaA)
        );
        let out = if grey {
            ColorSpace::Luma
        } else {
            ColorSpace::RGB
        };
        decoder.set_options(decoder.options().jpeg_set_out_colorspace(out));
        let size = decoder
            .output_buffer_size()
            .ok_or_else(|| Reject::new(RejectReason::Corrupt, "jpeg header has no output size"))?;
        // No clear: the decoder overwrites every byte, so only growth needs zeroing.
        self.pixels.resize(size, 0);
        decoder.decode_into(&mut self.pixels).map_err(jpeg_reject)?;
        let decoded = self
            .resize_target(width, height, orientation)
            .map(|_| Decoded {
                width,
                height,
                channels: if grey { 1 } else { 3 },
                alpha_dropped: false,
            });
        Ok((width, height, orientation, decoded))
    }

    /// PNG, WebP and GIF through `image`, with an allocation limit as a second guard.
    fn decode_with_image(
        &mut self,
        data: &[u8],
        kind: ImageKind,
    ) -> Result<(u32, u32, Orientation, Option<Decoded>), Reject> {
        let mut reader = ImageReader::with_format(Cursor::new(data), kind.image_format());
        let mut limits = Limits::default();
        // 8 bytes a pixel covers 16-bit RGBA; the slack covers decoder bookkeeping.
        limits.max_alloc = Some(
            self.options
                .max_pixels
                .saturating_mul(8)
                .saturating_add(64 << 20),
        );
        reader.limits(limits);
        let mut decoder = reader.into_decoder().map_err(image_reject)?;
        let (width, height) = decoder.dimensions();
        self.check_pixels(width, height)?;
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        if self.resize_target(width, height, orientation).is_none() {
            let size = usize::try_from(decoder.total_bytes()).map_err(|_| {
                Reject::new(
                    RejectReason::TooManyPixels,
                    "decoded size does not fit in memory",
                )
            })?;
            self.pixels.resize(size, 0);
            decoder.read_image(&mut self.pixels).map_err(image_reject)?;
            return Ok((width, height, orientation, None));
        }
        let image = DynamicImage::from_decoder(decoder).map_err(image_reject)?;
        let alpha_dropped = image.color().has_alpha();
        let grey = !image.color().has_color();
        let pixels = if grey {
            image.into_luma8().into_raw()
        } else {
            image.into_rgb8().into_raw()
        };
        self.pixels.clear();
        self.pixels.extend_from_slice(&pixels);
        let decoded = Decoded {
            width,
            height,
            channels: if grey { 1 } else { 3 },
            alpha_dropped,
        };
        Ok((width, height, orientation, Some(decoded)))
    }

    /// Resize `self.pixels` to fit `max_side`, orient upright, encode JPEG into `self.encoded`.
    /// Resizing before orienting is equivalent (the filter is symmetric) and cheaper.
    fn resize_and_encode(
        &mut self,
        decoded: &Decoded,
        orientation: Orientation,
    ) -> Result<Resized, Reject> {
        let Decoded {
            width,
            height,
            channels,
            alpha_dropped,
        } = *decoded;
        let failed = |what: &str, err: &dyn std::fmt::Display| {
            Reject::new(RejectReason::TransformFailed, format!("{what}: {err}"))
        };
        let Some(target) = self.resize_target(width, height, orientation) else {
            return Err(Reject::new(
                RejectReason::TransformFailed,
                "resize requested within the cap",
            ));
        };
        // The target is upright; the pixels are not oriented yet.
        let swaps = oriented_size(1, 2, orientation) == [2, 1];
        let [tw, th] = if swaps {
            [target[1], target[0]]
        } else {
            target
        };
        let pixel_type = if channels == 1 {
            PixelType::U8
        } else {
            PixelType::U8x3
        };
        let src_len = width as usize * height as usize * channels;
        let src = ImageRef::new(width, height, &self.pixels[..src_len], pixel_type)
            .map_err(|e| failed("source image", &e))?;
        let dst_len = tw as usize * th as usize * channels;
        self.resized.resize(dst_len, 0); // fully overwritten by the resize

        let mut dst = Image::from_slice_u8(tw, th, &mut self.resized, pixel_type)
            .map_err(|e| failed("resize buffer", &e))?;
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| failed("resize", &e))?;

        let buffer = std::mem::take(&mut self.resized);
        let mut image = if channels == 1 {
            ImageBuffer::from_raw(tw, th, buffer).map(DynamicImage::ImageLuma8)
        } else {
            ImageBuffer::from_raw(tw, th, buffer).map(DynamicImage::ImageRgb8)
        }
        .ok_or_else(|| {
            Reject::new(
                RejectReason::TransformFailed,
                "resized buffer has the wrong size",
            )
        })?;
        image.apply_orientation(orientation);
        let color = if channels == 1 {
            ExtendedColorType::L8
        } else {
            ExtendedColorType::Rgb8
        };
        self.encoded.clear();
        let encoded = JpegEncoder::new_with_quality(&mut self.encoded, self.options.quality)
            .encode(image.as_bytes(), image.width(), image.height(), color);
        let out = [image.width(), image.height()];
        self.resized = image.into_bytes();
        encoded.map_err(|e| failed("jpeg encode", &e))?;
        Ok(Resized {
            from: oriented_size(width, height, orientation),
            to: out,
            quality: self.options.quality,
            alpha_dropped,
        })
    }
}

/// The real format of `data`, from its magic bytes.
pub fn sniff(data: &[u8]) -> Result<ImageKind, Reject> {
    match image::guess_format(data) {
        Ok(ImageFormat::Jpeg) => Ok(ImageKind::Jpeg),
        Ok(ImageFormat::Png) => Ok(ImageKind::Png),
        Ok(ImageFormat::WebP) => Ok(ImageKind::Webp),
        Ok(ImageFormat::Gif) => Ok(ImageKind::Gif),
        Ok(other) => Err(Reject::new(
            RejectReason::UnsupportedFormat,
            format!("{other:?} images are not supported (jpeg, png, webp and gif are)"),
        )),
        Err(_) => {
            let head: String = data
                .iter()
                .take(16)
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            Err(Reject::new(
                RejectReason::NotAnImage,
                format!("no image signature; starts with {head:?}"),
            ))
        }
    }
}

/// `[width, height]` once `orientation` is applied.
fn oriented_size(width: u32, height: u32, orientation: Orientation) -> [u32; 2] {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => [height, width],
        _ => [width, height],
    }
}

fn jpeg_reject(err: zune_jpeg::errors::DecodeErrors) -> Reject {
    use zune_jpeg::errors::DecodeErrors;
    match err {
        DecodeErrors::Unsupported(kind) => {
            Reject::new(RejectReason::UnsupportedFormat, format!("jpeg: {kind:?}"))
        }
        DecodeErrors::LargeDimensions(_) => {
            Reject::new(RejectReason::TooManyPixels, format!("jpeg: {err}"))
        }
        // zune reports unimplemented coding processes (arithmetic, lossless) as format errors.
        err if err.to_string().contains("not supported") => {
            Reject::new(RejectReason::UnsupportedFormat, format!("jpeg: {err}"))
        }
        err => Reject::new(RejectReason::Corrupt, format!("jpeg: {err}")),
    }
}

fn image_reject(err: ImageError) -> Reject {
    match err {
        ImageError::Unsupported(e) => Reject::new(RejectReason::UnsupportedFormat, e.to_string()),
        ImageError::Limits(e) => Reject::new(RejectReason::TooManyPixels, e.to_string()),
        ImageError::IoError(e) => Reject::new(
            RejectReason::Corrupt,
            format!("truncated or unreadable: {e}"),
        ),
        err => Reject::new(RejectReason::Corrupt, err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn hostile(name: &str) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/hostile/files")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn prepare(name: &str, options: PrepareOptions) -> Result<(Prepared, Vec<u8>), Reject> {
        let mut preparer = Preparer::new(options);
        let prepared = preparer.prepare(&hostile(name))?;
        Ok((prepared, preparer.encoded().to_vec()))
    }

    fn reason(name: &str) -> RejectReason {
        prepare(name, PrepareOptions::default())
            .expect_err(name)
            .reason
    }

    #[test]
    fn rejects_bad_files_with_their_category() {
        assert_eq!(reason("zero_bytes.jpg"), RejectReason::Empty);
        assert_eq!(reason("not_an_image.jpg"), RejectReason::NotAnImage);
        assert_eq!(reason("truncated_50pct.jpg"), RejectReason::Corrupt);
        assert_eq!(reason("truncated_headers.jpg"), RejectReason::Corrupt);
        assert_eq!(
            reason("bomb_jpeg_65500x65500.jpg"),
            RejectReason::TooManyPixels
        );
        assert_eq!(
            reason("bomb_real_12000x9000.jpg"),
            RejectReason::TooManyPixels
        );
    }

    #[test]
    fn sniffs_the_real_format() {
        let (prepared, _) = prepare("png_named_jpg.jpg", PrepareOptions::default()).unwrap();
        assert_eq!(prepared.kind, ImageKind::Png);
        assert_eq!(prepared.extension(), "png");
    }

    #[test]
    fn resize_applies_orientation_and_keeps_small_images() {
        let options = PrepareOptions {
            max_side: Some(240),
            ..PrepareOptions::default()
        };
        for name in [
            "exif_orientation_6.jpg",
            "exif_orientation_8.jpg",
            "exif_orientation_3.jpg",
        ] {
            let (prepared, jpeg) = prepare(name, options.clone()).unwrap();
            let resized = prepared.resized.expect("resized");
            assert_eq!(resized.from, [480, 320], "{name}");
            assert_eq!(resized.to, [240, 160], "{name}");
            let decoded = image::load_from_memory(&jpeg).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (240, 160), "{name}");
        }
        let (prepared, _) = prepare("tiny_16x12.jpg", options).unwrap();
        assert_eq!(prepared.resized, None);
    }

    /// Every file the hostile manifest expects to decode does (except those where a clean
    /// error is also allowed), and every other one is a clean reject.
    #[test]
    fn handles_every_hostile_file_as_the_manifest_expects() {
        let manifest_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/testdata/hostile/manifest.json");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(manifest_path).unwrap()).unwrap();
        let options = PrepareOptions {
            max_side: Some(256),
            ..PrepareOptions::default()
        };
        for entry in manifest["files"].as_array().unwrap() {
            let name = entry["file"].as_str().unwrap();
            let expect = entry["expect"].as_str().unwrap();
            for options in [PrepareOptions::default(), options.clone()] {
                let result = prepare(name, options);
                let must_decode = expect.starts_with("decode") && !expect.contains("error");
                match &result {
                    Ok(_) => assert!(
                        !expect.starts_with("error") && !expect.starts_with("refuse"),
                        "{name}: accepted"
                    ),
                    Err(reject) => assert!(!must_decode, "{name}: {reject:?}"),
                }
            }
        }
    }
}
