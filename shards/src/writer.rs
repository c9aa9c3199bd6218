//! Writing shards: deterministic, atomic, optionally rotating and indexed.
//!
//! - [`ShardFileWriter`] writes one shard file. Members are ustar with fixed metadata
//!   (mode 0644, uid/gid 0, empty user/group names, mtime 0) and fields in sorted order,
//!   with a PAX `path` record only for names that do not fit ustar: the same samples give
//!   byte-identical shards, whatever the machine or the time. The shard is written under a
//!   hidden temporary name and renamed into place by [`ShardFileWriter::finish`] (see
//!   [`crate::atomic`]); dropping an unfinished writer removes the temporary file.
//! - [`ShardWriter`] rotates over `{prefix}-{000000}.tar[.zst|.gz]` files by sample count
//!   and/or tar bytes, and tells the caller about each shard as it completes.
//!
//! zstd shards put every sample in its own zstd frame (and the end-of-archive blocks in a
//! last one). The frames concatenate into one valid zstd stream, so `zstd -d`/`tar` read
//! the shard as usual, while the index can point at a frame and a reader can start
//! decompressing there. gzip shards are one gzip stream (mtime 0, no file name).
//!
//! Keys must read back as themselves: the last path component may not contain `.` (the
//! reader would split the key there) nor start with `__` (readers skip such members);
//! field names must be non-empty, lower-case and without `/`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ShardError;
use crate::atomic::AtomicFile;
use crate::compression::{Compression, Format};
use crate::index::{IndexEntry, IndexKind, ShardIndex, index_path};
use crate::tar::{self, END_OF_ARCHIVE};

/// What was written: one complete, renamed shard.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardInfo {
    /// The final path of the shard.
    pub path: PathBuf,
    /// Number of samples.
    pub samples: u64,
    /// Size of the shard file in bytes.
    pub bytes: u64,
    /// sha256 of the shard file, lower-case hex.
    pub sha256: String,
    /// Key of the first sample (`None` for an empty shard).
    pub first_key: Option<String>,
    /// Key of the last sample (`None` for an empty shard).
    pub last_key: Option<String>,
}

/// Check that a sample would read back with the same key and fields.
pub fn validate_sample(key: &str, fields: &[(&str, &[u8])]) -> Result<(), ShardError> {
    let bad_key = |reason| {
        Err(ShardError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad_key("key is empty");
    }
    if key.contains('\0') {
        return bad_key("key contains a NUL byte");
    }
    for component in key.split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return bad_key("key has an empty, `.` or `..` path component");
        }
    }
    let last = key.rsplit('/').next().unwrap_or(key);
    if last.contains('.') {
        return bad_key(
            "the last path component contains `.`, so a reader would split the key there",
        );
    }
    if last.starts_with("__") {
        return bad_key("the last path component starts with `__`, which readers skip as metadata");
    }
    if fields.is_empty() {
        return bad_key("sample has no fields");
    }
    for (i, (name, _)) in fields.iter().enumerate() {
        let bad_field = |reason| {
            Err(ShardError::InvalidField {
                key: key.to_string(),
                field: name.to_string(),
                reason,
            })
        };
        if name.is_empty() {
            return bad_field("field name is empty");
        }
        if name.contains('/') || name.contains('\0') {
            return bad_field("field name contains `/` or NUL");
        }
        if name.to_lowercase() != *name {
            return bad_field("field name is not lower-case (readers lower-case extensions)");
        }
        if fields[..i].iter().any(|(other, _)| other == name) {
            return bad_field("field appears twice in the sample");
        }
    }
    Ok(())
}

/// Tar bytes a sample takes (headers, data, padding), as counted for rotation.
pub fn sample_tar_len(key: &str, fields: &[(&str, &[u8])]) -> u64 {
    fields
        .iter()
        .map(|(name, data)| tar::member_len(&member_path(key, name), data.len() as u64))
        .sum()
}

fn member_path(key: &str, field: &str) -> String {
    let mut path = String::with_capacity(key.len() + 1 + field.len());
    path.push_str(key);
    path.push('.');
    path.push_str(field);
    path
}

