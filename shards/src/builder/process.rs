//! The worker side of a build: one input → a sample ready to write, a duplicate seen
//! early (its bytes were already written; decoding is skipped), or a reject.
//! Input buffers come from a small pool and go back after writing.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::build::{BuildOptions, WINDOW_PER_WORKER};
use super::inputs::{InputFile, Label};
use super::prepare::Preparer;
use super::reject::{Reject, RejectReason};
use super::sample_meta::{SampleMeta, TransformMeta};

/// What a worker made of one input.
pub(super) enum Outcome {
    Sample {
        data: Vec<u8>,
        extension: &'static str,
        json: Vec<u8>,
        label: Option<u32>,
        hash: [u8; 32],
    },
    /// Bytes equal to an input already written (seen before decoding, to save the work).
    Duplicate {
        hash: [u8; 32],
    },
    Reject(Reject),
}

pub(super) struct Processed {
    pub(super) outcome: Outcome,
    /// Size of the input file (0 when it could not be read).
    pub(super) input_bytes: u64,
}

pub(super) struct Context<'a> {
    pub(super) files: &'a [InputFile],
    /// The input roots as given, by `InputFile::root`.
    pub(super) roots: &'a [String],
    pub(super) classes: Option<&'a [String]>,
}

pub(super) fn process(
    preparer: &mut Preparer,
    context: &Context<'_>,
    position: usize,
    options: &BuildOptions,
    seen: &Mutex<HashMap<[u8; 32], usize>>,
    pool: &Mutex<Vec<Vec<u8>>>,
) -> Processed {
    let file = &context.files[position];
    let reject = |reject: Reject, input_bytes| Processed {
        outcome: Outcome::Reject(reject),
        input_bytes,
    };
    if let Some(problem) = &file.problem {
        return reject(problem.clone(), 0);
    }
    let label = match file.label {
        Label::NotRequested => None,
        Label::Class(label) => Some(label),
        Label::Missing => {
            return reject(
                Reject::new(
                    RejectReason::Unlabelled,
                    "labels were requested but this input has none",
                ),
                0,
            );
        }
    };
    let mut data = pool
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_default();
    data.clear();
    if let Err(err) = fs::File::open(&file.path).and_then(|mut f| f.read_to_end(&mut data)) {
        give_back(pool, data, options.workers);
        return reject(Reject::new(RejectReason::Unreadable, err.to_string()), 0);
    }
    let input_bytes = data.len() as u64;
    let hash: [u8; 32] = Sha256::digest(&data).into();
    if options.dedup
        && seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .is_some_and(|&first| first < position)
    {
        give_back(pool, data, options.workers);
        return Processed {
            outcome: Outcome::Duplicate { hash },
            input_bytes,
        };
    }
    let prepared = match preparer.prepare(&data) {
        Ok(prepared) => prepared,
        Err(rejected) => {
            give_back(pool, data, options.workers);
            return reject(rejected, input_bytes);
        }
    };
    let sha256 = hex::encode(hash);
    let meta = SampleMeta {
        source: &file.source,
        input: context.roots.get(file.root).map_or("", String::as_str),
        format: prepared.kind.name(),
        width: prepared.width,
        height: prepared.height,
        orientation: prepared.orientation,
        bytes: input_bytes,
        sha256: &sha256,
        label,
        class: label
            .and_then(|l| context.classes?.get(l as usize))
            .map(String::as_str),
        transform: TransformMeta::of(&prepared),
    };
    let json = serde_json::to_vec(&meta).unwrap_or_default();
    if prepared.resized.is_some() {
        data.clear();
        data.extend_from_slice(preparer.encoded());
    }
    Processed {
        outcome: Outcome::Sample {
            data,
            extension: prepared.extension(),
            json,
            label,
            hash,
        },
        input_bytes,
    }
}

/// Return a buffer to the pool for the next input (a few per worker are kept).
pub(super) fn give_back(pool: &Mutex<Vec<Vec<u8>>>, buffer: Vec<u8>, workers: usize) {
    let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < workers * (WINDOW_PER_WORKER + 2) {
        pool.push(buffer);
    }
}
