//! The shard build itself: plan, resume, process in parallel, write in order, report.
//!
//! 1. Collect the inputs ([`super::inputs`]), keep this `--part`'s contiguous range.
//! 2. Resume: walk the journal ([`super::journal`]) from shard 0; every shard whose record
//!    matches this command and whose file is there is done. Everything after the last done
//!    shard (shards renamed but not recorded, temporary files of a killed run, records
//!    past it) is removed, and the build restarts at the record's `end_input`.
//! 3. Workers read, hash and prepare inputs ([`super::prepare`]); the calling thread takes
//!    the results in input order ([`super::ordered`]), drops duplicates (first copy in
//!    input order wins), rotates shards by samples and tar bytes, and after each shard is
//!    renamed and indexed writes its record.
//!
//! Since results are consumed in input order and every step is a pure function of the
//! inputs and options, the same command gives byte-identical shards, and a rerun after a
//! kill continues exactly where the last recorded shard ended.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use super::error::BuildError;
use super::inputs::{self, InputFile, InputSpec, LabelSource, Part};
use super::journal::{self, DuplicateRecord, JOURNAL_DIR, RejectRecord, ShardRecord};
use super::manifest::{Manifest, ShardSummary, Throughput};
use super::names::ShardNames;
use super::ordered::ordered_map;
use super::prepare::{PrepareOptions, Preparer};
use super::process::{Context, Outcome, give_back, process};
use super::publish::Publisher;
use crate::atomic::AtomicFile;
use crate::compression::Compression;
use crate::writer::{ShardFileWriter, sample_tar_len};

/// Results allowed to wait for the in-order writer, per worker.
pub(super) const WINDOW_PER_WORKER: usize = 8;

/// Everything `tessera shard` needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Directories, list files and files, in command-line order.
    pub inputs: Vec<InputSpec>,
    /// Where labels come from.
    pub labels: LabelSource,
    /// Output directory (created if missing).
    pub out: PathBuf,
    /// Shard name prefix: `{prefix}-{n:06}.tar`, or `{prefix}-part{I}-{n:06}.tar` with parts.
    pub prefix: String,
    /// This machine's part of the job.
    pub part: Part,
    /// Samples per shard at most.
    pub max_samples: u64,
    /// Uncompressed tar bytes per shard at most (a single larger sample still gets a shard).
    pub max_bytes: u64,
    /// Shard compression.
    pub compression: Compression,
    /// Checks and transforms applied to each image.
    pub prepare: PrepareOptions,
    /// Drop inputs whose bytes equal an earlier input's (within this part).
    pub dedup: bool,
    /// Write the inputs in an order shuffled with this seed instead of sorted
    /// ([`super::inputs::InputSet::shuffle`]).
    pub shuffle: Option<u64>,
    /// Worker threads.
    pub workers: usize,
    /// Publish into an object store (`s3://bucket/prefix`, `gs://...`, `az://...`): `out`
    /// is then only the local staging directory (see [`super::publish`]).
    pub publish_to: Option<String>,
    /// How URL-list inputs ([`InputSpec::Urls`]) are downloaded.
    pub fetch: super::fetch::FetchOptions,
}

/// Told how far the build is (the CLI draws a progress bar from it).
pub trait Progress: Sync {
    /// The build covers `total` inputs, of which `done` were finished by an earlier run.
    fn begin(&self, total: u64, done: u64);
    /// `inputs` more inputs were consumed, reading `bytes`.
    fn advance(&self, inputs: u64, bytes: u64);
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _: u64, _: u64) {}
    fn advance(&self, _: u64, _: u64) {}
}

