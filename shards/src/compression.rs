//! Whole-shard compression: choosing it when writing, detecting it when reading.
//!
//! Readers never trust a file name: the format is detected from the first bytes (gzip
//! `1f 8b`, zstd `28 b5 2f fd`, anything else is read as plain tar). Concatenated gzip
//! members and concatenated zstd frames are read as one stream, which is what lets the
//! writer put every sample of a `.tar.zst` shard in its own zstd frame (see
//! [`crate::index`]).

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::str::FromStr;

use crate::ShardError;

/// Buffer between a decompressor and the tar reader.
pub(crate) const DECODED_BUFFER: usize = 1 << 20;
/// Buffer between the file and a decompressor (or the tar reader, for plain tar).
pub(crate) const FILE_BUFFER: usize = 1 << 20;

/// How a shard is compressed as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Compression {
    /// Plain tar (`.tar`).
    #[default]
    None,
    /// zstd (`.tar.zst`), one frame per sample; `level` 1..=22 (3 is zstd's default).
    Zstd {
        /// zstd level, 1 (fast) ..= 22 (small).
        level: i32,
    },
    /// gzip (`.tar.gz`) as one stream; `level` 0..=9 (6 is gzip's default).
    Gzip {
        /// gzip level, 0 (store) ..= 9 (small).
        level: u32,
    },
}

impl Compression {
    /// zstd at its default level.
    pub const ZSTD: Compression = Compression::Zstd { level: 3 };
    /// gzip at its default level.
    pub const GZIP: Compression = Compression::Gzip { level: 6 };

    /// The file name suffix of a shard: `.tar`, `.tar.zst` or `.tar.gz`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => ".tar",
            Compression::Zstd { .. } => ".tar.zst",
            Compression::Gzip { .. } => ".tar.gz",
        }
    }

    /// The format this compression produces.
    pub fn format(self) -> Format {
        match self {
            Compression::None => Format::Tar,
            Compression::Zstd { .. } => Format::Zstd,
            Compression::Gzip { .. } => Format::Gzip,
        }
    }
}

impl FromStr for Compression {
    type Err = ShardError;

    /// `none`, `zstd`, `zstd:19`, `gzip`, `gzip:9` (case-insensitive; `gz`, `zst` too).
    fn from_str(spec: &str) -> Result<Self, ShardError> {
        let bad = || ShardError::UnknownCompression {
            spec: spec.to_string(),
        };
        let lower = spec.trim().to_ascii_lowercase();
        let (name, level) = match lower.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (lower.as_str(), None),
        };
        match (name, level) {
            ("none" | "tar", None) => Ok(Compression::None),
            ("zstd" | "zst", None) => Ok(Compression::ZSTD),
            ("zstd" | "zst", Some(l)) => match l.parse::<i32>() {
                Ok(level @ 1..=22) => Ok(Compression::Zstd { level }),
                _ => Err(bad()),
            },
            ("gzip" | "gz", None) => Ok(Compression::GZIP),
            ("gzip" | "gz", Some(l)) => match l.parse::<u32>() {
                Ok(level @ 0..=9) => Ok(Compression::Gzip { level }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => write!(f, "none"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
            Compression::Gzip { level } => write!(f, "gzip:{level}"),
        }
    }
}

/// The container format of a byte stream, as detected from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Plain tar (or anything that is not gzip or zstd; the tar reader judges it).
    Tar,
    /// gzip, possibly several concatenated members.
    Gzip,
    /// zstd, possibly several concatenated frames.
    Zstd,
}

impl Format {
    /// Detect from the first bytes of a stream.
    pub fn detect(magic: &[u8]) -> Format {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else {
            Format::Tar
        }
    }

    /// Name used in errors: `None` for plain tar.
    pub fn compression_name(self) -> Option<&'static str> {
        match self {
            Format::Tar => None,
            Format::Gzip => Some("gzip"),
            Format::Zstd => Some("zstd"),
        }
    }
}

/// Wrap `input` (raw shard bytes) in the right decompressor, detected from its first bytes.
/// Returns the decompressed stream and its format.
pub fn decompress<R: Read + Send + 'static>(
    input: R,
    url: &str,
) -> Result<(Box<dyn Read + Send>, Format), ShardError> {
    let mut input = BufReader::with_capacity(FILE_BUFFER, input);
    let format = loop {
        match input.fill_buf() {
            // A first read shorter than the magic only happens on odd streams (pipes):
            // gzip and zstd magic is at most 4 bytes and real readers return more.
            Ok(buf) => break Format::detect(buf),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ShardError::io(url, e)),
        }
    };
    Ok((decoder(input, format, url)?, format))
}

/// A decoder of `format` over an already buffered stream.
pub(crate) fn decoder<R: BufRead + Send + 'static>(
    input: R,
    format: Format,
    url: &str,
) -> Result<Box<dyn Read + Send>, ShardError> {
    Ok(match format {
        Format::Tar => Box::new(input),
        Format::Gzip => Box::new(BufReader::with_capacity(
            DECODED_BUFFER,
            flate2::bufread::MultiGzDecoder::new(input),
        )),
        Format::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| ShardError::io(url, e))?;
            Box::new(BufReader::with_capacity(DECODED_BUFFER, decoder))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        assert_eq!(
            "zstd".parse::<Compression>().unwrap(),
            Compression::Zstd { level: 3 }
        );
        assert_eq!(
            "zstd:19".parse::<Compression>().unwrap(),
            Compression::Zstd { level: 19 }
        );
        assert_eq!(
            "GZIP".parse::<Compression>().unwrap(),
            Compression::Gzip { level: 6 }
        );
        assert_eq!(
            "gzip:9".parse::<Compression>().unwrap(),
            Compression::Gzip { level: 9 }
        );
        for bad in ["zstd:0", "zstd:23", "gzip:10", "lz4", "", "none:3"] {
            assert!(bad.parse::<Compression>().is_err(), "{bad}");
        }
        for c in [
            Compression::None,
            Compression::ZSTD,
            Compression::Gzip { level: 1 },
        ] {
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
        }
    }

    #[test]
    fn detects_by_magic_not_name() {
        assert_eq!(Format::detect(&[0x1f, 0x8b, 8, 0]), Format::Gzip);
        assert_eq!(Format::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Format::Zstd);
        assert_eq!(Format::detect(b"a.jpg\0\0\0"), Format::Tar);
        assert_eq!(Format::detect(b""), Format::Tar);
    }

    #[test]
    fn decompresses_concatenated_zstd_frames() {
        let mut data = zstd::bulk::compress(b"hello ", 3).unwrap();
        data.extend(zstd::bulk::compress(b"world", 3).unwrap());
        let (mut r, f) = decompress(std::io::Cursor::new(data), "x").unwrap();
        assert_eq!(f, Format::Zstd);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");
    }
}
