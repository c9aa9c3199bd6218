//! JPEG through libjpeg-turbo (the `libjpeg-turbo` feature), for speed and for two things no
//! pure-Rust decoder offers.
//!
//! `mozjpeg-sys` builds libjpeg-turbo's decoder (mozjpeg is a fork that changes only the
//! encoder) from source with its SIMD kernels and links it statically, so the program needs
//! no system library; building needs `nasm`. On the benchmark photos it decodes a whole
//! JPEG with about 15% less CPU than zune-jpeg (docs/PERFORMANCE.md), and it can:
//! - decode only what a crop covers: `jpeg_crop_scanline` restricts the IDCT, upsampling and
//!   colour conversion to the MCU columns under the crop, and `jpeg_skip_scanlines` skips
//!   them for the rows above and below (their entropy-coded data is still parsed: that is
//!   sequential). The crop's pixels are the same as in a full decode, so a single-view
//!   recipe (MAE, SimMIM) gets exactly the images it would get otherwise, faster;
//! - decode at 1/2, 1/4 or 1/8 scale in the DCT domain, when the crop will be downscaled by
//!   at least that much anyway (large web photos cropped to 224). This changes the pixels
//!   slightly (the DCT's low-pass replaces part of the resize filter's), as PIL's
//!   `draft()` does; the box is then rounded to whole pixels of the scaled image.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return: ours unwinds
//! (`mozjpeg-sys` compiles the library with `-fexceptions` for this), the unwind is caught
//! here and the decompressor reset. Warnings that mean damaged pixel data (entropy data cut
//! short, bad Huffman codes, lost restart markers) make the image [`DecodeError::Corrupt`]
//! unless the decoder is lenient, matching the zune-jpeg path; a missing EOI marker or
//! junk between markers does not.
//!
//! CMYK and YCCK JPEGs are left to zune-jpeg (libjpeg cannot convert them to RGB).

use std::ffi::{CStr, c_int, c_long, c_uint, c_ulong};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use image::metadata::Orientation;
use mozjpeg_sys as ffi;

use super::{BackendError, CropRequest, DecodeError, RgbImage};
use crate::transforms::CropBox;

/// Warnings whose presence means some pixels are not what the encoder wrote.
const DAMAGE_WARNINGS: [&str; 5] = [
    "Corrupt JPEG data: premature end of data segment",
    "Corrupt JPEG data: bad Huffman code",
    "Corrupt JPEG data: bad arithmetic code",
    "Corrupt JPEG data: found marker 0x%02x instead of RST%d",
    "Inconsistent progression sequence for component %d coefficient %d",
];

/// The error manager libjpeg calls, with what we learn from its warnings.
/// `#[repr(C)]` with the manager first, so the `*mut jpeg_error_mgr` libjpeg hands back
/// is also a pointer to this.
#[repr(C)]
struct ErrorState {
    manager: ffi::jpeg_error_mgr,
    /// Message codes of [`DAMAGE_WARNINGS`] in this build's message table.
    damage_codes: [c_int; DAMAGE_WARNINGS.len()],
    /// A damage warning was emitted since the last reset.
    damaged: bool,
}

/// The payload our `error_exit` unwinds with.
struct LibjpegFatal(c_int);

/// A reusable libjpeg decompressor: one per worker, kept across images, so libjpeg's
/// permanent allocations (source manager, tables) are made once.
pub(super) struct TurboJpeg {
    // Boxed: libjpeg keeps pointers to both, so neither may move.
    cinfo: Box<ffi::jpeg_decompress_struct>,
    errors: Box<ErrorState>,
}

// SAFETY: the decompressor and its error manager are owned by this value alone and only
// touched through `&mut self`; libjpeg keeps no thread-local or global mutable state.
unsafe impl Send for TurboJpeg {}

impl std::fmt::Debug for TurboJpeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurboJpeg")
    }
}

impl Drop for TurboJpeg {
    fn drop(&mut self) {
        // SAFETY: created in `new`; destroy is valid in every state.
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) }
    }
}

