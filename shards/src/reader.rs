//! Reading samples from a shard: tar members grouped into WebDataset samples.
//!
//! The grouping follows the WebDataset reference (`tariterators.py`) exactly:
//! - the key is everything up to the first dot of the *last* path component, directories
//!   included (`a/b.c/d.e.f` → key `a/b.c/d`), the field name is the rest, lower-cased
//!   (`e.f`); a member whose last component has no dot (or starts with one) is skipped;
//! - only *consecutive* members with the same key form a sample (`s3.jpg s4.jpg s3.cls` is
//!   three samples); a sample never spans shards;
//! - directories, links and other non-regular members are skipped, and so are members
//!   whose last component starts with `__` (`__meta__`, `__index__`, ...);
//! - a field appearing twice in one sample is [`ShardError::DuplicateField`].
//!
//! Damage is reported, never hidden: a truncated or malformed shard yields every complete
//! sample before the damage, then one typed error naming the shard and the byte offset in
//! the decompressed tar stream; after an error the reader is finished. A sample whose
//! members were all read intact when a *header* turns out bad is returned before the error
//! (like the reference, which ends the archive there); a sample with a cut or duplicate
//! member is not returned.
//!
//! [`ShardReader::read_into`] fills a caller-owned [`Sample`], reusing its field buffers,
//! and reads member data straight into them: in steady state reading allocates nothing.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use crate::compression::{self, Format};
use crate::error::Chain;
use crate::index::{IndexKind, ShardIndex};
use crate::tar::{MemberKind, TarReader};
use crate::{Sample, ShardError};

/// Split a member path into WebDataset `(key, field)`: `key` is everything up to the first
/// dot of the last path component, `field` the rest (not yet lower-cased). `None` when the
/// last component has no dot or nothing before its first dot.
pub fn split_key(path: &str) -> Option<(&str, &str)> {
    let base = path.rfind('/').map_or(0, |i| i + 1);
    let dot = path[base..].find('.')?;
    if dot == 0 {
        return None;
    }
    Some((&path[..base + dot], &path[base + dot + 1..]))
}

/// True for members WebDataset readers skip by name: last component starting with `__`.
pub fn is_meta_name(path: &str) -> bool {
    let base = path.rfind('/').map_or(0, |i| i + 1);
    path[base..].starts_with("__")
}

/// Where a sample lies in the decompressed tar stream, for the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SampleSpan {
    /// Offset of the sample's first header block (extension headers included).
    pub offset: u64,
    /// Bytes from `offset` to the end of the padding of its last member.
    pub len: u64,
}

/// Reads the samples of one shard from a tar byte stream.
pub struct ShardReader<R> {
    tar: TarReader<R>,
    /// The current tar member is the first of the next sample (read but not consumed).
    pending: bool,
    /// A header error found after the last sample's members, reported on the next call.
    deferred: Option<ShardError>,
    finished: bool,
    next_index: u64,
    last_span: SampleSpan,
    field_name: String,
}

