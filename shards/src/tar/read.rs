//! Reading tar members: headers checked, PAX and GNU extensions applied, data straight
//! into the caller's buffer. See the parent module for what is accepted.

use std::io::{self, Read};
use std::sync::Arc;

use super::{BLOCK, checksums, padding};
use crate::ShardError;

/// Largest PAX or GNU long-name extension data we accept (real ones are a few hundred
/// bytes; this stops a hostile header from making us allocate gigabytes).
const MAX_EXTENSION_BYTES: u64 = 1 << 20;

/// At most this much is reserved up front for a member's data; a larger member grows the
/// buffer as bytes actually arrive, so a lying size field cannot force a huge allocation.
const MAX_UPFRONT_RESERVE: u64 = 64 << 20;

/// Member sizes above this (1 PiB) are malformed headers, not data: it keeps every offset
/// computation far from overflow.
const MAX_MEMBER_SIZE: u64 = 1 << 50;

/// What a member is, as far as a WebDataset reader cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A regular file (`0`, NUL or contiguous `7`): a field of a sample.
    Regular,
    /// A directory (`5`): skipped.
    Directory,
    /// Anything else (links, devices, FIFOs, sparse files, unknown types): skipped.
    Other(u8),
}

/// The current member's header, with PAX and GNU extensions already applied.
#[derive(Debug, Default, Clone)]
pub struct Member {
    /// The member path (PAX `path=` or GNU long name if present, else ustar prefix/name).
    pub path: String,
    /// Data bytes (PAX `size=` if present, else the header's size field).
    pub size: u64,
    /// The member type.
    pub kind: Option<MemberKind>,
    /// Offset of the member's first header block, extension headers included.
    pub header_offset: u64,
}

/// Streaming reader of tar members from any byte stream.
pub struct TarReader<R> {
    inner: R,
    url: Arc<str>,
    /// Name of the compression below us, for error messages (`None` = plain tar).
    compression: Option<&'static str>,
    /// Bytes consumed from `inner` so far (plus the starting offset).
    offset: u64,
    member: Member,
    /// Data bytes of the current member not yet consumed.
    remaining: u64,
    /// Padding after the current member's data not yet consumed.
    padding: u64,
    ended: bool,
    header: [u8; BLOCK],
    extension: Vec<u8>,
    /// Path from a PAX or GNU long-name header (reused).
    ext_path: String,
}

impl<R> std::fmt::Debug for TarReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarReader")
            .field("url", &self.url)
            .field("offset", &self.offset)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl<R> TarReader<R> {
    /// The shard URL used in errors.
    pub fn url(&self) -> &Arc<str> {
        &self.url
    }

    /// Bytes of the tar stream consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The member found by the last successful [`TarReader::next_member`].
    pub fn member(&self) -> &Member {
        &self.member
    }
}

impl<R: Read> TarReader<R> {
    /// A reader of `inner`, whose first byte is at `start_offset` of the tar stream
    /// (non-zero when resuming from an index).
    pub fn new(
        inner: R,
        url: Arc<str>,
        compression: Option<&'static str>,
        start_offset: u64,
    ) -> Self {
        TarReader {
            inner,
            url,
            compression,
            offset: start_offset,
            member: Member::default(),
            remaining: 0,
            padding: 0,
            ended: false,
            header: [0; BLOCK],
            extension: Vec::new(),
            ext_path: String::new(),
        }
    }