/// A decode's result.
pub(super) struct TurboDecoded {
    pub width: u32,
    pub height: u32,
    pub orientation: Orientation,
    pub scale_denominator: u8,
    /// The drawn crop in the output's pixels (when a [`CropRequest`] was given).
    pub crop: Option<CropBox>,
}

impl TurboJpeg {
    pub fn new() -> Self {
        // SAFETY: zeroed is the documented starting state of both structs; `jpeg_std_error`
        // fills the manager before `jpeg_create_decompress` reads it.
        unsafe {
            let mut errors: Box<ErrorState> = Box::new(std::mem::zeroed());
            ffi::jpeg_std_error(&mut errors.manager);
            errors.manager.error_exit = Some(unwind_error_exit);
            errors.manager.emit_message = Some(record_warning);
            errors.damage_codes = DAMAGE_WARNINGS.map(|text| message_code(&errors.manager, text));
            let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(std::mem::zeroed());
            cinfo.common.err = &mut errors.manager;
            ffi::jpeg_create_decompress(&mut *cinfo);
            TurboJpeg { cinfo, errors }
        }
    }

    /// Decode `bytes` upright into `out`, or only the part of it a crop needs.
    ///
    /// `Ok(None)`: a JPEG this path leaves to zune-jpeg (CMYK, YCCK); `crop` is then left
    /// in place for that path. With a `crop` request and no EXIF rotation, only the crop's rows and MCU columns are decoded,
    /// at the smallest DCT scale that keeps the crop at least `size` pixels on each side.
    /// With a rotation the whole image is decoded and oriented (`unoriented` is scratch).
    pub fn decode(
        &mut self,
        bytes: &[u8],
        out: &mut RgbImage,
        unoriented: &mut RgbImage,
        max_pixels: u64,
        lenient: bool,
        crop: &mut Option<CropRequest<'_>>,
    ) -> Result<Option<TurboDecoded>, DecodeError> {
        self.errors.damaged = false;
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.decode_unguarded(bytes, out, unoriented, max_pixels, crop)
        }));
        // SAFETY: abort is valid in every state; it keeps the object for the next image.
        unsafe { ffi::jpeg_abort_decompress(&mut self.cinfo) };
        let result = match result {
            Ok(result) => result,
            Err(payload) => match payload.downcast::<LibjpegFatal>() {
                Ok(fatal) => Err(DecodeError::Corrupt {
                    format: "jpeg",
                    source: BackendError::Libjpeg {
                        code: fatal.0,
                        message: message_text(&self.errors.manager, fatal.0),
                    },
                }),
                Err(other) => resume_unwind(other),
            },
        };
        if result.is_ok() && self.errors.damaged && !lenient {
            return Err(DecodeError::Corrupt {
                format: "jpeg",
                source: BackendError::Libjpeg {
                    code: self.errors.manager.msg_code,
                    message: message_text(&self.errors.manager, self.errors.manager.msg_code),
                },
            });
        }
        result
    }

    fn decode_unguarded(
        &mut self,
        bytes: &[u8],
        out: &mut RgbImage,
        unoriented: &mut RgbImage,
        max_pixels: u64,
        crop: &mut Option<CropRequest<'_>>,
    ) -> Result<Option<TurboDecoded>, DecodeError> {
        let cinfo = &mut *self.cinfo;
        // SAFETY (this block and the ones below): `cinfo` is a created decompressor; `bytes`
        // outlives every libjpeg call that reads it (all within this function); errors unwind
        // out of these calls as `LibjpegFatal` and are caught by `decode`.
        unsafe {
            ffi::jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
            ffi::jpeg_save_markers(cinfo, 0xE1, 0xFFFF);
            ffi::jpeg_read_header(cinfo, 1);
        }
        let (width, height) = (cinfo.image_width, cinfo.image_height);
        if u64::from(width) * u64::from(height) > max_pixels {
            return Err(DecodeError::TooManyPixels {
                width,
                height,
                max_pixels,
            });
        }
        if matches!(
            cinfo.jpeg_color_space,
            ffi::J_COLOR_SPACE::JCS_CMYK | ffi::J_COLOR_SPACE::JCS_YCCK
        ) {
            return Ok(None);
        }
        cinfo.out_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
        let crop = crop.take();
        let orientation = exif_orientation(cinfo);
        let upright = orientation == Orientation::NoTransforms;

        let (size, draw) = match crop {
            Some(CropRequest { size, draw }) if upright => (size, draw),
            crop => {
                // The whole image, then its orientation; a crop (if asked for) is drawn on
                // the upright size.
                let target = if upright { &mut *out } else { &mut *unoriented };
                unsafe {
                    ffi::jpeg_start_decompress(cinfo);
                    let (columns, rows) = (cinfo.output_width, cinfo.output_height);
                    target.resize(columns, rows);
                    read_rows(cinfo, target, rows);
                    ffi::jpeg_finish_decompress(cinfo);
                }
                if !upright {
                    super::orient::orient(unoriented, orientation, out);
                }
                return Ok(Some(TurboDecoded {
                    width,
                    height,
                    orientation,
                    scale_denominator: 1,
                    crop: crop.map(|request| (request.draw)(out.width, out.height)),
                }));
            }
        };

        let drawn = draw(width, height);
        let denominator = dct_scale(drawn, size);
        cinfo.scale_num = 1;
        cinfo.scale_denom = c_uint::from(denominator);
        let d = f64::from(denominator);
        unsafe { ffi::jpeg_start_decompress(cinfo) };
        let (scaled_w, scaled_h) = (cinfo.output_width, cinfo.output_height);
        // The crop in scaled pixels, widened to whole pixels.
        let x0 = ((drawn.left / d).floor() as u32).min(scaled_w - 1);
        let x1 = (((drawn.left + drawn.width) / d).ceil() as u32).clamp(x0 + 1, scaled_w);
        let y0 = ((drawn.top / d).floor() as u32).min(scaled_h - 1);
        let y1 = (((drawn.top + drawn.height) / d).ceil() as u32).clamp(y0 + 1, scaled_h);
        let (mut x_offset, mut columns) = (x0, x1 - x0);
        unsafe {
            // Widens to MCU boundaries: `x_offset` moves left, `columns` grows.
            ffi::jpeg_crop_scanline(cinfo, &mut x_offset, &mut columns);
            out.resize(columns, y1 - y0);
            skip_rows(cinfo, y0);
            read_rows(cinfo, out, y1 - y0);
            skip_rows(cinfo, scaled_h - y1);
            ffi::jpeg_finish_decompress(cinfo);
        }
        let within = |start: f64, len: f64, limit: u32| {
            let len = len.round().clamp(1.0, f64::from(limit));
            (start.round().clamp(0.0, f64::from(limit) - len), len)
        };
        let (left, width_in_out) = within(
            drawn.left / d - f64::from(x_offset),
            drawn.width / d,
            out.width,
        );
        let (top, height_in_out) =
            within(drawn.top / d - f64::from(y0), drawn.height / d, out.height);
        Ok(Some(TurboDecoded {
            width,
            height,
            orientation,
            scale_denominator: denominator,
            crop: Some(CropBox {
                top,
                left,
                height: height_in_out,
                width: width_in_out,
            }),
        }))
    }
}

