//! Per-shard sample index: start reading a shard at sample N without scanning it.
//!
//! # File format
//! Beside `train-000000.tar[.zst|.gz]` lives `train-000000.tar[.zst|.gz].idx`, UTF-8 JSON
//! lines, written atomically:
//! ```text
//! {"format":"tessera-shard-index","version":1,"kind":"zstd-frames","compression":"zstd","shard_bytes":1234,"tar_bytes":20480,"samples":2}
//! {"key":"img000","offset":0,"len":10240,"raw_offset":0}
//! {"key":"img001","offset":10240,"len":9216,"raw_offset":611}
//! ```
//! The header names the `kind` of seek the offsets allow:
//! - `tar`: a plain tar shard; `offset` is a byte offset in the file: seek and read.
//! - `zstd-frames`: a zstd shard in which every sample starts a new zstd frame (what
//!   [`crate::writer`] writes; frames concatenate into one valid zstd stream, so any zstd
//!   tool still reads the shard). `raw_offset` is the sample's frame in the *compressed*
//!   file: seek there and decompress from there.
//! - `stream`: anything else (gzip, zstd written elsewhere): `offset` is in the decompressed
//!   stream, and seeking decompresses and discards up to it.
//!
//! For every kind, `offset` is where the sample's first tar header (extension headers
//! included) starts in the decompressed tar stream and `len` how many tar bytes it spans;
//! `shard_bytes` (the shard's file size) lets a reader notice an index that no longer
//! matches its shard and fall back to scanning.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::AtomicFile;
use crate::compression::{self, Format};
use crate::reader::ShardReader;
use crate::{Sample, ShardError};

/// Value of the header's `format` field.
pub const INDEX_FORMAT: &str = "tessera-shard-index";
/// Version written by this code; readers refuse newer ones.
pub const INDEX_VERSION: u32 = 1;

/// How the offsets of an index can be used to seek.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IndexKind {
    /// Plain tar: `offset` is a file offset.
    Tar,
    /// zstd with one frame per sample: `raw_offset` is a file offset starting a frame.
    ZstdFrames,
    /// Compressed as one stream: seeking decompresses and discards.
    Stream,
}

/// One sample's entry in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    /// The sample key.
    pub key: String,
    /// Offset of the sample's first header in the decompressed tar stream.
    pub offset: u64,
    /// Tar bytes the sample spans.
    pub len: u64,
    /// For `zstd-frames`: offset in the compressed file of the frame starting the sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_offset: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: String,
    version: u32,
    kind: IndexKind,
    compression: Format,
    shard_bytes: u64,
    tar_bytes: u64,
    samples: u64,
}

/// The index of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndex {
    /// The index file (`<shard>.idx`).
    pub path: PathBuf,
    /// How offsets can be used.
    pub kind: IndexKind,
    /// The shard's container format.
    pub compression: Format,
    /// Size of the shard file in bytes.
    pub shard_bytes: u64,
    /// Size of the decompressed tar stream up to the end of the last sample.
    pub tar_bytes: u64,
    /// Every sample in shard order.
    pub samples: Vec<IndexEntry>,
}

/// The index file path for a shard: the shard path with `.idx` appended.
pub fn index_path(shard: &Path) -> PathBuf {
    let mut name = shard.as_os_str().to_os_string();
    name.push(".idx");
    PathBuf::from(name)
}

/// Build the index of a shard written by any tool and write it beside the shard
/// (atomically). This is what `tessera index` runs for each shard.
pub fn write_index_for(shard: &Path) -> Result<ShardIndex, ShardError> {
    let index = ShardIndex::build(shard)?;
    index.write()?;
    Ok(index)
}

