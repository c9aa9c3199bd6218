//! The tar layer: a strict, streaming reader of tar members and a deterministic ustar
//! member writer.
//!
//! Only what WebDataset shards need: ustar/POSIX.1-2001 (PAX) and GNU headers, regular files
//! and the extension headers that change their name or size. The reader:
//! - verifies every header checksum (a bad one is [`ShardError::MalformedHeader`](crate::ShardError::MalformedHeader)),
//! - applies PAX `x` records `path=` and `size=` to the member that follows (ignoring the
//!   `size=` override is the CVE-2025-62518 class of bug: the ustar size then disagrees
//!   and a crafted member can hide or smuggle others),
//! - applies GNU `L` long names, ignores global PAX `g` headers and GNU `K` long link names,
//! - reads member data straight into a caller's `Vec` (no intermediate buffer),
//! - counts the byte offset in the (decompressed) tar stream so every error can say where.
//!
//! The end of the archive is the first all-zero block (as Python's `tarfile` reads it;
//! what follows is ignored). A stream that stops without one, even on a member boundary,
//! is [`ShardError::Truncated`](crate::ShardError::Truncated): tar writers always end an archive with zero blocks, so
//! its absence means members were lost (Python's `tarfile` silently accepts this).
//!
//! `read` holds the reader, `write` the member writer; the block layout and checksum
//! they share live here.

mod read;
mod write;

pub use read::{Member, MemberKind, TarReader};
pub use write::{append_member, member_len};

/// Size of a tar block: headers, and the unit data is padded to.
pub const BLOCK: usize = 512;

/// Two zero blocks end an archive.
pub const END_OF_ARCHIVE: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// Padding after `size` data bytes up to the next block boundary.
pub fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Unsigned and signed sums of a header with the checksum field read as spaces.
fn checksums(header: &[u8; BLOCK]) -> (u64, i64) {
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, &b) in header.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    (unsigned, signed)
}

#[cfg(test)]
mod tests {
    use super::read::parse_number;
    use super::write::{append_header, pad, pax_record};
    use super::*;
    use crate::ShardError;
    use std::sync::Arc;

    fn members(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ShardError> {
        let mut r = TarReader::new(bytes, Arc::from("t.tar"), None, 0);
        let mut out = Vec::new();
        while r.next_member()? {
            let mut data = Vec::new();
            r.read_data(&mut data)?;
            out.push((r.member().path.clone(), data));
        }
        Ok(out)
    }

    #[test]
    fn round_trips_short_and_long_names() {
        let long = format!("{}/{}.jpg", "d".repeat(120), "k".repeat(60));
        let very_long = format!("{}.jpg", "x".repeat(300));
        let mut tar = Vec::new();
        append_member(&mut tar, "a/b.jpg", b"hello");
        append_member(&mut tar, &long, b"");
        append_member(&mut tar, &very_long, &[7u8; 600]);
        assert_eq!(
            tar.len() as u64,
            member_len("a/b.jpg", 5) + member_len(&long, 0) + member_len(&very_long, 600)
        );
        tar.extend_from_slice(&END_OF_ARCHIVE);
        let got = members(&tar).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("a/b.jpg".to_string(), b"hello".to_vec()));
        assert_eq!(got[1].0, long);
        assert_eq!(got[2], (very_long, vec![7u8; 600]));
    }

    #[test]
    fn pax_size_overrides_ustar_size() {
        // A PAX header says 5 bytes; the ustar size field says 1024. A reader that ignored
        // `size=` would swallow the next member as data.
        let mut tar = Vec::new();
        let record = pax_record("size", "5");
        append_header(&mut tar, b"././@PaxHeader", b"", record.len() as u64, b'x');
        tar.extend_from_slice(record.as_bytes());
        pad(&mut tar);
        append_header(&mut tar, b"s.txt", b"", 1024, b'0');
        tar.extend_from_slice(b"short");
        pad(&mut tar);
        append_member(&mut tar, "t.txt", b"next");
        tar.extend_from_slice(&END_OF_ARCHIVE);
        let got = members(&tar).unwrap();
        assert_eq!(
            got,
            vec![
                ("s.txt".into(), b"short".to_vec()),
                ("t.txt".into(), b"next".to_vec())
            ]
        );
    }