/// The largest DCT scale denominator (1, 2, 4 or 8) that leaves the crop at least `size`
/// pixels on its shorter side: decoding smaller and then upsampling would lose detail.
fn dct_scale(crop: CropBox, size: u32) -> u8 {
    let shorter = crop.width.min(crop.height);
    [8u8, 4, 2]
        .into_iter()
        .find(|&d| shorter / f64::from(d) >= f64::from(size))
        .unwrap_or(1)
}

/// Read `rows` scanlines into `image` (whose width is the output width), top to bottom.
///
/// # Safety
/// `cinfo` must be started, with at least `rows` scanlines left and `image` sized for them.
unsafe fn read_rows(cinfo: &mut ffi::jpeg_decompress_struct, image: &mut RgbImage, rows: u32) {
    let stride = image.width as usize * 3;
    for row in image.data.chunks_exact_mut(stride).take(rows as usize) {
        let mut pointer = row.as_mut_ptr();
        // SAFETY: one row of `stride` bytes, as the caller sized it.
        let read = unsafe { ffi::jpeg_read_scanlines(cinfo, &mut pointer, 1) };
        if read != 1 {
            // Only a suspending data source returns 0; the memory source never does.
            break;
        }
    }
}

/// Skip `rows` scanlines (their entropy data is parsed; nothing is reconstructed).
///
/// # Safety
/// `cinfo` must be started, with at least `rows` scanlines left.
unsafe fn skip_rows(cinfo: &mut ffi::jpeg_decompress_struct, rows: u32) {
    if rows > 0 {
        // SAFETY: as the caller promises.
        unsafe { ffi::jpeg_skip_scanlines(cinfo, rows) };
    }
}