impl<R> std::fmt::Debug for ShardReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardReader")
            .field("url", self.tar.url())
            .field("tar_offset", &self.tar.offset())
            .field("next_index", &self.next_index)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl ShardReader<Box<dyn Read + Send>> {
    /// Open a shard file; compression is detected from its first bytes. The URL in
    /// samples and errors is the path as given.
    /// A remote shard (a path whose text is an `s3://`, `gs://`, `az://` or `http(s)://`
    /// URL, see [`crate::remote`]) is streamed with retries, or read from the local cache.
    pub fn open(path: &Path) -> Result<Self, ShardError> {
        let url = path.display().to_string();
        let input = open_from(path, 0)?;
        Self::new(input, url)
    }

    /// Read a shard from any byte stream (plain, gzip or zstd tar, detected from the magic
    /// bytes). `url` names the shard in samples and errors.
    pub fn new(
        reader: impl Read + Send + 'static,
        url: impl Into<Arc<str>>,
    ) -> Result<Self, ShardError> {
        let url: Arc<str> = url.into();
        let (stream, format) = compression::decompress(reader, &url)?;
        Ok(Self::from_tar_stream(
            stream,
            url,
            format.compression_name(),
            0,
            0,
        ))
    }

    /// Open a shard positioned at sample `sample_index` (0-based). With an index beside
    /// the shard (see [`crate::index`]) this seeks: directly for plain tar and for zstd
    /// shards written one frame per sample, by decompressing and discarding for others.
    /// Without an index (or with one that no longer matches the shard) it reads and
    /// drops the samples before. Asking past the end is [`ShardError::SampleOutOfRange`].
    pub fn open_at(path: &Path, sample_index: u64) -> Result<Self, ShardError> {
        if sample_index == 0 {
            return Self::open(path);
        }
        match ShardIndex::load_for(path) {
            Ok(Some(index)) => match index.check_shard(path) {
                Ok(()) => return Self::open_with_index(path, &index, sample_index),
                Err(e) => tracing::warn!("{}; reading the shard from the start instead", Chain(&e)),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("{}; reading the shard from the start instead", Chain(&e)),
        }
        let mut reader = Self::open(path)?;
        let mut scratch = Sample::default();
        for i in 0..sample_index {
            if !reader.read_into(&mut scratch)? {
                return Err(ShardError::SampleOutOfRange {
                    url: path.display().to_string(),
                    index: sample_index,
                    samples: i,
                });
            }
        }
        // Like the indexed path, starting at the end is out of range: peek at what follows.
        if !reader.pending && !reader.next_field_member()? {
            return Err(ShardError::SampleOutOfRange {
                url: path.display().to_string(),
                index: sample_index,
                samples: sample_index,
            });
        }
        reader.pending = true;
        Ok(reader)
    }

    /// [`ShardReader::open_at`] with an index already loaded and checked.
    pub fn open_with_index(
        path: &Path,
        index: &ShardIndex,
        sample_index: u64,
    ) -> Result<Self, ShardError> {
        let url = path.display().to_string();
        let Some(entry) = index.samples.get(sample_index as usize) else {
            return Err(ShardError::SampleOutOfRange {
                url,
                index: sample_index,
                samples: index.samples.len() as u64,
            });
        };
        let url: Arc<str> = url.into();
        let mut reader = match index.kind {
            IndexKind::Tar | IndexKind::ZstdFrames => {
                let raw = entry.raw_offset.unwrap_or(entry.offset);
                let input =
                    BufReader::with_capacity(compression::FILE_BUFFER, open_from(path, raw)?);
                let format = if index.kind == IndexKind::Tar {
                    Format::Tar
                } else {
                    Format::Zstd
                };
                let stream = compression::decoder(input, format, &url)?;
                Self::from_tar_stream(
                    stream,
                    url,
                    format.compression_name(),
                    entry.offset,
                    sample_index,
                )
            }
            IndexKind::Stream => {
                let (stream, format) = compression::decompress(open_from(path, 0)?, &url)?;
                let mut reader =
                    Self::from_tar_stream(stream, url, format.compression_name(), 0, sample_index);
                reader.tar.skip_to(entry.offset)?;
                reader
            }
        };
        reader.expect_key(&entry.key, index)?;
        Ok(reader)
    }
}

/// The raw bytes of a shard from byte `offset`: a local file, or a remote object.
fn open_from(path: &Path, offset: u64) -> Result<Box<dyn Read + Send>, ShardError> {
    if let Some(url) = crate::remote::url_of(path) {
        return crate::remote::stream::open_read(url, offset);
    }
    let mut file = File::open(path).map_err(|e| ShardError::io(path.display(), e))?;
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| ShardError::io(path.display(), e))?;
    }
    Ok(Box::new(file))
}

impl<R: Read> ShardReader<R> {
    /// Read an already decompressed tar stream. `start_offset` is where `stream` starts in
    /// the tar stream and `first_index` the index of its first sample (both 0 unless
    /// resuming); `compression` names the layer below for error messages.
    pub fn from_tar_stream(
        stream: R,
        url: Arc<str>,
        compression: Option<&'static str>,
        start_offset: u64,
        first_index: u64,
    ) -> Self {
        ShardReader {
            tar: TarReader::new(stream, url, compression, start_offset),
            pending: false,
            deferred: None,
            finished: false,
            next_index: first_index,
            last_span: SampleSpan::default(),
            field_name: String::new(),
        }
    }

    /// The shard's URL.
    pub fn url(&self) -> &Arc<str> {
        self.tar.url()
    }

    /// Where the sample last returned by [`ShardReader::read_into`] lies in the tar stream.
    pub fn last_span(&self) -> SampleSpan {
        self.last_span
    }

    /// Bytes of the decompressed tar stream consumed so far.
    pub fn tar_offset(&self) -> u64 {
        self.tar.offset()
    }

    /// Fill `sample` with the next sample, reusing its buffers. Returns `Ok(false)` at the
    /// clean end of the shard. After an error the reader is finished (returns `Ok(false)`).
    pub fn read_into(&mut self, sample: &mut Sample) -> Result<bool, ShardError> {
        let result = self.read_sample(sample);
        if !matches!(result, Ok(true)) {
            self.finished = true;
            sample.clear();
        }
        result
    }

