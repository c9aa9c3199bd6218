//! Property tests (issue 14): whatever samples the writer accepts read back exactly, in
//! every compression, from the start and from any sample through the index.
//!
//! Keys mix ASCII, dots in directory names, unicode and components long enough to need a
//! PAX `path` header (past ustar's 100-byte name field); fields are many, dotted
//! (`seg.png`), unicode or empty. Case counts are small enough for CI (a few seconds).

use proptest::prelude::*;
use tessera_shards::compression::Compression;
use tessera_shards::reader::ShardReader;
use tessera_shards::writer::{ShardFileWriter, validate_sample};

use crate::util::{Owned, read_path};

/// Characters keys and field names are drawn from: ASCII, dots, dashes, and unicode
/// (two-, three- and four-byte UTF-8) including a character whose lower case differs.
const CHARS: &[char] = &[
    'a', 'z', '0', '9', '_', '-', ' ', '.', 'é', 'Ж', '猫', '🦀', 'ß',
];

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(CHARS), 1..max).prop_map(String::from_iter)
}

/// A key: 1-3 directory components (dots allowed), then a last component without a dot,
/// sometimes long (past 100 bytes). Prefixed with its position so keys stay distinct.
fn key() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            text(12).prop_filter("no empty, . or .. component", |c| c != "." && c != ".."),
            0..3,
        ),
        text(12).prop_map(|s| s.replace('.', "_")),
        prop::bool::weighted(0.25),
    )
        .prop_map(|(dirs, last, long)| {
            let last = if long {
                last.repeat(150 / last.len() + 1)
            } else {
                last
            };
            let mut key = dirs.join("/");
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(&last);
            key
        })
}

/// 1..24 distinct lower-case field names (dotted ones among them), with 0..600 bytes each.
fn fields() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::btree_map(
        text(10).prop_map(|s| s.to_lowercase()),
        prop::collection::vec(any::<u8>(), 0..600),
        1..24,
    )
    .prop_map(|m| m.into_iter().collect())
}

fn samples() -> impl Strategy<Value = Vec<(String, Vec<(String, Vec<u8>)>)>> {
    prop::collection::vec((key(), fields()), 0..12).prop_map(|samples| {
        samples
            .into_iter()
            .enumerate()
            .map(|(i, (key, fields))| (format!("{i:03}{key}"), fields))
            .filter(|(key, fields)| {
                let f: Vec<(&str, &[u8])> = fields
                    .iter()
                    .map(|(n, d)| (n.as_str(), d.as_slice()))
                    .collect();
                validate_sample(key, &f).is_ok()
            })
            .collect()
    })
}

fn compression() -> impl Strategy<Value = Compression> {
    prop::sample::select(vec![
        Compression::None,
        Compression::Zstd { level: 1 },
        Compression::Gzip { level: 1 },
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn written_samples_read_back_exactly(
        samples in samples(),
        compression in compression(),
        start in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("p-000000.tar{}", compression.extension()));
        let mut writer = ShardFileWriter::create(&path, compression).unwrap().with_index(true);
        for (key, fields) in &samples {
            let f: Vec<(&str, &[u8])> =
                fields.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
            writer.write_sample(key, &f).unwrap();
        }
        let info = writer.finish().unwrap();
        prop_assert_eq!(info.samples, samples.len() as u64);

        let (read, error) = read_path(&path);
        prop_assert!(error.is_none(), "{:?}", error);
        let expected: Vec<Owned> = samples
            .iter()
            .enumerate()
            .map(|(i, (key, fields))| Owned { key: key.clone(), index: i as u64, fields: fields.clone() })
            .collect();
        prop_assert_eq!(&read, &expected);

        // From any sample through the index: the same suffix.
        if !samples.is_empty() {
            let at = start.index(samples.len());
            let mut reader = ShardReader::open_at(&path, at as u64).unwrap();
            let mut sample = tessera_shards::Sample::default();
            let mut rest = Vec::new();
            while reader.read_into(&mut sample).unwrap() {
                rest.push(Owned::of(&sample));
            }
            prop_assert_eq!(&rest[..], &expected[at..]);
        }
    }
}