    /// Advance to the next member, skipping what is left of the current one. Returns
    /// `false` at the end of the archive. Extension headers are consumed and applied.
    pub fn next_member(&mut self) -> Result<bool, ShardError> {
        if self.ended {
            return Ok(false);
        }
        self.skip_rest()?;
        // Where the member's path comes from: 0 = ustar fields, 1 = GNU `L`, 2 = PAX `path`
        // (PAX wins over GNU). Extension paths go to the reused `self.ext_path`.
        let mut path_source = 0u8;
        let mut pax_size: Option<u64> = None;
        let mut first_header: Option<u64> = None;
        loop {
            let header_offset = self.offset;
            let n = self.read_block()?;
            if n == 0 {
                if first_header.is_some() {
                    return Err(
                        self.truncated(header_offset, "member header after an extension header")
                    );
                }
                // Every tar writer ends the archive with zero blocks; a stream that stops on
                // a header boundary without them was cut there (a member or more is lost).
                return Err(self.truncated(
                    header_offset,
                    "end-of-archive marker missing: the stream stops between members",
                ));
            }
            if n < BLOCK {
                return Err(self.truncated(header_offset, "member header"));
            }
            if self.header.iter().all(|&b| b == 0) {
                if first_header.is_some() {
                    return Err(self.malformed(
                        header_offset,
                        "end-of-archive block right after an extension header".into(),
                    ));
                }
                self.ended = true;
                return Ok(false);
            }
            verify_checksum(&self.header)
                .map_err(|reason| self.malformed(header_offset, reason))?;
            let typeflag = self.header[156];
            let size = parse_number(&self.header[124..136])
                .map_err(|reason| self.malformed(header_offset, format!("size field: {reason}")))?;
            first_header.get_or_insert(header_offset);
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    self.read_extension(size, header_offset)?;
                    match typeflag {
                        b'x' => {
                            let has_path =
                                parse_pax(&self.extension, &mut self.ext_path, &mut pax_size)
                                    .map_err(|reason| {
                                        self.malformed(
                                            header_offset,
                                            format!("pax header: {reason}"),
                                        )
                                    })?;
                            if has_path {
                                path_source = 2;
                            }
                        }
                        b'L' if path_source < 2 => {
                            self.ext_path.clear();
                            self.ext_path
                                .push_str(&String::from_utf8_lossy(c_str(&self.extension)));
                            path_source = 1;
                        }
                        // Global PAX headers and GNU long link names do not change a
                        // member's name or size: ignored, as WebDataset readers do.
                        _ => {}
                    }
                }
                _ => {
                    let kind = match typeflag {
                        b'0' | 0 | b'7' => MemberKind::Regular,
                        b'5' => MemberKind::Directory,
                        other => MemberKind::Other(other),
                    };
                    // Like Python's tarfile: link, device, directory and FIFO headers carry
                    // no data whatever their size field says; other types do.
                    let has_data = !matches!(typeflag, b'1'..=b'6');
                    let size = pax_size.unwrap_or(size);
                    if size > MAX_MEMBER_SIZE {
                        let reason = format!("member size {size} is beyond any real file");
                        return Err(self.malformed(first_header.unwrap_or(header_offset), reason));
                    }
                    let member = &mut self.member;
                    member.path.clear();
                    if path_source > 0 {
                        member.path.push_str(&self.ext_path);
                    } else {
                        ustar_path(&self.header, &mut member.path);
                    }
                    member.size = if has_data { size } else { 0 };
                    member.kind = Some(kind);
                    member.header_offset = first_header.unwrap_or(header_offset);
                    self.remaining = member.size;
                    self.padding = padding(member.size);
                    return Ok(true);
                }
            }
        }
    }

    /// Append the current member's data to `buf` (reading straight into it) and consume
    /// its padding. A short read is [`ShardError::Truncated`] at the member's header.
    pub fn read_data(&mut self, buf: &mut Vec<u8>) -> Result<(), ShardError> {
        let want = self.remaining;
        buf.reserve(want.min(MAX_UPFRONT_RESERVE) as usize);
        let got = loop {
            match (&mut self.inner).take(want).read_to_end(buf) {
                Ok(n) => break n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A compressed stream cut inside this member: the damage starts at its header.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    let what = format!(
                        "data of member `{}`: compressed stream ends early",
                        self.member.path
                    );
                    return Err(self.truncated(self.member.header_offset, &what));
                }
                Err(e) => return Err(self.io_error(e)),
            }
        };
        self.offset += got;
        self.remaining -= got;
        if got < want {
            let what = format!(
                "data of member `{}`: {got} of {want} bytes",
                self.member.path
            );
            return Err(self.truncated(self.member.header_offset, &what));
        }
        self.skip_rest()
    }

    /// Skip the rest of the current member's data and padding.
    pub fn skip_rest(&mut self) -> Result<(), ShardError> {
        let want = self.remaining + self.padding;
        if want == 0 {
            return Ok(());
        }
        let got = loop {
            match io::copy(&mut (&mut self.inner).take(want), &mut io::sink()) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            }
        };
        self.offset += got;
        self.remaining = 0;
        self.padding = 0;
        if got < want {
            let what = format!("data of member `{}`", self.member.path);
            return Err(self.truncated(self.member.header_offset, &what));
        }
        Ok(())
    }

    /// Skip forward to `offset` in the tar stream, reading and discarding (to resume in a
    /// stream that cannot seek). Only between members.
    pub fn skip_to(&mut self, offset: u64) -> Result<(), ShardError> {
        let want = offset.saturating_sub(self.offset);
        let got = io::copy(&mut (&mut self.inner).take(want), &mut io::sink())
            .map_err(|e| self.io_error(e))?;
        self.offset += got;
        if got < want {
            return Err(self.truncated(self.offset, "stream ends before the offset to resume at"));
        }
        Ok(())
    }

    /// Read an extension header's data (PAX records, GNU long name) into `self.extension`.
    fn read_extension(&mut self, size: u64, header_offset: u64) -> Result<(), ShardError> {
        if size > MAX_EXTENSION_BYTES {
            return Err(self.malformed(
                header_offset,
                format!("extension header of {size} bytes (limit {MAX_EXTENSION_BYTES})"),
            ));
        }
        self.extension.clear();
        let got = (&mut self.inner)
            .take(size)
            .read_to_end(&mut self.extension)
            .map_err(|e| self.io_error(e))? as u64;
        self.offset += got;
        if got < size {
            return Err(self.truncated(header_offset, "extension header data"));
        }
        self.remaining = 0;
        self.padding = padding(size);
        self.skip_rest()
    }

    /// Fill `self.header`; returns how many bytes were read (less than a block only at EOF).
    fn read_block(&mut self) -> Result<usize, ShardError> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut self.header[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            }
        }
        self.offset += filled as u64;
        Ok(filled)
    }

    fn truncated(&self, offset: u64, what: &str) -> ShardError {
        ShardError::Truncated {
            url: self.url.to_string(),
            offset,
            what: what.to_string(),
        }
    }

    fn malformed(&self, offset: u64, reason: String) -> ShardError {
        ShardError::MalformedHeader {
            url: self.url.to_string(),
            offset,
            reason,
        }
    }

    /// Classify an error from the stream below: a cut compressed stream is truncation,
    /// other decoder errors are corruption, the rest plain I/O.
    fn io_error(&self, e: io::Error) -> ShardError {
        match (e.kind(), self.compression) {
            (io::ErrorKind::UnexpectedEof, _) => {
                self.truncated(self.offset, &format!("compressed stream ends early: {e}"))
            }
            (_, Some(compression)) if e.kind() != io::ErrorKind::PermissionDenied => {
                ShardError::Decompress {
                    url: self.url.to_string(),
                    compression,
                    offset: self.offset,
                    source: e,
                }
            }
            _ => ShardError::io(&self.url, e),
        }
    }
}

