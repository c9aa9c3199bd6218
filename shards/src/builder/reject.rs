//! Why an input did not become a sample. A small fixed set of categories (so a manifest
//! can be counted and grepped) plus the decoder's own words as detail.

use serde::{Deserialize, Serialize};

/// The category of a rejected input. Serialised in `snake_case` in manifests and `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The file could not be read (permissions, vanished, I/O error).
    Unreadable,
    /// Not a regular file: a named pipe (FIFO), socket or device node, or a symlink to one.
    /// Never opened: opening a FIFO waits for a writer, and a device may never end.
    SpecialFile,
    /// The file has zero bytes.
    Empty,
    /// No known image signature (HTML error pages, text, archives...).
    NotAnImage,
    /// A known image format Tessera does not decode (TIFF, BMP, AVIF...), or a feature of a
    /// supported one its decoder lacks (e.g. arithmetic-coded JPEG).
    UnsupportedFormat,
    /// The header declares more pixels than `--max-pixels`; refused before decoding.
    TooManyPixels,
    /// The header or the pixel data is damaged (truncated, corrupt entropy data...).
    Corrupt,
    /// Labels were requested but this input has none (no class folder, absent from the CSV).
    Unlabelled,
    /// Resizing or re-encoding failed after a successful decode.
    TransformFailed,
    /// A URL-list download answered with an HTTP error status (404, 403, 500 after retries).
    HttpStatus,
    /// A URL-list download did not finish within `--timeout` (after retries).
    Timeout,
    /// A URL-list download failed to connect or broke (after retries), or the URL is bad.
    Network,
    /// The server opted the image out of AI use (`X-Robots-Tag: noai`, ...).
    OptedOut,
    /// The download is larger than `--max-download-size`.
    TooLarge,
}

impl RejectReason {
    /// The `snake_case` name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::SpecialFile => "special_file",
            Self::Empty => "empty",
            Self::NotAnImage => "not_an_image",
            Self::UnsupportedFormat => "unsupported_format",
            Self::TooManyPixels => "too_many_pixels",
            Self::Corrupt => "corrupt",
            Self::Unlabelled => "unlabelled",
            Self::TransformFailed => "transform_failed",
            Self::HttpStatus => "http_status",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::OptedOut => "opted_out",
            Self::TooLarge => "too_large",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected input: category and human detail (the decoder's message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The category.
    pub reason: RejectReason,
    /// What exactly went wrong, for a human.
    pub detail: String,
}

impl Reject {
    /// A reject of category `reason` with `detail`.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}
