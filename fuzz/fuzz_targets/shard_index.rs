//! Shard indexes (`<shard>.idx`, JSON lines) from arbitrary bytes: parsing never panics,
//! a parsed index writes back to the same index, and seeking real shards (plain tar, and
//! zstd written one frame per sample) with whatever offsets, kinds and keys it claims
//! gives typed errors or well-formed samples, never a panic, a hang or a huge allocation.
#![no_main]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tessera_shards::compression::Compression;
use tessera_shards::index::ShardIndex;
use tessera_shards::reader::ShardReader;
use tessera_shards::writer::ShardFileWriter;

/// Two small shards (plain and zstd) written once per process, with their indexes.
fn shards() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static SHARDS: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    SHARDS.get_or_init(|| {
        let dir = tessera_fuzz::scratch_dir();
        let paths = [
            ("idx-000000.tar", Compression::None),
            ("idx-000001.tar.zst", Compression::ZSTD),
        ]
        .into_iter()
        .map(|(name, compression)| {
            let path = dir.path().join(name);
            let mut writer = ShardFileWriter::create(&path, compression)
                .expect("create")
                .with_index(true);
            for i in 0..5u8 {
                let data = vec![i; 700 * usize::from(i)];
                writer
                    .write_sample(&format!("s/{i:04}"), &[("bin", &data), ("cls", b"1")])
                    .expect("write");
            }
            writer.finish().expect("finish");
            path
        })
        .collect();
        (dir, paths)
    })
}

fn seek_all(shard: &Path, index: &ShardIndex) {
    let _ = index.check_shard(shard);
    let n = index.samples.len() as u64;
    for at in [0, 1, n / 2, n.saturating_sub(1), n, n + 1] {
        if let Ok(reader) = ShardReader::open_with_index(shard, index, at) {
            tessera_fuzz::read_all(reader);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(index) = ShardIndex::read(Cursor::new(data), PathBuf::from("fuzz.idx")) else {
        return;
    };
    let mut text = Vec::new();
    index.write_to(&mut text).expect("write to memory");
    let again = ShardIndex::read(Cursor::new(&text), PathBuf::from("fuzz.idx"))
        .expect("a written index parses");
    assert_eq!(again, index);
    for shard in &shards().1 {
        seek_all(shard, &index);
    }
});