/// Counts and hashes everything written through it: the shard's size and sha256.
#[derive(Debug)]
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The compression layer between tar bytes and the file.
enum Sink {
    Plain(HashingWriter<AtomicFile>),
    Gzip(flate2::write::GzEncoder<HashingWriter<AtomicFile>>),
    Zstd {
        out: HashingWriter<AtomicFile>,
        compressor: Box<zstd::bulk::Compressor<'static>>,
        frame: Vec<u8>,
    },
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sink::Plain(_) => "Sink::Plain",
            Sink::Gzip(_) => "Sink::Gzip",
            Sink::Zstd { .. } => "Sink::Zstd",
        })
    }
}

impl Sink {
    /// Write `tar` bytes; for zstd as one new frame.
    fn write_chunk(&mut self, tar: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(out) => out.write_all(tar),
            Sink::Gzip(enc) => enc.write_all(tar),
            Sink::Zstd {
                out,
                compressor,
                frame,
            } => {
                frame.clear();
                frame.reserve(zstd::zstd_safe::compress_bound(tar.len()));
                compressor.compress_to_buffer(tar, frame)?;
                out.write_all(frame)
            }
        }
    }

    /// Bytes written to the file so far (for gzip, what the encoder has emitted).
    fn file_bytes(&self) -> u64 {
        match self {
            Sink::Plain(out) | Sink::Zstd { out, .. } => out.bytes,
            Sink::Gzip(enc) => enc.get_ref().bytes,
        }
    }

    fn finish(self) -> io::Result<HashingWriter<AtomicFile>> {
        match self {
            Sink::Plain(out) | Sink::Zstd { out, .. } => Ok(out),
            Sink::Gzip(enc) => enc.finish(),
        }
    }
}

/// Writes one shard file atomically. See the module docs.
#[derive(Debug)]
pub struct ShardFileWriter {
    sink: Sink,
    path: PathBuf,
    compression: Compression,
    /// Tar bytes written so far (the offset of the next sample).
    tar_bytes: u64,
    samples: u64,
    first_key: Option<String>,
    last_key: String,
    /// Entries of the index, when one is to be written.
    index: Option<Vec<IndexEntry>>,
    /// Reused: the tar bytes of one sample.
    sample_buf: Vec<u8>,
    /// Reused: field order (sorted by name).
    order: Vec<usize>,
    /// Reused: `key.field` of a member.
    member_path: String,
}

impl ShardFileWriter {
    /// Start writing the shard that will appear at `final_path` on [`ShardFileWriter::finish`].
    pub fn create(final_path: &Path, compression: Compression) -> Result<Self, ShardError> {
        let url = final_path.display().to_string();
        let out = HashingWriter {
            inner: AtomicFile::create(final_path)?,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let sink = match compression {
            Compression::None => Sink::Plain(out),
            Compression::Gzip { level } => Sink::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .write(out, flate2::Compression::new(level.min(9))),
            ),
            Compression::Zstd { level } => {
                let mut compressor =
                    zstd::bulk::Compressor::new(level).map_err(|e| ShardError::io(&url, e))?;
                compressor
                    .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
                    .map_err(|e| ShardError::io(&url, e))?;
                Sink::Zstd {
                    out,
                    compressor: Box::new(compressor),
                    frame: Vec::new(),
                }
            }
        };
        Ok(ShardFileWriter {
            sink,
            path: final_path.to_path_buf(),
            compression,
            tar_bytes: 0,
            samples: 0,
            first_key: None,
            last_key: String::new(),
            index: None,
            sample_buf: Vec::new(),
            order: Vec::new(),
            member_path: String::new(),
        })
    }

    /// Also write `<shard>.idx` (see [`crate::index`]) when the shard is finished.
    pub fn with_index(mut self, write_index: bool) -> Self {
        self.index = write_index.then(Vec::new);
        self
    }

    /// The path the shard will have.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Samples written so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Tar bytes written so far (before compression).
    pub fn tar_bytes(&self) -> u64 {
        self.tar_bytes
    }

