//! The index: seeking with it equals scanning, for every compression.

use std::fs;

use tessera_shards::ShardError;
use tessera_shards::compression::{Compression, Format};
use tessera_shards::index::{IndexKind, ShardIndex, index_path, write_index_for};
use tessera_shards::reader::ShardReader;

use crate::util::{drain, read_path, testdata};
use crate::writer::{COMPRESSIONS, write_shards};

#[test]
fn seek_equals_scan_for_every_compression() {
    for compression in COMPRESSIONS {
        let dir = tempfile::tempdir().unwrap();
        let infos = write_shards(dir.path(), compression, Some(13), 13);
        let shard = &infos[0].path;
        let index = ShardIndex::load_for(shard)
            .unwrap()
            .expect("writer wrote an index");
        let want_kind = match compression {
            Compression::None => IndexKind::Tar,
            Compression::Zstd { .. } => IndexKind::ZstdFrames,
            Compression::Gzip { .. } => IndexKind::Stream,
        };
        assert_eq!(index.kind, want_kind);
        assert_eq!(index.samples.len(), 13);
        // The index built from the file equals the one the writer wrote.
        let built = ShardIndex::build(shard).unwrap();
        assert_eq!(built, index, "{compression}");
        let (all, _) = read_path(shard);
        for start in [0u64, 1, 5, 12] {
            let (tail, err) = drain(ShardReader::open_at(shard, start).unwrap());
            assert!(err.is_none());
            assert_eq!(
                tail[..],
                all[start as usize..],
                "{compression} from {start}"
            );
        }
        assert!(matches!(
            ShardReader::open_at(shard, 13),
            Err(ShardError::SampleOutOfRange { samples: 13, .. })
        ));
    }
}

#[test]
fn index_for_foreign_shards() {
    let dir = tempfile::tempdir().unwrap();
    for (src, kind) in [
        ("reference-shards/ref-000000.tar", IndexKind::Tar),
        ("hostile/shards/tar-gzip-000000.tar.gz", IndexKind::Stream),
        ("hostile/shards/tar-pax-longnames.tar", IndexKind::Tar),
        ("hostile/shards/tar-irregular-samples.tar", IndexKind::Tar),
    ] {
        let shard = dir.path().join(src.rsplit('/').next().unwrap());
        fs::copy(testdata().join(src), &shard).unwrap();
        let index = write_index_for(&shard).unwrap();
        assert_eq!(index.kind, kind, "{src}");
        assert!(index_path(&shard).exists());
        let (all, _) = read_path(&shard);
        assert_eq!(index.samples.len(), all.len());
        for start in 0..all.len() as u64 {
            let (tail, _) = drain(ShardReader::open_at(&shard, start).unwrap());
            assert_eq!(tail[..], all[start as usize..], "{src} from {start}");
        }
    }
    // A whole-stream zstd shard made elsewhere: not frame-seekable, still correct.
    let tar = fs::read(testdata().join("reference-shards/ref-000001.tar")).unwrap();
    let shard = dir.path().join("one-frame.tar.zst");
    fs::write(&shard, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
    let index = write_index_for(&shard).unwrap();
    assert_eq!(
        (index.kind, index.compression),
        (IndexKind::Stream, Format::Zstd)
    );
    let (all, _) = read_path(&shard);
    let (tail, _) = drain(ShardReader::open_at(&shard, 40).unwrap());
    assert_eq!(tail[..], all[40..]);
}

#[test]
fn open_at_without_or_with_stale_index_scans() {
    let dir = tempfile::tempdir().unwrap();
    let infos = write_shards(dir.path(), Compression::None, None, 9);
    let shard = &infos[0].path;
    let (all, _) = read_path(shard);
    fs::remove_file(index_path(shard)).unwrap();
    let (tail, _) = drain(ShardReader::open_at(shard, 4).unwrap());
    assert_eq!(tail[..], all[4..]);
    // An index of another shard (different size): ignored, scanning gives the truth.
    let other = write_shards(
        tempfile::tempdir().unwrap().path(),
        Compression::None,
        None,
        3,
    );
    let _ = other;
    let mut wrong = ShardIndex::build(shard).unwrap();
    wrong.shard_bytes += 1;
    wrong.write().unwrap();
    let (tail, _) = drain(ShardReader::open_at(shard, 4).unwrap());
    assert_eq!(tail[..], all[4..]);
    assert!(ShardReader::open_at(shard, 9).is_err());
}

#[test]
fn index_pointing_at_the_wrong_sample_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let infos = write_shards(dir.path(), Compression::None, None, 4);
    let shard = &infos[0].path;
    let mut index = ShardIndex::load_for(shard).unwrap().unwrap();
    index.samples[2].key = "not-it".into();
    index.write().unwrap();
    let err = ShardReader::open_at(shard, 2).unwrap_err();
    assert!(matches!(err, ShardError::IndexMismatch { .. }), "{err}");
}

#[test]
fn damaged_index_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("x.tar");
    fs::write(
        index_path(&shard),
        "{\"format\":\"tessera-shard-index\",\"version\":1}\n",
    )
    .unwrap();
    assert!(matches!(
        ShardIndex::load_for(&shard),
        Err(ShardError::IndexFormat { line: 1, .. })
    ));
}

#[test]
fn zstd_shard_cut_at_a_frame_boundary_is_still_truncated() {
    // Frame-per-sample zstd decompresses cleanly when cut between frames; the missing
    // end-of-archive marker is what reveals the loss.
    let dir = tempfile::tempdir().unwrap();
    let infos = write_shards(dir.path(), Compression::ZSTD, None, 9);
    let shard = &infos[0].path;
    let index = ShardIndex::load_for(shard).unwrap().unwrap();
    let (all, _) = read_path(shard);
    let bytes = fs::read(shard).unwrap();
    let cut = dir.path().join("cut.tar.zst");
    let at = index.samples[5].raw_offset.unwrap() as usize;
    fs::write(&cut, &bytes[..at]).unwrap();
    let (got, err) = read_path(&cut);
    assert_eq!(got[..], all[..5]);
    assert!(
        matches!(err, Some(ShardError::Truncated { offset, .. }) if offset == index.samples[5].offset),
        "{err:?}"
    );
}