/// Build the shards; returns the manifest that was also written to `out`.
pub fn build(options: &BuildOptions, progress: &dyn Progress) -> Result<Manifest, BuildError> {
    let started = Instant::now();
    check_options(options)?;
    let out = options.out.as_path();
    fs::create_dir_all(out).map_err(|source| BuildError::Output {
        path: out.to_path_buf(),
        source,
    })?;
    let out_canonical = fs::canonicalize(out).ok();
    let mut set = inputs::collect(&options.inputs, &options.labels, out_canonical.as_deref())?;
    if let Some(seed) = options.shuffle {
        set.shuffle(seed);
    }
    let range = options.part.range(set.files.len());
    let key_offset = range.start;
    let files = &set.files[range];
    if let Some(classes) = &set.classes {
        write_atomic(
            &out.join("classes.json"),
            &serde_json::to_vec_pretty(classes).unwrap_or_default(),
        )?;
    }
    let names = ShardNames::new(options);
    let plan = plan_fingerprint(options, files);
    let publisher = options
        .publish_to
        .as_deref()
        .map(Publisher::new)
        .transpose()?;
    if let Some(publisher) = &publisher {
        publisher.pull_journal(out)?;
        if set.classes.is_some() {
            publisher.publish_file(out, "classes.json")?;
        }
    }

    // Resume: the longest prefix of recorded, present shards.
    let mut records: Vec<ShardRecord> = Vec::new();
    loop {
        let name = names.name(records.len() as u64);
        let Some(record) = ShardRecord::read(out, &name)? else {
            break;
        };
        if record.plan != plan {
            return Err(BuildError::ForeignShards {
                path: journal::record_path(out, &name),
                what: "inputs or options",
            });
        }
        let present = match &publisher {
            Some(publisher) => publisher.holds(&name, record.bytes)?,
            None => fs::metadata(out.join(&name)).is_ok_and(|m| m.len() == record.bytes),
        };
        if !present {
            break;
        }
        records.push(record);
    }
    let resumed = records.len() as u64;
    names.remove_from(out, resumed)?;
    let start = records.last().map_or(0, |r| r.end_input);
    progress.begin(files.len() as u64, start as u64);

    // Dedup state continues from the recorded shards.
    let mut seen: HashMap<[u8; 32], usize> = HashMap::new();
    for record in &records {
        for (position, hash) in &record.kept {
            if let Some(hash) = parse_hash(hash) {
                seen.entry(hash).or_insert(*position);
            }
        }
    }
    let seen = Mutex::new(seen);
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let roots: Vec<String> = options
        .inputs
        .iter()
        .map(|spec| spec_root(spec).display().to_string())
        .collect();
    let mut shard = OpenShard::new(records.len() as u64, start);
    let mut run_inputs = 0u64;
    let mut run_bytes = 0u64;
    let window = options.workers * WINDOW_PER_WORKER;

    ordered_map(
        start..files.len(),
        options.workers,
        window,
        || Preparer::new(options.prepare.clone()),
        |preparer, position| {
            let context = Context {
                files,
                roots: &roots,
                classes: set.classes.as_deref(),
            };
            process(preparer, &context, position, options, &seen, &pool)
        },
        |position, processed| {
            run_inputs += 1;
            run_bytes += processed.input_bytes;
            progress.advance(1, processed.input_bytes);
            let source = &files[position].source;
            match processed.outcome {
                Outcome::Reject(reject) => shard.rejects.push(RejectRecord {
                    path: source.clone(),
                    reason: reject.reason,
                    detail: reject.detail,
                }),
                Outcome::Sample {
                    data,
                    extension,
                    json,
                    label,
                    hash,
                } => {
                    let first = if options.dedup {
                        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                        let first = *seen.entry(hash).or_insert(position);
                        (first != position).then_some(first)
                    } else {
                        None
                    };
                    if let Some(first) = first {
                        shard.duplicates.push(DuplicateRecord {
                            path: source.clone(),
                            duplicate_of: files[first].source.clone(),
                        });
                    } else {
                        let key = sample_key(key_offset + position);
                        let label_text = label.map(|l| l.to_string());
                        let mut fields: Vec<(&str, &[u8])> =
                            vec![(extension, &data), ("json", &json)];
                        if let Some(label) = &label_text {
                            fields.push(("cls", label.as_bytes()));
                        }
                        let caption = files[position]
                            .row
                            .as_ref()
                            .and_then(|r| r.caption.as_ref());
                        if let Some(caption) = caption {
                            fields.push(("txt", caption.as_bytes()));
                        }
                        let tar_len = sample_tar_len(&key, &fields);
                        if shard.is_full(options, tar_len) {
                            let next = OpenShard::new(shard.number + 1, position);
                            records.extend(std::mem::replace(&mut shard, next).finish(
                                out,
                                &plan,
                                position,
                                publisher.as_ref(),
                            )?);
                        }
                        shard.write(out, &names, options.compression, &key, &fields)?;
                        shard.kept.push((position, hex::encode(hash)));
                        shard.input_bytes += processed.input_bytes;
                    }
                    give_back(&pool, data, options.workers);
                }
                Outcome::Duplicate { hash } => {
                    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    let first = seen.get(&hash).copied().unwrap_or(position);
                    shard.duplicates.push(DuplicateRecord {
                        path: source.clone(),
                        duplicate_of: files[first].source.clone(),
                    });
                }
            }
            Ok(())
        },
        || BuildError::WorkerPanicked,
    )?;

    // Without any sample there is no shard to record: rejects go to the manifest only.
    let (leftover_rejects, leftover_duplicates) = if shard.writer.is_some() {
        records.extend(shard.finish(out, &plan, files.len(), publisher.as_ref())?);
        (Vec::new(), Vec::new())
    } else {
        (shard.rejects, shard.duplicates)
    };

    let seconds = started.elapsed().as_secs_f64();
    let mut manifest = Manifest {
        format: "tessera-shard-manifest",
        part: format!("{}/{}", options.part.index, options.part.count),
        inputs: files.len() as u64,
        samples: records.iter().map(|r| r.samples).sum(),
        shards: records
            .iter()
            .map(|r| ShardSummary {
                path: r.shard.clone(),
                samples: r.samples,
                bytes: r.bytes,
                sha256: r.sha256.clone(),
            })
            .collect(),
        classes: set.classes.clone(),
        shuffle_seed: options.shuffle,
        rejected: records
            .iter()
            .flat_map(|r| r.rejects.iter().cloned())
            .collect(),
        rejected_by_reason: Default::default(),
        duplicates: records
            .iter()
            .flat_map(|r| r.duplicates.iter().cloned())
            .collect(),
        resumed_shards: resumed,
        throughput: Throughput {
            seconds,
            inputs: run_inputs,
            input_bytes: run_bytes,
            images_per_s: run_inputs as f64 / seconds.max(1e-9),
            mb_per_s: run_bytes as f64 / 1e6 / seconds.max(1e-9),
        },
    };
    manifest.rejected.extend(leftover_rejects);
    manifest.duplicates.extend(leftover_duplicates);
    for reject in &manifest.rejected {
        *manifest
            .rejected_by_reason
            .entry(reject.reason)
            .or_default() += 1;
    }
    let manifest_json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    write_atomic(&out.join(names.manifest_name()), &manifest_json)?;
    if let Some(publisher) = &publisher {
        publisher.publish_file(out, &names.manifest_name())?;
    }
    Ok(manifest)
}

