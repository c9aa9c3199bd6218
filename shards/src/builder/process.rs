//! The worker side of a build: one input → a sample ready to write, a duplicate seen
//! early (its bytes were already written; decoding is skipped), or a reject.
//! Input buffers come from a small pool and go back after writing.
//!
//! An input's type is checked before it is opened: named pipes, sockets and device nodes
//! (or symlinks to them) are rejected as `special_file` unread, since opening a FIFO blocks
//! until some writer comes and reading `/dev/zero` never ends. A regular file is read up
//! to [`MAX_INPUT_BYTES`]: a larger one, or one that keeps growing while it is read (a
//! log being written), is rejected as `unreadable` instead of holding up a worker and its
//! memory without end.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::build::{BuildOptions, WINDOW_PER_WORKER};
use super::inputs::{InputFile, Label};
use super::prepare::Preparer;
use super::reject::{Reject, RejectReason};
use super::sample_meta::{SampleMeta, TransformMeta};

/// Most bytes read from one input file (1 GiB). The largest image within the default pixel
/// limit (89.5 Mpixel) is about 716 MB even as 16-bit RGBA PNG stored uncompressed.
const MAX_INPUT_BYTES: u64 = 1 << 30;

/// Input buffers larger than this (64 MiB) are freed after use instead of pooled.
const MAX_POOLED_BYTES: usize = 64 << 20;

/// Reads all of `path` into `data`, refusing more than `limit` bytes.
fn read_input(path: &Path, data: &mut Vec<u8>, limit: u64) -> Result<(), Reject> {
    let unreadable = |e: std::io::Error| Reject::new(RejectReason::Unreadable, e.to_string());
    let file = fs::File::open(path).map_err(unreadable)?;
    file.take(limit + 1).read_to_end(data).map_err(unreadable)?;
    if data.len() as u64 > limit {
        return Err(Reject::new(
            RejectReason::Unreadable,
            format!("larger than {limit} bytes (or growing while read); not read further"),
        ));
    }
    Ok(())
}

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
    if file.row.is_some() {
        // A URL-list entry: download instead of reading a file.
        if let Err(rejected) = super::fetch::download(&file.source, &options.fetch, &mut data) {
            give_back(pool, data, options.workers);
            return reject(rejected, 0);
        }
    } else if let Some(special) = special_file(&file.path) {
        give_back(pool, data, options.workers);
        return reject(special, 0);
    } else if let Err(problem) = read_input(&file.path, &mut data, MAX_INPUT_BYTES) {
        give_back(pool, data, options.workers);
        return reject(problem, 0);
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
        caption: file.row.as_ref().and_then(|r| r.caption.as_deref()),
        columns: file
            .row
            .as_ref()
            .map(|r| &r.columns)
            .filter(|c| !c.is_empty()),
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

/// A reject when `path` (followed through symlinks) is a FIFO, socket or device node.
/// Regular files and directories pass (a directory fails to read, as `unreadable`), and
/// so does a path that cannot be examined: opening it says what is wrong.
fn special_file(path: &Path) -> Option<Reject> {
    let meta = fs::metadata(path).ok()?;
    if meta.is_file() || meta.is_dir() {
        return None;
    }
    let kind = special_kind(meta.file_type());
    let link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let detail = if link {
        format!("symlink to a {kind}: not a regular file, not opened")
    } else {
        format!("{kind}: not a regular file, not opened")
    };
    Some(Reject::new(RejectReason::SpecialFile, detail))
}

/// What kind of special file `file_type` is, in words.
fn special_kind(file_type: fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "named pipe (FIFO)";
        }
        if file_type.is_socket() {
            return "socket";
        }
        if file_type.is_block_device() {
            return "block device";
        }
        if file_type.is_char_device() {
            return "character device";
        }
    }
    let _ = file_type;
    "special file"
}

/// Return a buffer to the pool for the next input (a few per worker are kept).
pub(super) fn give_back(pool: &Mutex<Vec<Vec<u8>>>, buffer: Vec<u8>, workers: usize) {
    // One huge input must not keep its buffer for the rest of the run (issue 14).
    if buffer.capacity() > MAX_POOLED_BYTES {
        return;
    }
    let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < workers * (WINDOW_PER_WORKER + 2) {
        pool.push(buffer);
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Issue 14: special files are recognised without being opened (a FIFO would block).
    #[test]
    fn fifos_sockets_and_devices_are_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe.jpg");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let reject = special_file(&fifo).expect("a FIFO is special");
            assert_eq!(reject.reason, RejectReason::SpecialFile);
            assert!(reject.detail.starts_with("named pipe (FIFO)"), "{reject:?}");
            let link = dir.path().join("link.jpg");
            std::os::unix::fs::symlink(&fifo, &link).unwrap();
            let reject = special_file(&link).expect("a symlink to a FIFO is special");
            assert!(
                reject.detail.starts_with("symlink to a named pipe"),
                "{reject:?}"
            );
        }
        let socket = dir.path().join("socket.jpg");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert!(special_file(&socket).unwrap().detail.starts_with("socket"));
        let null = special_file(Path::new("/dev/null")).expect("a device is special");
        assert!(null.detail.starts_with("character device"), "{null:?}");

        let plain = dir.path().join("plain.jpg");
        fs::write(&plain, b"x").unwrap();
        assert!(special_file(&plain).is_none());
        assert!(special_file(dir.path()).is_none());
        assert!(special_file(&dir.path().join("missing.jpg")).is_none());
    }

    /// Issue 14: a file larger than the limit, or growing while read, is refused after
    /// `limit + 1` bytes instead of read without end.
    #[test]
    fn inputs_past_the_byte_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jpg");
        fs::write(&path, [7u8; 10]).unwrap();
        let mut data = Vec::new();
        let reject = read_input(&path, &mut data, 4).unwrap_err();
        assert_eq!(reject.reason, RejectReason::Unreadable);
        assert!(
            reject.detail.starts_with("larger than 4 bytes"),
            "{reject:?}"
        );
        assert_eq!(data.len(), 5, "reads one byte past the limit, no more");
        data.clear();
        read_input(&path, &mut data, 10).unwrap();
        assert_eq!(data, [7u8; 10]);
        let missing = read_input(&dir.path().join("gone.jpg"), &mut data, 10).unwrap_err();
        assert_eq!(missing.reason, RejectReason::Unreadable);

        // A buffer that grew past the pool limit is not kept.
        let pool = Mutex::new(Vec::new());
        give_back(&pool, Vec::with_capacity(MAX_POOLED_BYTES + 1), 4);
        give_back(&pool, Vec::with_capacity(16), 4);
        assert_eq!(pool.lock().unwrap().len(), 1);
    }
}