    fn read_sample(&mut self, sample: &mut Sample) -> Result<bool, ShardError> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if self.finished {
            return Ok(false);
        }
        sample.clear();
        if !Arc::ptr_eq(&sample.url, self.tar.url()) {
            sample.url = self.tar.url().clone();
        }
        loop {
            if !self.pending {
                match self.next_field_member() {
                    Ok(true) => {}
                    // End of the archive: the sample in progress (if any) is complete.
                    Ok(false) => return Ok(self.finish_sample(sample)),
                    // A bad header after whole members: those members are intact, so the
                    // sample in progress is returned and the error on the next call.
                    Err(e) if !sample.fields().is_empty() => {
                        self.deferred = Some(e);
                        return Ok(self.finish_sample(sample));
                    }
                    Err(e) => return Err(e),
                }
            }
            self.pending = false;
            let member = self.tar.member();
            // `next_field_member` only stops at members that have a key.
            let Some((key, field)) = split_key(&member.path) else {
                continue;
            };
            if sample.fields().is_empty() {
                sample.key.push_str(key);
                self.last_span.offset = member.header_offset;
            } else if sample.key != key {
                self.pending = true;
                return Ok(self.finish_sample(sample));
            }
            self.field_name.clear();
            self.field_name.push_str(field);
            if self.field_name.is_ascii() {
                self.field_name.make_ascii_lowercase();
            } else {
                self.field_name = self.field_name.to_lowercase();
            }
            if sample.field(&self.field_name).is_some() {
                return Err(ShardError::DuplicateField {
                    url: self.tar.url().to_string(),
                    key: sample.key.clone(),
                    field: self.field_name.clone(),
                    offset: member.header_offset,
                });
            }
            let buf = sample.push_field(&self.field_name);
            self.tar.read_data(buf)?;
            self.last_span.len = self.tar.offset() - self.last_span.offset;
        }
    }

    /// Advance to the next member that is a sample field; `false` at the end.
    fn next_field_member(&mut self) -> Result<bool, ShardError> {
        while self.tar.next_member()? {
            let member = self.tar.member();
            let wanted = member.kind == Some(MemberKind::Regular)
                && !is_meta_name(&member.path)
                && split_key(&member.path).is_some();
            if wanted {
                return Ok(true);
            }
            tracing::trace!(url = %self.tar.url(), path = %member.path, "skipping tar member");
        }
        Ok(false)
    }

    fn finish_sample(&mut self, sample: &mut Sample) -> bool {
        if sample.fields().is_empty() {
            return false;
        }
        sample.index_in_shard = self.next_index;
        self.next_index += 1;
        true
    }

    /// After a seek: the first sample must have the key the index promised.
    fn expect_key(&mut self, key: &str, index: &ShardIndex) -> Result<(), ShardError> {
        // Peek at the first member without consuming it.
        if !self.next_field_member()? {
            return Err(ShardError::IndexMismatch {
                path: index.path.clone(),
                reason: format!("no sample at the indexed offset (expected `{key}`)"),
            });
        }
        self.pending = true;
        let found = split_key(&self.tar.member().path)
            .map(|(k, _)| k)
            .unwrap_or_default();
        if found != key {
            return Err(ShardError::IndexMismatch {
                path: index.path.clone(),
                reason: format!("expected sample `{key}` at the indexed offset, found `{found}`"),
            });
        }
        Ok(())
    }

    /// An iterator of owned samples (allocates per sample; use `read_into` in hot loops).
    pub fn samples(self) -> Samples<R> {
        Samples { reader: self }
    }
}

/// Iterator over the samples of a shard; see [`ShardReader::samples`].
pub struct Samples<R> {
    reader: ShardReader<R>,
}

impl<R> std::fmt::Debug for Samples<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Samples")
            .field("reader", &self.reader)
            .finish()
    }
}

