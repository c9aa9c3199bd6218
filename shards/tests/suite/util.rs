//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tessera_shards::reader::ShardReader;
use tessera_shards::{Sample, ShardError};

/// `shared/testdata` beside the checkout.
pub fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An owned copy of a sample: key, then (field, bytes) in shard order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub key: String,
    pub index: u64,
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Owned {
    pub fn of(s: &Sample) -> Owned {
        Owned {
            key: s.key.clone(),
            index: s.index_in_shard,
            fields: s
                .fields()
                .iter()
                .map(|f| (f.name.clone(), f.data.clone()))
                .collect(),
        }
    }

    pub fn sorted_field_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.fields.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    pub fn field(&self, name: &str) -> &[u8] {
        &self
            .fields
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{} has no {name}", self.key))
            .1
    }
}

/// Every sample of a reader until its end or first error.
pub fn drain<R: std::io::Read>(mut reader: ShardReader<R>) -> (Vec<Owned>, Option<ShardError>) {
    let mut sample = Sample::default();
    let mut out = Vec::new();
    loop {
        match reader.read_into(&mut sample) {
            Ok(true) => out.push(Owned::of(&sample)),
            Ok(false) => return (out, None),
            Err(e) => {
                // The reader is finished after an error.
                assert!(!reader.read_into(&mut sample).unwrap());
                return (out, Some(e));
            }
        }
    }
}

pub fn read_path(path: &Path) -> (Vec<Owned>, Option<ShardError>) {
    drain(ShardReader::open(path).unwrap_or_else(|e| panic!("{e}")))
}
