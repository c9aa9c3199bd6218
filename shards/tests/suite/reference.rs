//! The reader against shards made by other tools: exactly what the reference reader saw.

use std::fs;
use std::io::Read;

use serde_json::Value;
use tessera_shards::ShardError;
use tessera_shards::reader::ShardReader;

use crate::util::{Owned, read_path, sha256_hex, testdata};

fn json(path: std::path::PathBuf) -> Value {
    serde_json::from_slice(&fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn wds_reference_shards_match_facts() {
    let dir = testdata().join("wds-reference");
    let facts = json(dir.join("facts.json"));
    let facts = facts.as_object().unwrap();
    assert_eq!(facts.len(), 5);
    for (name, fact) in facts {
        let (samples, err) = read_path(&dir.join(name));
        assert!(err.is_none(), "{name}: {err:?}");
        assert_eq!(
            samples.len() as u64,
            fact["samples"].as_u64().unwrap(),
            "{name}"
        );
        let all = fact["all"].as_array().unwrap();
        assert_eq!(all.len(), samples.len(), "{name}");
        for (i, (got, want)) in samples.iter().zip(all).enumerate() {
            assert_eq!(got.key, want["key"].as_str().unwrap(), "{name} #{i}");
            assert_eq!(got.index, i as u64);
            let mut want_fields = strings(&want["fields"]);
            want_fields.sort();
            assert_eq!(got.sorted_field_names(), want_fields, "{name} {}", got.key);
            for (field, sha) in want["sha256"].as_object().unwrap() {
                assert_eq!(
                    sha256_hex(got.field(field)),
                    sha.as_str().unwrap(),
                    "{name} {} {field}",
                    got.key
                );
            }
        }
    }
}

#[test]
fn reference_shards_match_manifest_in_order() {
    let dir = testdata().join("reference-shards");
    let manifest = json(dir.join("manifest.json"));
    let want = manifest["samples"].as_array().unwrap();
    let mut got = Vec::new();
    for shard in ["ref-000000.tar", "ref-000001.tar"] {
        let (samples, err) = read_path(&dir.join(shard));
        assert!(err.is_none(), "{shard}: {err:?}");
        got.extend(samples.into_iter().map(|s| (shard, s)));
    }
    assert_eq!(got.len(), 96);
    assert_eq!(got.len(), want.len());
    for ((shard, s), w) in got.iter().zip(want) {
        assert_eq!(s.key, w["key"].as_str().unwrap());
        assert_eq!(*shard, w["shard"].as_str().unwrap());
        assert_eq!(s.sorted_field_names(), strings(&w["fields"]));
        assert_eq!(
            sha256_hex(s.field("jpg")),
            w["jpg_sha256"].as_str().unwrap(),
            "{}",
            s.key
        );
        assert_eq!(
            String::from_utf8_lossy(s.field("cls")),
            w["cls"].to_string()
        );
    }
}

#[test]
fn url_travels_with_every_sample() {
    let path = testdata().join("reference-shards/ref-000001.tar");
    let mut reader = ShardReader::open(&path).unwrap();
    let mut sample = tessera_shards::Sample::default();
    assert!(reader.read_into(&mut sample).unwrap());
    assert_eq!(&*sample.url, path.display().to_string());
    assert_eq!(sample.key, "ref00048");
}

#[test]
fn hostile_shards_behave_as_the_reference_reader() {
    let dir = testdata().join("hostile");
    let manifest = json(dir.join("manifest.json"));
    let shards = manifest["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 6);
    for shard in shards {
        let name = shard["file"].as_str().unwrap();
        let (samples, err) = read_path(&dir.join("shards").join(name));
        let want: Vec<(String, Vec<String>)> = shard["reference_reader_saw"]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s[0].as_str().unwrap().to_string(), strings(&s[1])))
            .collect();
        let got: Vec<(String, Vec<String>)> = samples
            .iter()
            .map(|s| (s.key.clone(), s.sorted_field_names()))
            .collect();
        assert_eq!(got, want, "{name}");
        if name == "tar-truncated.tar" {
            // t000 complete, then t001.jpg (header at 79872) is cut at byte 120506.
            match err {
                Some(ShardError::Truncated { url, offset, .. }) => {
                    assert!(url.ends_with(name));
                    assert_eq!(offset, 79872);
                }
                other => panic!("{name}: expected a truncation error, got {other:?}"),
            }
        } else {
            assert!(err.is_none(), "{name}: {err:?}");
        }
    }
}

#[test]
fn dotted_names_keep_data_and_empty_members() {
    let (samples, _) = read_path(&testdata().join("hostile/shards/tar-dotted-names.tar"));
    let img2 = samples.iter().find(|s| s.key == "a/b/c/img_2").unwrap();
    assert!(img2.field("seg.png").is_empty());
    assert_eq!(img2.field("jpeg").len(), 78244);
    let pax = read_path(&testdata().join("hostile/shards/tar-pax-longnames.tar")).0;
    assert!(
        pax.iter().all(|s| s.key.len() == 203),
        "{:?}",
        pax.iter().map(|s| s.key.len()).collect::<Vec<_>>()
    );
}

#[test]
fn hostile_files_shard_holds_every_file() {
    let dir = testdata().join("hostile");
    let manifest = json(dir.join("manifest.json"));
    let files = manifest["files"].as_array().unwrap();
    let (samples, err) = read_path(&dir.join("shards/hostile-files.tar"));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(samples.len(), files.len());
    for (s, f) in samples.iter().zip(files) {
        let file = f["file"].as_str().unwrap();
        let (stem, ext) = file.split_once('.').unwrap();
        assert_eq!(s.key, stem);
        assert_eq!(
            s.sorted_field_names(),
            vec!["cls".to_string(), ext.to_string()]
        );
        assert_eq!(
            sha256_hex(s.field(ext)),
            f["sha256"].as_str().unwrap(),
            "{file}"
        );
        assert_eq!(
            s.field(ext),
            fs::read(dir.join("files").join(file)).unwrap()
        );
    }
}

#[test]
fn compression_is_detected_from_content_not_name() {
    // The gzip shard read through a stream with no name at all.
    let path = testdata().join("hostile/shards/tar-gzip-000000.tar.gz");
    let reader = ShardReader::new(fs::File::open(&path).unwrap(), "no-name").unwrap();
    let (samples, err) = crate::util::drain(reader);
    assert!(err.is_none());
    assert_eq!(samples.len(), 4);
    // The same bytes zstd-compressed, under a `.tar` name.
    let tar = fs::read(testdata().join("reference-shards/ref-000000.tar")).unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lying = dir.path().join("really-zstd.tar");
    fs::write(&lying, zst).unwrap();
    let (a, _) = read_path(&lying);
    let (b, _) = read_path(&testdata().join("reference-shards/ref-000000.tar"));
    assert_eq!(a, b);
    assert_eq!(a.len(), 48);
}

#[test]
fn truncated_compressed_streams_keep_complete_samples() {
    let tar = fs::read(testdata().join("reference-shards/ref-000000.tar")).unwrap();
    let full = read_path(&testdata().join("reference-shards/ref-000000.tar")).0;
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("cut.tar.zst", zstd::encode_all(&tar[..], 3).unwrap()),
        ("cut.tar.gz", {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        }),
        ("cut.tar", tar.clone()),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let (samples, err) = read_path(&path);
        assert!(
            !samples.is_empty() && samples.len() < full.len(),
            "{name}: {}",
            samples.len()
        );
        assert_eq!(samples[..], full[..samples.len()], "{name}");
        let next = {
            let mut r =
                ShardReader::open(&testdata().join("reference-shards/ref-000000.tar")).unwrap();
            let mut s = tessera_shards::Sample::default();
            for _ in 0..=samples.len() {
                r.read_into(&mut s).unwrap();
            }
            r.last_span()
        };
        // The offset is the header of the cut member, inside the first lost sample.
        match err {
            Some(ShardError::Truncated { offset, .. }) => {
                assert!(
                    (next.offset..next.offset + next.len).contains(&offset),
                    "{name}: {offset} {next:?}"
                )
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn corrupt_header_is_a_typed_error_with_offset() {
    let mut tar = fs::read(testdata().join("reference-shards/ref-000000.tar")).unwrap();
    // Corrupt the name of the 4th member's header (sample 1, after its 3 fields... find it).
    let full = read_path(&testdata().join("reference-shards/ref-000000.tar")).0;
    let mut reader =
        ShardReader::open(&testdata().join("reference-shards/ref-000000.tar")).unwrap();
    let mut s = tessera_shards::Sample::default();
    reader.read_into(&mut s).unwrap();
    reader.read_into(&mut s).unwrap();
    let second = reader.last_span().offset as usize;
    tar[second + 3] ^= 0x20;
    let (samples, err) =
        crate::util::drain(ShardReader::new(std::io::Cursor::new(tar), "corrupt.tar").unwrap());
    assert_eq!(samples[..], full[..1]);
    assert!(
        matches!(err, Some(ShardError::MalformedHeader { offset, .. }) if offset == second as u64),
        "{err:?}"
    );
}

#[test]
fn iterator_adapter_yields_owned_samples() {
    let reader = ShardReader::open(&testdata().join("wds-reference/sample.tgz")).unwrap();
    let mut n = 0;
    for s in reader.samples() {
        let s = s.unwrap();
        assert_eq!(s.index_in_shard, n);
        let mut buf = Vec::new();
        s.field("png").unwrap().read_to_end(&mut buf).unwrap();
        assert!(buf.starts_with(b"\x89PNG"));
        n += 1;
    }
    assert_eq!(n, 90);
    let _ = Owned::of;
}