impl<R: Read> Iterator for Samples<R> {
    type Item = Result<Sample, ShardError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut sample = Sample::default();
        match self.reader.read_into(&mut sample) {
            Ok(true) => Some(Ok(sample)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::{END_OF_ARCHIVE, append_member};

    fn read_all(tar: Vec<u8>) -> (Vec<(String, Vec<String>)>, Option<ShardError>) {
        let mut reader = ShardReader::new(std::io::Cursor::new(tar), "mem.tar").unwrap();
        let mut sample = Sample::default();
        let mut out = Vec::new();
        loop {
            match reader.read_into(&mut sample) {
                Ok(true) => out.push((
                    sample.key.clone(),
                    sample.fields().iter().map(|f| f.name.clone()).collect(),
                )),
                Ok(false) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[test]
    fn splits_keys_like_webdataset() {
        assert_eq!(split_key("a/b.c/d.e.f"), Some(("a/b.c/d", "e.f")));
        assert_eq!(split_key("k.JPG"), Some(("k", "JPG")));
        assert_eq!(split_key("k."), Some(("k", "")));
        assert_eq!(split_key("dir/noext"), None);
        assert_eq!(split_key("dir/.hidden"), None);
        assert!(is_meta_name("x/__meta__.json") && !is_meta_name("__x/k.jpg"));
    }

    #[test]
    fn groups_consecutive_members_and_skips_meta() {
        let mut tar = Vec::new();
        for (p, d) in [
            ("__meta__", "m"),
            ("a.jpg", "1"),
            ("a.CLS", "2"),
            ("b.jpg", "3"),
            ("a.cls", "4"),
            ("x/__k__.txt", ""),
        ] {
            append_member(&mut tar, p, d.as_bytes());
        }
        tar.extend_from_slice(&END_OF_ARCHIVE);
        let (samples, err) = read_all(tar);
        assert!(err.is_none());
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            samples,
            vec![
                ("a".into(), names(&["jpg", "cls"])),
                ("b".into(), names(&["jpg"])),
                ("a".into(), names(&["cls"])),
            ]
        );
    }

    #[test]
    fn duplicate_field_is_an_error_after_complete_samples() {
        let mut tar = Vec::new();
        for p in ["a.jpg", "b.jpg", "b.JPG"] {
            append_member(&mut tar, p, b"x");
        }
        tar.extend_from_slice(&END_OF_ARCHIVE);
        let (samples, err) = read_all(tar);
        assert_eq!(samples.len(), 1);
        assert!(
            matches!(err, Some(ShardError::DuplicateField { key, field, offset: 2048, .. }) if key == "b" && field == "jpg")
        );
    }

    #[test]
    fn empty_archive_has_no_samples_and_empty_stream_is_truncated() {
        let (s, e) = read_all(END_OF_ARCHIVE.to_vec());
        assert!(s.is_empty() && e.is_none());
        let (s, e) = read_all(Vec::new());
        assert!(s.is_empty() && matches!(e, Some(ShardError::Truncated { offset: 0, .. })));
    }

    /// Every cut of a shard yields a prefix of its samples, then a truncation error; the
    /// last sample may lack fields only when the cut falls between its members.
    #[test]
    fn every_cut_yields_a_prefix_then_truncated() {
        let mut tar = Vec::new();
        for i in 0..4 {
            for (f, n) in [("cls", 1), ("jpg", 700 + i * 300), ("json", 0)] {
                append_member(&mut tar, &format!("k{i}.{f}"), &vec![i as u8; n]);
            }
        }
        tar.extend_from_slice(&END_OF_ARCHIVE);
        let (full, err) = read_all(tar.clone());
        assert!(err.is_none() && full.len() == 4);
        for cut in (0..tar.len() - END_OF_ARCHIVE.len())
            .step_by(97)
            .chain([512, 1024, 2048])
        {
            let (got, err) = read_all(tar[..cut].to_vec());
            assert!(
                matches!(err, Some(ShardError::Truncated { .. })),
                "cut {cut}: {err:?}"
            );
            if let Some((last, before)) = got.split_last() {
                assert_eq!(before, &full[..before.len()], "cut {cut}");
                let whole = &full[before.len()];
                assert_eq!(last.0, whole.0);
                assert_eq!(last.1[..], whole.1[..last.1.len()], "cut {cut}");
            }
        }
    }

    /// Short reads (a pipe, a network stream) change nothing.
    #[test]
    fn one_byte_reads_give_the_same_samples() {
        struct OneByte(std::io::Cursor<Vec<u8>>);
        impl Read for OneByte {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(1);
                self.0.read(&mut buf[..n])
            }
        }
        let mut tar = Vec::new();
        for p in ["a.jpg", "a.cls", "b.jpg"] {
            append_member(&mut tar, p, &[5u8; 1500]);
        }
        tar.extend_from_slice(&END_OF_ARCHIVE);
        let (want, _) = read_all(tar.clone());
        let reader = ShardReader::from_tar_stream(
            OneByte(std::io::Cursor::new(tar)),
            Arc::from("x"),
            None,
            0,
            0,
        );
        let got: Vec<Sample> = reader.samples().collect::<Result<_, _>>().unwrap();
        let got: Vec<(String, Vec<String>)> = got
            .iter()
            .map(|s| {
                (
                    s.key.clone(),
                    s.fields().iter().map(|f| f.name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn reuses_field_buffers() {
        let mut tar = Vec::new();
        for p in ["a.jpg", "b.jpg"] {
            append_member(&mut tar, p, &[1u8; 4000]);
        }
        tar.extend_from_slice(&END_OF_ARCHIVE);
        let mut reader = ShardReader::new(std::io::Cursor::new(tar), "mem.tar").unwrap();
        let mut sample = Sample::default();
        assert!(reader.read_into(&mut sample).unwrap());
        let ptr = sample.fields()[0].data.as_ptr();
        assert!(reader.read_into(&mut sample).unwrap());
        assert_eq!(sample.fields()[0].data.as_ptr(), ptr);
        assert_eq!(sample.index_in_shard, 1);
        assert_eq!(&*sample.url, "mem.tar");
    }
}
