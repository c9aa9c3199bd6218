//! The writer: round trips, determinism, atomicity, rotation, compressions.

use std::fs;

use tessera_shards::ShardError;
use tessera_shards::compression::Compression;
use tessera_shards::writer::{ShardFileWriter, ShardWriter, ShardWriterOptions};

use crate::util::{Owned, read_path, sha256_hex};

pub const COMPRESSIONS: [Compression; 3] = [
    Compression::None,
    Compression::Zstd { level: 3 },
    Compression::Gzip { level: 6 },
];

/// A sample as test data: key and (field, bytes).
pub type TestSample = (String, Vec<(String, Vec<u8>)>);

/// A varied sample set: empty fields, long (PAX) keys, directories with dots, sizes that
/// hit and miss block boundaries.
pub fn samples(n: usize) -> Vec<TestSample> {
    (0..n)
        .map(|i| {
            let key = match i % 4 {
                0 => format!("s{i:05}"),
                1 => format!("dir.v1/sub/s{i:05}"),
                2 => format!("{}/s{i:05}", "long_directory_name".repeat(12)),
                _ => format!("{}{i:05}", "k".repeat(120)),
            };
            let jpg: Vec<u8> = (0..(i * 997) % 5000).map(|b| (b * 31 + i) as u8).collect();
            let fields = vec![
                ("jpg".to_string(), jpg),
                ("cls".to_string(), (i % 10).to_string().into_bytes()),
                (
                    "seg.png".to_string(),
                    if i % 3 == 0 { Vec::new() } else { vec![9; 512] },
                ),
            ];
            (key, fields)
        })
        .collect()
}

fn field_refs(fields: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    fields
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect()
}

fn expected(samples: &[TestSample]) -> Vec<Owned> {
    samples
        .iter()
        .enumerate()
        .map(|(i, (key, fields))| {
            let mut fields = fields.clone();
            fields.sort();
            Owned {
                key: key.clone(),
                index: i as u64,
                fields,
            }
        })
        .collect()
}

pub fn write_shards(
    dir: &std::path::Path,
    compression: Compression,
    max_samples: Option<u64>,
    n: usize,
) -> Vec<tessera_shards::writer::ShardInfo> {
    let options = ShardWriterOptions {
        prefix: "train".into(),
        max_samples,
        max_bytes: None,
        compression,
        first_shard_number: 0,
        write_index: true,
    };
    let mut w = ShardWriter::new(dir, options);
    for (key, fields) in samples(n) {
        w.write_sample(&key, &field_refs(&fields)).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn round_trips_every_compression() {
    let data = samples(40);
    for compression in COMPRESSIONS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("one{}", compression.extension()));
        let mut w = ShardFileWriter::create(&path, compression).unwrap();
        for (key, fields) in &data {
            w.write_sample(key, &field_refs(fields)).unwrap();
        }
        let info = w.finish().unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(info.bytes, bytes.len() as u64);
        assert_eq!(info.sha256, sha256_hex(&bytes));
        assert_eq!(info.samples, 40);
        assert_eq!(info.first_key.as_deref(), Some(data[0].0.as_str()));
        assert_eq!(info.last_key.as_deref(), Some(data[39].0.as_str()));
        let (got, err) = read_path(&path);
        assert!(err.is_none(), "{compression}: {err:?}");
        assert_eq!(got, expected(&data), "{compression}");
    }
}

#[test]
fn plain_shards_are_valid_ustar_for_python_tarfile() {
    let dir = tempfile::tempdir().unwrap();
    let infos = write_shards(dir.path(), Compression::None, None, 8);
    let Some(python) = ["python3", "python"]
        .into_iter()
        .find(|p| std::process::Command::new(p).arg("-V").output().is_ok())
    else {
        return; // No Python here: the round trip through our reader is tested above.
    };
    let out = std::process::Command::new(python)
        .args(["-c", "import sys,tarfile; t=tarfile.open(sys.argv[1]); print('\\n'.join(m.name+' '+str(m.size) for m in t))"])
        .arg(&infos[0].path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().0)
        .collect();
    let mut want = Vec::new();
    for (key, fields) in samples(8) {
        let mut f: Vec<String> = fields.iter().map(|(n, _)| format!("{key}.{n}")).collect();
        f.sort();
        want.extend(f);
    }
    assert_eq!(names, want);
}

#[test]
fn same_input_gives_byte_identical_shards() {
    for compression in COMPRESSIONS {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ia = write_shards(a.path(), compression, Some(7), 30);
        let ib = write_shards(b.path(), compression, Some(7), 30);
        assert_eq!(ia.len(), 5);
        for (x, y) in ia.iter().zip(&ib) {
            assert_eq!(x.sha256, y.sha256, "{compression}");
            assert_eq!(fs::read(&x.path).unwrap(), fs::read(&y.path).unwrap());
        }
    }
}

#[test]
fn fields_are_written_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.tar");
    let mut w = ShardFileWriter::create(&path, Compression::None).unwrap();
    w.write_sample("k", &[("json", b"{}"), ("cls", b"1"), ("jpg", b"x")])
        .unwrap();
    w.finish().unwrap();
    let (got, _) = read_path(&path);
    let names: Vec<&str> = got[0].fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["cls", "jpg", "json"]);
}