impl ShardIndex {
    /// Scan a shard and index it. A damaged shard is an error (an index must describe the
    /// whole shard). zstd shards get `zstd-frames` when every sample starts a frame.
    pub fn build(shard: &Path) -> Result<ShardIndex, ShardError> {
        let url = shard.display().to_string();
        let shard_bytes = std::fs::metadata(shard)
            .map_err(|e| ShardError::io(&url, e))?
            .len();
        let mut reader = ShardReader::open(shard)?;
        let mut sample = Sample::default();
        let mut samples = Vec::new();
        while reader.read_into(&mut sample)? {
            let span = reader.last_span();
            samples.push(IndexEntry {
                key: sample.key.clone(),
                offset: span.offset,
                len: span.len,
                raw_offset: None,
            });
        }
        let tar_bytes = samples.last().map_or(0, |e| e.offset + e.len);
        let mut magic = [0u8; 4];
        let n = File::open(shard)
            .and_then(|mut f| read_up_to(&mut f, &mut magic))
            .map_err(|e| ShardError::io(&url, e))?;
        let compression = Format::detect(&magic[..n]);
        let kind = match compression {
            Format::Tar => IndexKind::Tar,
            Format::Gzip => IndexKind::Stream,
            Format::Zstd => {
                let frames = zstd_frame_starts(shard)?;
                if attach_frames(&mut samples, &frames) {
                    IndexKind::ZstdFrames
                } else {
                    IndexKind::Stream
                }
            }
        };
        Ok(ShardIndex {
            path: index_path(shard),
            kind,
            compression,
            shard_bytes,
            tar_bytes,
            samples,
        })
    }

    /// Load the index beside `shard`, if there is one.
    /// For a remote shard the index is fetched from beside it (absent: `None`).
    pub fn load_for(shard: &Path) -> Result<Option<ShardIndex>, ShardError> {
        let path = index_path(shard);
        if let Some(url) = crate::remote::url_of(&path) {
            return match crate::remote::stream::fetch_small(url)? {
                Some(bytes) => Self::read(&bytes[..], path).map(Some),
                None => Ok(None),
            };
        }
        match File::open(&path) {
            Ok(f) => Self::read(BufReader::new(f), path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ShardError::io(path.display(), e)),
        }
    }

    /// Parse an index; `path` names it in errors.
    pub fn read(input: impl BufRead, path: PathBuf) -> Result<ShardIndex, ShardError> {
        let bad = |line: usize, reason: String| ShardError::IndexFormat {
            path: path.clone(),
            line,
            reason,
        };
        let mut lines = input.lines();
        let first = match lines.next() {
            Some(l) => l.map_err(|e| ShardError::io(path.display(), e))?,
            None => return Err(bad(0, "empty file".into())),
        };
        let header: Header =
            serde_json::from_str(&first).map_err(|e| bad(1, format!("header: {e}")))?;
        if header.format != INDEX_FORMAT {
            return Err(bad(
                1,
                format!("format is `{}`, expected `{INDEX_FORMAT}`", header.format),
            ));
        }
        if header.version > INDEX_VERSION {
            return Err(bad(
                1,
                format!(
                    "version {} is newer than this reader ({INDEX_VERSION})",
                    header.version
                ),
            ));
        }
        let mut samples = Vec::with_capacity(header.samples.min(1 << 20) as usize);
        for (i, line) in lines.enumerate() {
            let line = line.map_err(|e| ShardError::io(path.display(), e))?;
            if line.is_empty() {
                continue;
            }
            let entry: IndexEntry =
                serde_json::from_str(&line).map_err(|e| bad(i + 2, e.to_string()))?;
            if header.kind == IndexKind::ZstdFrames && entry.raw_offset.is_none() {
                return Err(bad(i + 2, "zstd-frames entry without raw_offset".into()));
            }
            samples.push(entry);
        }
        if samples.len() as u64 != header.samples {
            return Err(bad(
                0,
                format!(
                    "header says {} samples, file has {}",
                    header.samples,
                    samples.len()
                ),
            ));
        }
        Ok(ShardIndex {
            path,
            kind: header.kind,
            compression: header.compression,
            shard_bytes: header.shard_bytes,
            tar_bytes: header.tar_bytes,
            samples,
        })
    }