    /// Append one sample; fields are written sorted by name. An invalid key or field is an
    /// error and leaves the shard as it was.
    pub fn write_sample(&mut self, key: &str, fields: &[(&str, &[u8])]) -> Result<(), ShardError> {
        validate_sample(key, fields)?;
        self.write_valid_sample(key, fields)
    }

    fn write_valid_sample(
        &mut self,
        key: &str,
        fields: &[(&str, &[u8])],
    ) -> Result<(), ShardError> {
        self.order.clear();
        self.order.extend(0..fields.len());
        self.order.sort_by_key(|&i| fields[i].0);
        self.sample_buf.clear();
        for &i in &self.order {
            let (name, data) = fields[i];
            self.member_path.clear();
            self.member_path.push_str(key);
            self.member_path.push('.');
            self.member_path.push_str(name);
            tar::append_member(&mut self.sample_buf, &self.member_path, data);
        }
        let raw_offset = self.sink.file_bytes();
        self.sink
            .write_chunk(&self.sample_buf)
            .map_err(|e| ShardError::io(self.path.display(), e))?;
        if let Some(index) = &mut self.index {
            let raw_offset =
                matches!(self.compression, Compression::Zstd { .. }).then_some(raw_offset);
            index.push(IndexEntry {
                key: key.to_string(),
                offset: self.tar_bytes,
                len: self.sample_buf.len() as u64,
                raw_offset,
            });
        }
        self.tar_bytes += self.sample_buf.len() as u64;
        self.samples += 1;
        if self.first_key.is_none() {
            self.first_key = Some(key.to_string());
        }
        self.last_key.clear();
        self.last_key.push_str(key);
        Ok(())
    }

    /// End the archive, make the shard visible under its final name (flush, fsync, rename,
    /// fsync the directory), then write its index if asked.
    pub fn finish(mut self) -> Result<ShardInfo, ShardError> {
        let url = self.path.display().to_string();
        self.sink
            .write_chunk(&END_OF_ARCHIVE)
            .map_err(|e| ShardError::io(&url, e))?;
        let out = self.sink.finish().map_err(|e| ShardError::io(&url, e))?;
        let HashingWriter {
            inner: file,
            hasher,
            bytes,
        } = out;
        file.commit()?;
        let info = ShardInfo {
            path: self.path.clone(),
            samples: self.samples,
            bytes,
            sha256: hex::encode(hasher.finalize()),
            first_key: self.first_key,
            last_key: (self.samples > 0).then_some(self.last_key),
        };
        if let Some(samples) = self.index {
            let kind = match self.compression.format() {
                Format::Tar => IndexKind::Tar,
                Format::Zstd => IndexKind::ZstdFrames,
                Format::Gzip => IndexKind::Stream,
            };
            let index = ShardIndex {
                path: index_path(&self.path),
                kind,
                compression: self.compression.format(),
                shard_bytes: bytes,
                tar_bytes: self.tar_bytes,
                samples,
            };
            index.write()?;
        }
        Ok(info)
    }
}

/// Options of a [`ShardWriter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardWriterOptions {
    /// File name prefix: shards are `{prefix}-{number:06}{.tar|.tar.zst|.tar.gz}`.
    pub prefix: String,
    /// Close a shard when it holds this many samples (`None`: no limit).
    pub max_samples: Option<u64>,
    /// Close a shard before a sample would take its tar bytes (uncompressed, headers
    /// included) past this (`None`: no limit). A sample larger than this gets a shard alone.
    pub max_bytes: Option<u64>,
    /// Whole-shard compression.
    pub compression: Compression,
    /// Number of the first shard (to continue a numbered series).
    pub first_shard_number: u64,
    /// Write `<shard>.idx` beside every shard.
    pub write_index: bool,
}

impl Default for ShardWriterOptions {
    fn default() -> Self {
        ShardWriterOptions {
            prefix: "shard".into(),
            max_samples: None,
            max_bytes: None,
            compression: Compression::None,
            first_shard_number: 0,
            write_index: true,
        }
    }
}

/// Writes samples over a numbered series of shards, rotating by count and/or size.
#[derive(Debug)]
pub struct ShardWriter {
    dir: PathBuf,
    options: ShardWriterOptions,
    current: Option<ShardFileWriter>,
    next_number: u64,
    written: Vec<ShardInfo>,
}

