//! TFRecord framing, the container of TensorBoard event files.
//!
//! A file is a sequence of records, each
//!
//! ```text
//! u64 little-endian  length of data
//! u32 little-endian  masked CRC-32C of those 8 length bytes
//! [u8; length]       data (one serialised `Event` protobuf)
//! u32 little-endian  masked CRC-32C of data
//! ```
//!
//! The CRC is CRC-32C (Castagnoli), masked as TensorFlow's `crc32c::Mask` does: rotate right
//! by 15 bits and add `0xa282ead8` (so that a CRC of data that itself holds CRCs is not
//! trivially zero). A reader stops at the first incomplete record, which is what a killed
//! writer leaves.

use std::io::{self, Write};

/// TensorFlow's mask over a CRC-32C.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Write one record holding `data`.
pub fn write_record(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc32c(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc32c(data).to_le_bytes())
}

/// Why a record could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFault {
    /// The length's CRC does not match (the framing is lost).
    LengthCrc,
    /// The data's CRC does not match.
    DataCrc,
}

/// The records of `bytes`, in order. A trailing incomplete record is ignored (a writer
/// killed mid-record leaves one); a CRC mismatch ends the reading with that fault and the
/// byte offset of the bad record.
pub fn read_records(bytes: &[u8]) -> (Vec<&[u8]>, Option<(usize, RecordFault)>) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 12 {
        let len_bytes = &bytes[at..at + 8];
        let len_crc =
            u32::from_le_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]]);
        if masked_crc32c(len_bytes) != len_crc {
            return (records, Some((at, RecordFault::LengthCrc)));
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(len_bytes);
        let len = u64::from_le_bytes(len) as usize;
        let start = at + 12;
        let Some(end) = start.checked_add(len).filter(|e| e + 4 <= bytes.len()) else {
            break;
        };
        let data = &bytes[start..end];
        let crc = u32::from_le_bytes([bytes[end], bytes[end + 1], bytes[end + 2], bytes[end + 3]]);
        if masked_crc32c(data) != crc {
            return (records, Some((at, RecordFault::DataCrc)));
        }
        records.push(data);
        at = end + 4;
    }
    (records, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        let m = masked_crc32c(b"123456789");
        assert_eq!(m, 0xe306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn records_round_trip_and_a_cut_tail_is_ignored() {
        let mut buf = Vec::new();
        write_record(&mut buf, b"first").unwrap();
        write_record(&mut buf, b"").unwrap();
        write_record(&mut buf, b"third record").unwrap();
        let full = buf.len();
        buf.truncate(full - 3);
        let (records, fault) = read_records(&buf);
        assert_eq!(records, vec![&b"first"[..], &b""[..]]);
        assert_eq!(fault, None);
    }

    #[test]
    fn a_flipped_byte_is_a_crc_fault() {
        let mut buf = Vec::new();
        write_record(&mut buf, b"payload").unwrap();
        buf[14] ^= 1;
        let (records, fault) = read_records(&buf);
        assert!(records.is_empty());
        assert_eq!(fault, Some((0, RecordFault::DataCrc)));
    }
}
