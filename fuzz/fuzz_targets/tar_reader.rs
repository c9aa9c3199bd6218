//! The shard reader on arbitrary bytes: plain tar, and gzip or zstd streams (detected from
//! the magic bytes, as for a file). The first byte chooses how the rest is presented:
//! as is (the corpus holds real plain, gzip and zstd shards, PAX and GNU long names), or
//! compressed here with gzip or zstd so that tar damage is also explored below each
//! decompressor. Contract: no panic, no hang, memory bounded by what the stream holds,
//! every sample well formed, the reader finished after an error.
#![no_main]

use std::io::{Cursor, Write};

use libfuzzer_sys::fuzz_target;
use tessera_shards::reader::ShardReader;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = match mode % 3 {
        0 => rest.to_vec(),
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(rest).expect("gzip into memory");
            gz.finish().expect("gzip into memory")
        }
        _ => zstd::bulk::compress(rest, 1).expect("zstd into memory"),
    };
    let Ok(reader) = ShardReader::new(Cursor::new(bytes), "fuzz.tar") else {
        return;
    };
    tessera_fuzz::read_all(reader);
});
