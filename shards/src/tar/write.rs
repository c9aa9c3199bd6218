//! Writing tar members deterministically (see [`append_member`]).

use super::{BLOCK, checksums, padding};

/// Append one regular-file member (header(s), data, padding) to `out`, deterministically:
/// mode 0644, uid/gid 0, empty user/group names, mtime 0, ustar format. A path that does
/// not fit ustar's name/prefix fields gets a PAX `x` header with a `path` record first.
pub fn append_member(out: &mut Vec<u8>, path: &str, data: &[u8]) {
    let size = data.len() as u64;
    let (prefix, name) = match split_ustar_path(path) {
        Some(split) => split,
        None => {
            let record = pax_record("path", path);
            append_header(out, b"././@PaxHeader", b"", record.len() as u64, b'x');
            out.extend_from_slice(record.as_bytes());
            pad(out);
            // The ustar name keeps a readable, truncated form for old tools.
            (&b""[..], truncate_utf8(path.as_bytes(), 100))
        }
    };
    append_header(out, name, prefix, size, b'0');
    out.extend_from_slice(data);
    pad(out);
}

/// Bytes [`append_member`] will write for a member, for size-based shard rotation.
pub fn member_len(path: &str, size: u64) -> u64 {
    let ext = if split_ustar_path(path).is_some() {
        0
    } else {
        let record = pax_record("path", path).len() as u64;
        BLOCK as u64 + record + padding(record)
    };
    ext + BLOCK as u64 + size + padding(size)
}

pub(super) fn pad(out: &mut Vec<u8>) {
    let n = padding(out.len() as u64) as usize;
    out.resize(out.len() + n, 0);
}

/// `(prefix, name)` if `path` fits the ustar fields (name <= 100, prefix <= 155 bytes).
fn split_ustar_path(path: &str) -> Option<(&[u8], &[u8])> {
    let bytes = path.as_bytes();
    if bytes.len() <= 100 {
        return Some((b"", bytes));
    }
    if bytes.len() > 256 {
        return None;
    }
    // Split at a '/' so that the name part fits; prefer the longest prefix that fits.
    bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'/' && i <= 155 && bytes.len() - i - 1 <= 100 && i > 0)
        .map(|(i, _)| (&bytes[..i], &bytes[i + 1..]))
        .next_back()
        .filter(|(_, name)| !name.is_empty())
}

fn truncate_utf8(b: &[u8], max: usize) -> &[u8] {
    if b.len() <= max {
        return b;
    }
    let mut end = max;
    while end > 0 && (b[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    &b[..end]
}

/// A PAX record with its self-including length prefix.
pub(super) fn pax_record(key: &str, value: &str) -> String {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n")
}

pub(super) fn append_header(
    out: &mut Vec<u8>,
    name: &[u8],
    prefix: &[u8],
    size: u64,
    typeflag: u8,
) {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    write_octal(&mut h[100..108], 0o644);
    write_octal(&mut h[108..116], 0);
    write_octal(&mut h[116..124], 0);
    if size < 0o777_7777_7777 {
        write_octal(&mut h[124..136], size);
    } else {
        // GNU base-256 for members of 8 GiB and more.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    write_octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    write_octal(&mut h[329..337], 0);
    write_octal(&mut h[337..345], 0);
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    let (sum, _) = checksums(&h);
    // Checksum: six octal digits, NUL, space (the traditional layout).
    let digits = format!("{sum:06o}");
    h[148..154].copy_from_slice(digits.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    out.extend_from_slice(&h);
}

/// Zero-padded octal with a trailing NUL, filling the field.
fn write_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}
