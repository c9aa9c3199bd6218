//! Helpers shared by the fuzz targets: reading a whole shard the way the pipeline does
//! and checking the reader's contract on any input.

use std::io::Read;

use tessera_shards::reader::ShardReader;
use tessera_shards::{Sample, ShardError};

/// Most samples read from one input (a fuzz input of a few KiB cannot hold more real
/// ones; the bound only stops a reader bug from looping forever).
const MAX_SAMPLES: usize = 100_000;

/// Reads every sample of `reader` into owned `(key, fields)` pairs and checks the
/// reader's contract: keys are non-empty, a sample has at least one field and no field
/// twice, and after the first error (or the end) the reader stays finished.
pub fn read_all<R: Read>(
    mut reader: ShardReader<R>,
) -> (Vec<(String, Vec<(String, Vec<u8>)>)>, Option<ShardError>) {
    let mut sample = Sample::default();
    let mut out = Vec::new();
    let error = loop {
        match reader.read_into(&mut sample) {
            Ok(true) => {
                assert!(!sample.key.is_empty(), "a sample without a key");
                assert!(!sample.is_empty(), "a sample without fields");
                let mut names: Vec<&str> =
                    sample.fields().iter().map(|f| f.name.as_str()).collect();
                names.sort_unstable();
                let before = names.len();
                names.dedup();
                assert_eq!(before, names.len(), "a field twice in `{}`", sample.key);
                out.push((
                    sample.key.clone(),
                    sample
                        .fields()
                        .iter()
                        .map(|f| (f.name.clone(), f.data.clone()))
                        .collect(),
                ));
                assert!(out.len() <= MAX_SAMPLES, "reader does not stop");
            }
            Ok(false) => break None,
            Err(e) => {
                // Errors render (Display walks no cycles) and name the shard.
                let text = e.to_string();
                assert!(!text.is_empty());
                break Some(e);
            }
        }
    };
    assert!(
        matches!(reader.read_into(&mut sample), Ok(false)),
        "reader not finished after the end or an error"
    );
    assert!(
        sample.is_empty(),
        "a finished reader leaves the sample empty"
    );
    (out, error)
}

/// A temporary directory in memory (`/dev/shm`) where there is one: the writer fsyncs
/// every shard, which on a disk would make each execution cost milliseconds.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("temp dir")
}
