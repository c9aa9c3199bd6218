//! The `.json` field of a built sample: where it came from and what was done to it, so a
//! dataset can always be traced back to its source files.

use serde::Serialize;

use super::prepare::Prepared;

/// Metadata written as each sample's `.json` field.
#[derive(Debug, Serialize)]
pub struct SampleMeta<'a> {
    /// Path relative to its input root (as the manifest reports it).
    pub source: &'a str,
    /// The input root as given on the command line.
    pub input: &'a str,
    /// Real format of the source file (sniffed from content).
    pub format: &'static str,
    /// Width as stored in the source file.
    pub width: u32,
    /// Height as stored in the source file.
    pub height: u32,
    /// EXIF orientation tag of the source (1 = upright).
    pub orientation: u8,
    /// Size of the source file in bytes.
    pub bytes: u64,
    /// sha256 of the source file.
    pub sha256: &'a str,
    /// Class index, when labelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<u32>,
    /// Class name, when labels are names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<&'a str>,
    /// Set when the stored bytes are not the source's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformMeta>,
    /// The caption of a URL-list entry (also the sample's `.txt`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caption: Option<&'a str>,
    /// The other columns of a URL-list entry, as the list had them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub columns: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// What a resize did.
#[derive(Debug, Serialize)]
pub struct TransformMeta {
    /// Always `resize`.
    pub op: &'static str,
    /// Upright size before resizing, `[width, height]`.
    pub from: [u32; 2],
    /// Size stored, `[width, height]`.
    pub to: [u32; 2],
    /// Resampling filter.
    pub filter: &'static str,
    /// Re-encoded as this format.
    pub encoded_as: &'static str,
    /// JPEG quality of the re-encoding.
    pub quality: u8,
    /// EXIF orientation that was applied to the pixels (1 = none needed).
    pub orientation_applied: u8,
    /// Whether an alpha channel was dropped.
    pub alpha_dropped: bool,
}

impl TransformMeta {
    /// The transform of `prepared`, if it was resized.
    pub fn of(prepared: &Prepared) -> Option<TransformMeta> {
        let resized = prepared.resized?;
        Some(TransformMeta {
            op: "resize",
            from: resized.from,
            to: resized.to,
            filter: "lanczos3",
            encoded_as: "jpeg",
            quality: resized.quality,
            orientation_applied: prepared.orientation,
            alpha_dropped: resized.alpha_dropped,
        })
    }
}