/// Check the header checksum (unsigned sum, or the historic signed sum).
fn verify_checksum(header: &[u8; BLOCK]) -> Result<(), String> {
    let stored = parse_number(&header[148..156]).map_err(|r| format!("checksum field: {r}"))?;
    let (unsigned, signed) = checksums(header);
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err(format!(
            "checksum mismatch: header says {stored}, block sums to {unsigned}"
        ))
    }
}

/// Parse a numeric header field: octal text (NUL/space padded) or GNU base-256.
pub(super) fn parse_number(field: &[u8]) -> Result<u64, String> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        if first & 0x40 != 0 {
            return Err("negative base-256 number".into());
        }
        let mut value: u64 = (first & 0x3f) as u64;
        for &b in &field[1..] {
            value = value.checked_mul(256).ok_or("base-256 number overflows")? | b as u64;
        }
        return Ok(value);
    }
    let text = field.split(|&b| b == 0).next().unwrap_or_default();
    let text = trim_ascii(text);
    let mut value = 0u64;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(format!(
                "not an octal number: {:?}",
                String::from_utf8_lossy(field)
            ));
        }
        value = value.checked_mul(8).ok_or("octal number overflows")? + (b - b'0') as u64;
    }
    Ok(value)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// A NUL-terminated field as text.
fn c_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// The ustar path: `prefix/name` for POSIX ustar headers, `name` otherwise (GNU headers
/// use the prefix bytes for other things).
fn ustar_path(header: &[u8; BLOCK], out: &mut String) {
    let name = c_str(&header[0..100]);
    if &header[257..263] == b"ustar\0" {
        let prefix = c_str(&header[345..500]);
        if !prefix.is_empty() {
            out.push_str(&String::from_utf8_lossy(prefix));
            out.push('/');
        }
    }
    out.push_str(&String::from_utf8_lossy(name));
}

/// Parse PAX records `"<len> <key>=<value>\n"`, keeping `path` (written into `path`;
/// returns whether there was one) and `size`.
fn parse_pax(mut data: &[u8], path: &mut String, size: &mut Option<u64>) -> Result<bool, String> {
    let mut has_path = false;
    while !data.is_empty() {
        // Some writers pad the data with NULs.
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("record without a length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("record length is not a number")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(format!("record length {len} does not fit the data"));
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("record without '='")?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => {
                path.clear();
                path.push_str(&String::from_utf8_lossy(value));
                has_path = true;
            }
            b"size" => {
                let v = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        format!("size={:?} is not a number", String::from_utf8_lossy(value))
                    })?;
                *size = Some(v);
            }
            _ => {}
        }
        data = &data[len..];
    }
    Ok(has_path)
}