impl ShardWriter {
    /// Write shards into `dir` (which must exist).
    pub fn new(dir: impl Into<PathBuf>, options: ShardWriterOptions) -> Self {
        let next_number = options.first_shard_number;
        ShardWriter {
            dir: dir.into(),
            options,
            current: None,
            next_number,
            written: Vec::new(),
        }
    }

    /// The path of shard number `n`.
    pub fn shard_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!(
            "{}-{n:06}{}",
            self.options.prefix,
            self.options.compression.extension()
        ))
    }

    /// Append a sample. When this closes the current shard (it was full), the completed
    /// shard's info is returned, so the caller can record progress; the sample itself goes
    /// into the next shard. An invalid key or field is an error and changes nothing.
    pub fn write_sample(
        &mut self,
        key: &str,
        fields: &[(&str, &[u8])],
    ) -> Result<Option<ShardInfo>, ShardError> {
        validate_sample(key, fields)?;
        let mut completed = None;
        if let Some(current) = &self.current {
            let full_by_count = self
                .options
                .max_samples
                .is_some_and(|max| current.samples() >= max);
            let full_by_bytes = self
                .options
                .max_bytes
                .is_some_and(|max| current.tar_bytes() + sample_tar_len(key, fields) > max);
            if current.samples() > 0 && (full_by_count || full_by_bytes) {
                completed = self.close_current()?;
            }
        }
        let current = match &mut self.current {
            Some(c) => c,
            None => {
                let path = self.shard_path(self.next_number);
                let writer = ShardFileWriter::create(&path, self.options.compression)?
                    .with_index(self.options.write_index);
                self.next_number += 1;
                self.current.insert(writer)
            }
        };
        current.write_valid_sample(key, fields)?;
        Ok(completed)
    }

    /// Close the current shard now, even if not full (e.g. at a checkpoint). Returns its
    /// info, or `None` if no shard was open.
    pub fn close_current(&mut self) -> Result<Option<ShardInfo>, ShardError> {
        let Some(current) = self.current.take() else {
            return Ok(None);
        };
        let info = current.finish()?;
        self.written.push(info.clone());
        Ok(Some(info))
    }

    /// Shards completed so far, in order.
    pub fn written(&self) -> &[ShardInfo] {
        &self.written
    }

    /// Close the last shard and return every shard written, in order (including those
    /// already returned by [`ShardWriter::write_sample`]). No samples, no shards.
    pub fn finish(mut self) -> Result<Vec<ShardInfo>, ShardError> {
        self.close_current()?;
        Ok(std::mem::take(&mut self.written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_keys_and_fields() {
        let ok: &[(&str, &[u8])] = &[("jpg", b"x"), ("seg.png", b"")];
        assert!(validate_sample("dir.v1/img_1", ok).is_ok());
        for key in ["", "a.b", "d/a.b", "__meta__", "a//b", "../x", "a/", "x\0"] {
            assert!(
                matches!(validate_sample(key, ok), Err(ShardError::InvalidKey { .. })),
                "{key:?}"
            );
        }
        for field in ["", "JPG", "a/b"] {
            let f: &[(&str, &[u8])] = &[(field, b"x")];
            assert!(
                matches!(
                    validate_sample("k", f),
                    Err(ShardError::InvalidField { .. })
                ),
                "{field:?}"
            );
        }
        let dup: &[(&str, &[u8])] = &[("jpg", b"x"), ("jpg", b"y")];
        assert!(validate_sample("k", dup).is_err());
    }

    #[test]
    fn sample_len_matches_what_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardFileWriter::create(&dir.path().join("a.tar"), Compression::None).unwrap();
        let fields: &[(&str, &[u8])] = &[("jpg", &[1; 700]), ("cls", b"3")];
        let long_key = "k".repeat(150);
        w.write_sample("a", fields).unwrap();
        w.write_sample(&long_key, fields).unwrap();
        assert_eq!(
            w.tar_bytes(),
            sample_tar_len("a", fields) + sample_tar_len(&long_key, fields)
        );
    }
}