    #[test]
    fn pax_size_larger_than_ustar_size_keeps_smuggled_header_as_data() {
        // CVE-2025-62518 shape: the ustar size is 0 and PAX says the data is 1024 bytes,
        // which hold what looks like a tar header. A reader using the ustar size would
        // read `evil.jpg` as a member of its own.
        let mut inner = Vec::new();
        append_member(&mut inner, "evil.jpg", &[0u8; 512 - BLOCK]);
        inner.resize(1024, 0);
        let mut tar = Vec::new();
        let record = pax_record("size", "1024");
        append_header(&mut tar, b"././@PaxHeader", b"", record.len() as u64, b'x');
        tar.extend_from_slice(record.as_bytes());
        pad(&mut tar);
        append_header(&mut tar, b"cover.txt", b"", 0, b'0');
        tar.extend_from_slice(&inner);
        tar.extend_from_slice(&END_OF_ARCHIVE);
        let got = members(&tar).unwrap();
        assert_eq!(got, vec![("cover.txt".into(), inner)]);
    }

    #[test]
    fn missing_end_of_archive_is_truncation() {
        let mut tar = Vec::new();
        append_member(&mut tar, "a.txt", b"x");
        let err = members(&tar).unwrap_err();
        assert!(
            matches!(err, ShardError::Truncated { offset: 1024, .. }),
            "{err}"
        );
        assert!(matches!(
            members(&[]).unwrap_err(),
            ShardError::Truncated { offset: 0, .. }
        ));
    }

    #[test]
    fn gnu_long_name_and_global_pax() {
        let mut tar = Vec::new();
        let record = pax_record("comment", "ignored");
        append_header(
            &mut tar,
            b"pax_global_header",
            b"",
            record.len() as u64,
            b'g',
        );
        tar.extend_from_slice(record.as_bytes());
        pad(&mut tar);
        let name = format!("{}.cls\0", "n".repeat(200));
        append_header(&mut tar, b"././@LongLink", b"", name.len() as u64, b'L');
        tar.extend_from_slice(name.as_bytes());
        pad(&mut tar);
        append_header(&mut tar, b"truncated", b"", 1, b'0');
        tar.extend_from_slice(b"3");
        pad(&mut tar);
        tar.extend_from_slice(&END_OF_ARCHIVE);
        let got = members(&tar).unwrap();
        assert_eq!(
            got,
            vec![(name.trim_end_matches('\0').to_string(), b"3".to_vec())]
        );
    }

    #[test]
    fn bad_checksum_is_malformed_with_offset() {
        let mut tar = Vec::new();
        append_member(&mut tar, "a.txt", b"x");
        let second = tar.len();
        append_member(&mut tar, "b.txt", b"y");
        tar[second + 10] ^= 1;
        let err = members(&tar).unwrap_err();
        assert!(
            matches!(err, ShardError::MalformedHeader { offset, .. } if offset == second as u64),
            "{err}"
        );
    }

    #[test]
    fn truncated_data_names_the_member_offset() {
        let mut tar = Vec::new();
        append_member(&mut tar, "a.txt", &[1u8; 1000]);
        tar.truncate(700);
        let err = members(&tar).unwrap_err();
        assert!(
            matches!(err, ShardError::Truncated { offset: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(parse_number(b"0000644\0").unwrap(), 0o644);
        assert_eq!(parse_number(b"  12 \0\0").unwrap(), 0o12);
        assert_eq!(parse_number(b"\0\0\0\0").unwrap(), 0);
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap(),
            256
        );
        assert!(parse_number(b"12a\0").is_err());
    }

    /// Flipping any byte of a small archive never panics or hangs: the reader returns
    /// members and at most one error.
    #[test]
    fn any_single_byte_corruption_is_handled() {
        let mut tar = Vec::new();
        append_member(&mut tar, "a.jpg", &[1u8; 700]);
        append_member(&mut tar, &format!("{}.cls", "x".repeat(300)), b"7");
        let record = pax_record("size", "3");
        append_header(&mut tar, b"././@PaxHeader", b"", record.len() as u64, b'x');
        tar.extend_from_slice(record.as_bytes());
        pad(&mut tar);
        append_header(&mut tar, b"b.txt", b"", 3, b'0');
        tar.extend_from_slice(b"abc");
        pad(&mut tar);
        tar.extend_from_slice(&END_OF_ARCHIVE);
        for i in 0..tar.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = tar.clone();
                bad[i] ^= flip;
                let _ = members(&bad);
            }
        }
        // Sizes that would overflow offsets are malformed headers.
        let mut huge = Vec::new();
        let record = pax_record("size", &u64::MAX.to_string());
        append_header(&mut huge, b"././@PaxHeader", b"", record.len() as u64, b'x');
        huge.extend_from_slice(record.as_bytes());
        pad(&mut huge);
        append_header(&mut huge, b"h.bin", b"", 0, b'0');
        assert!(matches!(
            members(&huge),
            Err(ShardError::MalformedHeader { offset: 0, .. })
        ));
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for n in [1, 5, 80, 95, 96, 97, 990, 995, 1000] {
            let r = pax_record("path", &"p".repeat(n));
            let (len, _) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "{n}");
        }
    }
}
