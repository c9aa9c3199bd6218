//! Shards written by `ShardFileWriter` read back exactly, whatever the keys, field names
//! and data (those the writer accepts), in each compression; then the same shard with
//! one byte changed or cut short still reads without a panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tessera_shards::compression::Compression;
use tessera_shards::reader::ShardReader;
use tessera_shards::writer::{ShardFileWriter, validate_sample};

#[derive(Debug, Arbitrary)]
struct Input {
    samples: Vec<(String, Vec<(String, Vec<u8>)>)>,
    compression: u8,
    damage: Option<(u32, u8)>,
    cut: Option<u32>,
}

fuzz_target!(|input: Input| {
    let compression = match input.compression % 3 {
        0 => Compression::None,
        1 => Compression::Gzip { level: 1 },
        _ => Compression::Zstd { level: 1 },
    };
    let dir = tessera_fuzz::scratch_dir();
    let path = dir.path().join("fuzz-000000.tar");
    let mut writer = ShardFileWriter::create(&path, compression).expect("create shard");
    let mut written = Vec::new();
    for (key, fields) in input.samples.iter().take(64) {
        let fields: Vec<(&str, &[u8])> = fields
            .iter()
            .take(16)
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        // The writer refuses what would not read back; everything else must round-trip.
        if validate_sample(key, &fields).is_err() {
            assert!(
                writer.write_sample(key, &fields).is_err(),
                "writer took {key:?}"
            );
            continue;
        }
        // Two consecutive samples with the same key would merge (as in WebDataset).
        if written.last().is_some_and(|(k, _): &(String, _)| k == key) {
            continue;
        }
        writer
            .write_sample(key, &fields)
            .expect("write valid sample");
        // The writer stores fields sorted by name.
        let mut stored: Vec<(String, Vec<u8>)> = fields
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_vec()))
            .collect();
        stored.sort();
        written.push((key.clone(), stored));
    }
    writer.finish().expect("finish shard");
    let (read, error) = tessera_fuzz::read_all(ShardReader::open(&path).expect("open"));
    assert!(error.is_none(), "clean shard gave {error:?}");
    assert_eq!(read, written);

    // Damaged copies: no panic, and whatever comes out was written.
    let mut bytes = std::fs::read(&path).expect("read shard");
    if let Some((at, xor)) = input.damage
        && !bytes.is_empty()
    {
        let i = at as usize % bytes.len();
        bytes[i] ^= xor.max(1);
    }
    if let Some(cut) = input.cut {
        let len = bytes.len();
        bytes.truncate(cut as usize % (len + 1));
    }
    if let Ok(reader) = ShardReader::new(std::io::Cursor::new(bytes), "damaged.tar") {
        // Data is not checksummed, so a flipped byte may change a field or a key: the
        // contract checked is read_all's (well-formed samples, finished after an error).
        tessera_fuzz::read_all(reader);
    }
});