#[test]
fn shard_appears_only_when_finished_and_drop_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.tar.zst");
    let mut w = ShardFileWriter::create(&path, Compression::ZSTD).unwrap();
    w.write_sample("k", &[("jpg", &[1u8; 10000])]).unwrap();
    assert!(!path.exists());
    let entries: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].to_string_lossy().starts_with(".a.tar.zst.tmp-"));
    drop(w);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

    let mut w = ShardFileWriter::create(&path, Compression::ZSTD).unwrap();
    w.write_sample("k", &[("jpg", b"x")]).unwrap();
    w.finish().unwrap();
    let entries: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("a.tar.zst")]);
}

#[test]
fn rotates_by_count_and_reports_each_shard() {
    let dir = tempfile::tempdir().unwrap();
    let options = ShardWriterOptions {
        prefix: "p".into(),
        max_samples: Some(4),
        first_shard_number: 7,
        write_index: false,
        ..Default::default()
    };
    let mut w = ShardWriter::new(dir.path(), options);
    let mut completed = Vec::new();
    for (key, fields) in samples(10) {
        if let Some(info) = w.write_sample(&key, &field_refs(&fields)).unwrap() {
            assert!(info.path.exists());
            completed.push(info);
        }
    }
    assert_eq!(completed.len(), 2);
    let all = w.finish().unwrap();
    assert_eq!(all[..2], completed[..]);
    let names: Vec<String> = all
        .iter()
        .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["p-000007.tar", "p-000008.tar", "p-000009.tar"]);
    assert_eq!(all.iter().map(|i| i.samples).collect::<Vec<_>>(), [4, 4, 2]);
    // Read back in order: all samples, none lost or repeated.
    let mut keys = Vec::new();
    for info in &all {
        keys.extend(read_path(&info.path).0.into_iter().map(|s| s.key));
    }
    assert_eq!(
        keys,
        samples(10).into_iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
}

#[test]
fn rotates_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let options = ShardWriterOptions {
        prefix: "b".into(),
        max_bytes: Some(5 * 1024),
        write_index: false,
        ..Default::default()
    };
    let mut w = ShardWriter::new(dir.path(), options);
    // Each sample: 512 header + 2048 data = 2560 tar bytes: two per shard.
    for i in 0..5 {
        w.write_sample(&format!("k{i}"), &[("bin", &[i as u8; 2048])])
            .unwrap();
    }
    // A sample bigger than the limit still gets written, alone.
    w.write_sample("huge", &[("bin", &[0u8; 8192])]).unwrap();
    let all = w.finish().unwrap();
    assert_eq!(
        all.iter().map(|i| i.samples).collect::<Vec<_>>(),
        [2, 2, 1, 1]
    );
    for info in &all[..3] {
        // tar bytes of the samples stay under the limit (the file adds 1024 end blocks).
        assert!(info.bytes - 1024 <= 5 * 1024, "{info:?}");
    }
}

#[test]
fn empty_writer_writes_nothing_and_empty_file_writer_an_empty_tar() {
    let dir = tempfile::tempdir().unwrap();
    let w = ShardWriter::new(dir.path(), ShardWriterOptions::default());
    assert!(w.finish().unwrap().is_empty());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    let path = dir.path().join("empty.tar");
    let info = ShardFileWriter::create(&path, Compression::None)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!((info.samples, info.bytes, info.first_key), (0, 1024, None));
    let (got, err) = read_path(&path);
    assert!(got.is_empty() && err.is_none());
}

#[test]
fn rejects_keys_that_would_not_round_trip_without_touching_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let options = ShardWriterOptions {
        max_samples: Some(1),
        ..Default::default()
    };
    let mut w = ShardWriter::new(dir.path(), options);
    w.write_sample("ok", &[("jpg", b"x")]).unwrap();
    let err = w.write_sample("img.v2", &[("jpg", b"x")]).unwrap_err();
    assert!(
        matches!(err, ShardError::InvalidKey { ref key, .. } if key == "img.v2"),
        "{err}"
    );
    assert!(matches!(
        w.write_sample("k", &[("JPG", b"x")]),
        Err(ShardError::InvalidField { .. })
    ));
    // The rejected samples did not rotate the shard.
    assert!(w.written().is_empty());
    assert_eq!(w.finish().unwrap().len(), 1);
}

#[test]
fn compression_parse_and_names() {
    assert_eq!(
        "zstd:19".parse::<Compression>().unwrap(),
        Compression::Zstd { level: 19 }
    );
    let dir = tempfile::tempdir().unwrap();
    for (c, ext) in [("none", ".tar"), ("zstd", ".tar.zst"), ("gzip", ".tar.gz")] {
        let c: Compression = c.parse().unwrap();
        let w = ShardWriter::new(
            dir.path(),
            ShardWriterOptions {
                compression: c,
                ..Default::default()
            },
        );
        assert!(
            w.shard_path(3)
                .to_string_lossy()
                .ends_with(&format!("shard-000003{ext}"))
        );
    }
}