    /// Serialise to `out` in the format described in the module docs.
    pub fn write_to(&self, mut out: impl Write) -> io::Result<()> {
        let header = Header {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            kind: self.kind,
            compression: self.compression,
            shard_bytes: self.shard_bytes,
            tar_bytes: self.tar_bytes,
            samples: self.samples.len() as u64,
        };
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        for entry in &self.samples {
            serde_json::to_writer(&mut out, entry)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// Write to `self.path` atomically.
    pub fn write(&self) -> Result<(), ShardError> {
        let mut file = AtomicFile::create(&self.path)?;
        self.write_to(&mut file)
            .map_err(|e| ShardError::io(self.path.display(), e))?;
        file.commit()
    }

    /// Is this index still about `shard`? (Same file size; the first key is checked again
    /// after every seek.)
    pub fn check_shard(&self, shard: &Path) -> Result<(), ShardError> {
        let len = match crate::remote::url_of(shard) {
            Some(url) => crate::remote::stream::size_of(url)?,
            None => std::fs::metadata(shard)
                .map_err(|e| ShardError::io(shard.display(), e))?
                .len(),
        };
        if len != self.shard_bytes {
            return Err(ShardError::IndexMismatch {
                path: self.path.clone(),
                reason: format!(
                    "index is for a shard of {} bytes, the shard has {len}",
                    self.shard_bytes
                ),
            });
        }
        Ok(())
    }
}

/// Set each sample's `raw_offset` to the compressed offset of the frame that starts at its
/// tar offset. `false` (and nothing set) if some sample does not start a frame.
fn attach_frames(samples: &mut [IndexEntry], frames: &[(u64, u64)]) -> bool {
    let mut raw = Vec::with_capacity(samples.len());
    let mut f = frames.iter().peekable();
    for s in samples.iter() {
        while f.next_if(|&&(_, decoded)| decoded < s.offset).is_some() {}
        match f.peek() {
            Some(&&(compressed, decoded)) if decoded == s.offset => raw.push(compressed),
            _ => return false,
        }
    }
    for (s, r) in samples.iter_mut().zip(raw) {
        s.raw_offset = Some(r);
    }
    true
}

/// `(compressed offset, decompressed offset)` of the start of every zstd frame of a file.
fn zstd_frame_starts(shard: &Path) -> Result<Vec<(u64, u64)>, ShardError> {
    let url = shard.display().to_string();
    let file = File::open(shard).map_err(|e| ShardError::io(&url, e))?;
    let mut input = CountingReader {
        inner: BufReader::with_capacity(compression::FILE_BUFFER, file),
        pos: 0,
    };
    let mut frames = Vec::new();
    let mut decoded = 0u64;
    loop {
        if input
            .fill_buf()
            .map_err(|e| ShardError::io(&url, e))?
            .is_empty()
        {
            return Ok(frames);
        }
        frames.push((input.pos, decoded));
        let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
            .map_err(|e| ShardError::io(&url, e))?
            .single_frame();
        decoded += io::copy(&mut decoder, &mut io::sink()).map_err(|e| ShardError::Decompress {
            url: url.clone(),
            compression: "zstd",
            offset: decoded,
            source: e,
        })?;
        input = decoder.finish();
    }
}

/// A `BufRead` that counts the bytes consumed, to learn where zstd frames start.
struct CountingReader<R> {
    inner: R,
    pos: u64,
}

impl<R: BufRead> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for CountingReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.pos += amt as u64;
        self.inner.consume(amt);
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attaches_frames_only_when_every_sample_starts_one() {
        let mut s = vec![
            IndexEntry {
                key: "a".into(),
                offset: 0,
                len: 1024,
                raw_offset: None,
            },
            IndexEntry {
                key: "b".into(),
                offset: 1024,
                len: 1024,
                raw_offset: None,
            },
        ];
        assert!(!attach_frames(&mut s.clone(), &[(0, 0), (90, 1536)]));
        assert!(attach_frames(&mut s, &[(0, 0), (90, 1024), (170, 2048)]));
        assert_eq!(s[1].raw_offset, Some(90));
    }

    #[test]
    fn round_trips_through_text() {
        let index = ShardIndex {
            path: "x.tar.idx".into(),
            kind: IndexKind::ZstdFrames,
            compression: Format::Zstd,
            shard_bytes: 10,
            tar_bytes: 2048,
            samples: vec![IndexEntry {
                key: "k\n\"x".into(),
                offset: 0,
                len: 2048,
                raw_offset: Some(0),
            }],
        };
        let mut text = Vec::new();
        index.write_to(&mut text).unwrap();
        let back = ShardIndex::read(&text[..], "x.tar.idx".into()).unwrap();
        assert_eq!(back, index);
        let err = ShardIndex::read(&b"{}\n"[..], "y.idx".into()).unwrap_err();
        assert!(
            matches!(err, ShardError::IndexFormat { line: 1, .. }),
            "{err}"
        );
    }
}