/// The key of the input at `global` position in the full sorted list (all parts): unique
/// across parts, sorted like the inputs, no dots.
pub fn sample_key(global: usize) -> String {
    format!("{global:09}")
}

fn check_options(options: &BuildOptions) -> Result<(), BuildError> {
    let bad = |option, reason: &str| {
        Err(BuildError::InvalidOption {
            option,
            reason: reason.to_string(),
        })
    };
    if options.inputs.is_empty() {
        return bad("INPUT", "give at least one directory, list file or image");
    }
    if options.max_samples == 0 {
        return bad("--max-samples", "must be at least 1");
    }
    if options.max_bytes == 0 {
        return bad("--max-bytes", "must be at least 1 byte");
    }
    if options.workers == 0 {
        return bad("--workers", "must be at least 1");
    }
    if !(1..=100).contains(&options.prepare.quality) {
        return bad("--quality", "must be in 1..=100");
    }
    if options.prepare.max_side == Some(0) {
        return bad("--max-side", "must be at least 1 pixel");
    }
    let prefix = &options.prefix;
    if prefix.is_empty() || prefix.starts_with('.') || prefix.contains(['/', '\\', '\0']) {
        return bad(
            "--prefix",
            "must be a non-empty file name part without `/` that does not start with `.`",
        );
    }
    Ok(())
}

