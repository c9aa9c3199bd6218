//! Why a decode failed: [`DecodeError`] (with a short reason for counting rejects) and the
//! underlying decoder's error it keeps as its source; sorting zune-jpeg's errors into them.

use zune_jpeg::errors::DecodeErrors as JpegErrors;

/// Why a sample's image could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The field holds no bytes.
    #[error("image field is empty")]
    Empty,
    /// The bytes are not an image format the decoder knows.
    #[error("not a recognised image format ({len} bytes starting {head:02x?})")]
    UnknownFormat {
        /// The first bytes of the field (up to 8), for telling HTML or text from images.
        head: Vec<u8>,
        /// Length of the field.
        len: usize,
    },
    /// A recognised format, or a feature of it, that this build does not decode.
    #[error("{format} image uses an unsupported feature")]
    Unsupported {
        /// The format sniffed from the bytes (`image`'s name where not one of ours).
        format: &'static str,
        /// What the decoder said.
        #[source]
        source: BackendError,
    },
    /// The header declares more pixels than allowed; nothing was allocated.
    #[error("{width}x{height} image exceeds the limit of {max_pixels} pixels")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The configured limit.
        max_pixels: u64,
    },
    /// A decoder wanted more memory than the limit derived from `max_pixels` allows
    /// (e.g. a huge GIF canvas or PNG chunk); refused before allocating.
    #[error("{format} image needs more memory than the pixel limit allows")]
    AllocationLimit {
        /// The format sniffed from the bytes.
        format: &'static str,
        /// What the decoder said.
        #[source]
        source: BackendError,
    },
    /// The data are damaged or truncated.
    #[error("corrupt {format} image")]
    Corrupt {
        /// The format sniffed from the bytes.
        format: &'static str,
        /// What the decoder said.
        #[source]
        source: BackendError,
    },
    /// The decoder panicked (a bug in it, triggered by this input); caught and contained.
    #[error("{format} decoder panicked: {message}")]
    Panicked {
        /// The format sniffed from the bytes.
        format: &'static str,
        /// The panic payload, where it was a string.
        message: String,
    },
}

impl DecodeError {
    /// A short category for counting rejects: `empty`, `unknown_format`, `unsupported`,
    /// `too_many_pixels` or `corrupt` (a caught panic counts as corrupt).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::UnknownFormat { .. } => "unknown_format",
            DecodeError::Unsupported { .. } => "unsupported",
            DecodeError::TooManyPixels { .. } | DecodeError::AllocationLimit { .. } => {
                "too_many_pixels"
            }
            DecodeError::Corrupt { .. } | DecodeError::Panicked { .. } => "corrupt",
        }
    }
}

/// The underlying decoder's error, kept as the `source` of a [`DecodeError`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// From zune-jpeg.
    #[error("zune-jpeg: {0:?}")]
    Jpeg(JpegErrors),
    /// From the `image` crate.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// From libjpeg-turbo (the `libjpeg-turbo` feature): its message code and the message
    /// (a format string, parameters not filled in).
    #[error("libjpeg-turbo: {message} (code {code})")]
    Libjpeg {
        /// libjpeg's message code.
        code: i32,
        /// The message text.
        message: String,
    },
}

/// Sort zune-jpeg's errors into our categories. zune-jpeg does not always report an
/// arithmetic-coded or lossless frame as unsupported (it can fail earlier, on the DAC
/// segment), so the frame type is also read from the markers.
pub(super) fn jpeg_error(error: JpegErrors, bytes: &[u8]) -> DecodeError {
    if matches!(error, JpegErrors::Unsupported(_)) || jpeg_frame_unsupported(bytes) {
        DecodeError::Unsupported {
            format: "jpeg",
            source: BackendError::Jpeg(error),
        }
    } else {
        DecodeError::Corrupt {
            format: "jpeg",
            source: BackendError::Jpeg(error),
        }
    }
}

/// Whether the JPEG's frame header (or a DAC segment) says arithmetic coding or lossless
/// mode, which zune-jpeg cannot decode. Walks the marker segments up to the first SOF.
fn jpeg_frame_unsupported(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        if marker == 0xFF {
            i += 1; // fill byte
            continue;
        }
        match marker {
            // SOF3 lossless, SOF9..SOF15 arithmetic (C8 is reserved, C4 DHT, CC DAC).
            0xC3 | 0xC7 | 0xC9 | 0xCA | 0xCB | 0xCC | 0xCD | 0xCE | 0xCF => return true,
            0xC0 | 0xC1 | 0xC2 | 0xDA => return false,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        i += 2 + len;
    }
    false
}