/// The EXIF orientation from a saved APP1 marker, if there is one.
fn exif_orientation(cinfo: &ffi::jpeg_decompress_struct) -> Orientation {
    let mut marker = cinfo.marker_list;
    while !marker.is_null() {
        // SAFETY: libjpeg's saved-marker list, valid until the next header is read.
        let saved = unsafe { &*marker };
        if saved.marker == 0xE1 && !saved.data.is_null() {
            // SAFETY: `data_length` bytes at `data`, owned by libjpeg's image pool.
            let data =
                unsafe { std::slice::from_raw_parts(saved.data, saved.data_length as usize) };
            if let Some(tiff) = data.strip_prefix(b"Exif\0\0") {
                return Orientation::from_exif_chunk(tiff).unwrap_or(Orientation::NoTransforms);
            }
        }
        marker = saved.next;
    }
    Orientation::NoTransforms
}

/// The message code of `text` in the library's message table (`-1` if absent).
fn message_code(manager: &ffi::jpeg_error_mgr, text: &str) -> c_int {
    (0..=manager.last_jpeg_message)
        .find(|&code| message_text(manager, code) == text)
        .unwrap_or(-1)
}

/// The (unformatted) text of message `code`.
fn message_text(manager: &ffi::jpeg_error_mgr, code: c_int) -> String {
    if manager.jpeg_message_table.is_null() || !(0..=manager.last_jpeg_message).contains(&code) {
        return format!("libjpeg message {code}");
    }
    // SAFETY: the table has `last_jpeg_message + 1` entries, each null or a C string.
    unsafe {
        let entry = *manager.jpeg_message_table.add(code as usize);
        if entry.is_null() {
            return format!("libjpeg message {code}");
        }
        CStr::from_ptr(entry).to_string_lossy().into_owned()
    }
}

/// libjpeg's fatal-error hook: never returns, unwinds to [`TurboJpeg::decode`].
extern "C-unwind" fn unwind_error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    // SAFETY: `err` is the manager installed in `TurboJpeg::new`.
    let code = unsafe { (*cinfo.err).msg_code };
    resume_unwind(Box::new(LibjpegFatal(code)))
}

/// libjpeg's message hook: level -1 is a warning (recoverable damage), others are traces.
extern "C-unwind" fn record_warning(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    if level != -1 {
        return;
    }
    // SAFETY: `err` points at the `manager` field, the first of a `#[repr(C)]` `ErrorState`.
    let errors = unsafe { &mut *(cinfo.err as *mut ErrorState) };
    errors.manager.num_warnings += 1 as c_long;
    if errors.damage_codes.contains(&errors.manager.msg_code) {
        errors.damaged = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_damage_warning_is_in_the_message_table() {
        let decoder = TurboJpeg::new();
        for (text, code) in DAMAGE_WARNINGS.iter().zip(decoder.errors.damage_codes) {
            assert!(code >= 0, "{text:?} not found in libjpeg's message table");
        }
    }

    #[test]
    fn dct_scale_keeps_the_crop_at_least_the_view_size() {
        let crop = |side: f64| CropBox {
            top: 0.0,
            left: 0.0,
            height: side,
            width: side * 1.5,
        };
        assert_eq!(dct_scale(crop(300.0), 224), 1);
        assert_eq!(dct_scale(crop(448.0), 224), 2);
        assert_eq!(dct_scale(crop(1000.0), 224), 4);
        assert_eq!(dct_scale(crop(4000.0), 224), 8);
        assert_eq!(dct_scale(crop(1791.0), 224), 4);
        assert_eq!(dct_scale(crop(1792.0), 224), 8);
    }
}