/// The shard being filled and what its record will say.
struct OpenShard {
    number: u64,
    first_input: usize,
    writer: Option<ShardFileWriter>,
    input_bytes: u64,
    kept: Vec<(usize, String)>,
    rejects: Vec<RejectRecord>,
    duplicates: Vec<DuplicateRecord>,
}

impl OpenShard {
    fn new(number: u64, first_input: usize) -> Self {
        OpenShard {
            number,
            first_input,
            writer: None,
            input_bytes: 0,
            kept: Vec::new(),
            rejects: Vec::new(),
            duplicates: Vec::new(),
        }
    }

    /// Whether a sample of `tar_len` bytes must go to the next shard.
    fn is_full(&self, options: &BuildOptions, tar_len: u64) -> bool {
        self.writer.as_ref().is_some_and(|w| {
            w.samples() >= options.max_samples || w.tar_bytes() + tar_len > options.max_bytes
        })
    }

    fn write(
        &mut self,
        out: &Path,
        names: &ShardNames,
        compression: Compression,
        key: &str,
        fields: &[(&str, &[u8])],
    ) -> Result<(), BuildError> {
        if self.writer.is_none() {
            let path = out.join(names.name(self.number));
            self.writer = Some(ShardFileWriter::create(&path, compression)?.with_index(true));
        }
        if let Some(writer) = &mut self.writer {
            writer.write_sample(key, fields)?;
        }
        Ok(())
    }

    /// Rename the shard into place (its index follows), then record it; `None` when no
    /// sample was written.
    fn finish(
        self,
        out: &Path,
        plan: &str,
        end_input: usize,
        publisher: Option<&Publisher>,
    ) -> Result<Option<ShardRecord>, BuildError> {
        // No sample, no shard file: nothing to record.
        let Some(writer) = self.writer else {
            return Ok(None);
        };
        let info = writer.finish()?;
        let record = ShardRecord {
            plan: plan.to_string(),
            shard: info
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            number: self.number,
            first_input: self.first_input,
            end_input,
            samples: info.samples,
            bytes: info.bytes,
            sha256: info.sha256,
            input_bytes: self.input_bytes,
            kept: self.kept,
            rejects: self.rejects,
            duplicates: self.duplicates,
        };
        match publisher {
            // Shard, index, then the record: a record in the store means the shard is there.
            Some(publisher) => {
                publisher.publish_shard(out, &record.shard)?;
                record.write(out)?;
                let relative = format!("{JOURNAL_DIR}/{}.json", record.shard);
                publisher.publish_file(out, &relative)?;
            }
            None => record.write(out)?,
        }
        Ok(Some(record))
    }
}

fn parse_hash(hex_hash: &str) -> Option<[u8; 32]> {
    hex::decode(hex_hash).ok()?.try_into().ok()
}

fn spec_root(spec: &InputSpec) -> &Path {
    match spec {
        InputSpec::Dir(p) | InputSpec::List(p) | InputSpec::File(p) | InputSpec::Urls(p) => p,
    }
}

/// Fingerprint of everything that decides the output of this part.
fn plan_fingerprint(options: &BuildOptions, files: &[InputFile]) -> String {
    let header = format!(
        "tessera-shard/1 prefix={} part={}/{} max_samples={} max_bytes={} compression={} max_pixels={} \
         max_side={:?} quality={} dedup={} labels={:?} shuffle={:?}",
        options.prefix,
        options.part.index,
        options.part.count,
        options.max_samples,
        options.max_bytes,
        options.compression,
        options.prepare.max_pixels,
        options.prepare.max_side,
        options.prepare.quality,
        options.dedup,
        options.labels,
        options.shuffle,
    );
    let labels: Vec<String> = files.iter().map(|f| format!("{:?}", f.label)).collect();
    let parts = std::iter::once(header.as_bytes()).chain(
        files
            .iter()
            .zip(&labels)
            .flat_map(|(f, l)| [f.source.as_bytes(), l.as_bytes()]),
    );
    journal::fingerprint(parts)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes).map_err(|source| BuildError::Output {
        path: path.to_path_buf(),
        source,
    })?;
    file.commit()?;
    Ok(())
}
