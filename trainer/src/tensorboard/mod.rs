//! TensorBoard event files of a run, written as it trains: `RUN/tb/events.out.tfevents.*`.
//!
//! `tensorboard --logdir runs/` then shows every run under `runs/` side by side (and W&B's
//! TensorBoard sync reads the same files). What a run writes, by tag:
//!
//! | tag | what |
//! |---|---|
//! | `train/loss`, `train/loss/<part>` | the step's loss and the method's named parts |
//! | `train/lr`, `train/weight_decay`, `train/momentum` | the schedules (momentum: teacher methods) |
//! | `perf/images_per_second`, `perf/data_wait_fraction`, `perf/step_seconds` | throughput |
//! | `pipeline/busy/<stage>` | each loader stage's busy share since the previous record |
//! | `pictures/<method>` | the pictures the run saves under `pictures/` |
//! | `recipe` (text) | the resolved recipe, `config.json` |
//!
//! The format is written here rather than by a crate: `tensorboard-rs` (last released in
//! 2022) builds `protobuf` 2.x, which has a known denial-of-service advisory, and `image`
//! 0.23 beside ours; the format itself is small and documented: TFRecord framing
//! ([`record`]) around `Event` protobufs ([`proto`]), encoded by hand.
//!
//! **Resume.** Like `metrics.jsonl`, the event files are cut back to the steps the
//! checkpoint covers (every event of a step at or after the resumed step, written by the
//! process that was killed, is dropped, files rewritten atomically), and the new process
//! writes a new file that starts with `SessionLog START` at the resumed step, the event with
//! which TensorFlow marks a restart (TensorBoard then drops any older event at or after it,
//! so even a copy of the old files taken before the cut reads right).

pub mod proto;
pub mod record;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tessera_pipeline::stats::StatsSnapshot;

use crate::metrics::StepMetrics;
pub use proto::{Body, Value};

/// The folder of a run directory that holds the event files.
pub const DIR: &str = "tb";

/// Errors writing event files.
#[derive(Debug, thiserror::Error)]
pub enum TensorboardError {
    /// Creating, reading, writing or renaming an event file failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> TensorboardError + 'a {
    move |source| TensorboardError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The event files in `dir`, in the order TensorBoard reads them (by name).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, TensorboardError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let path = entry.map_err(io_err("listing", dir))?.path();
        let is_events = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("events.out.tfevents.") && !n.ends_with(".tmp"));
        if is_events {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Rewrite every event file in `dir` without the events of steps `>= next_step` (the
/// `file_version` record stays). Files are rewritten under a temporary name and renamed.
pub fn cut_back(dir: &Path, next_step: u64) -> Result<(), TensorboardError> {
    for path in event_files(dir)? {
        let bytes = std::fs::read(&path).map_err(io_err("reading", &path))?;
        let (records, fault) = record::read_records(&bytes);
        let keep: Vec<&[u8]> = records
            .iter()
            .enumerate()
            .filter(|(i, r)| *i == 0 || proto::event_step(r).is_some_and(|s| s < next_step))
            .map(|(_, r)| *r)
            .collect();
        if keep.len() == records.len() && fault.is_none() {
            continue;
        }
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        {
            let file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
            let mut out = BufWriter::new(file);
            for r in keep {
                record::write_record(&mut out, r).map_err(io_err("writing", &tmp))?;
            }
            let file = out.into_inner().map_err(|e| TensorboardError::Io {
                op: "writing",
                path: tmp.clone(),
                source: e.into_error(),
            })?;
            file.sync_all().map_err(io_err("syncing", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io_err("renaming", &path))?;
    }
    Ok(())
}

/// This machine's name for event file names (`localhost` when unknown).
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One event file, open for appending events. Every event is flushed to the OS as it is
/// written, so a killed run keeps every finished step.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if missing), named so that it sorts after the
    /// files already there: `events.out.tfevents.<unix seconds>.<host>.<sequence>`.
    pub fn create(dir: &Path) -> Result<Self, TensorboardError> {
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let sequence = event_files(dir)?.len();
        let secs = now() as u64;
        let path = dir.join(format!(
            "events.out.tfevents.{secs:010}.{}.{sequence:04}",
            hostname()
        ));
        let file = File::create(&path).map_err(io_err("creating", &path))?;
        let mut writer = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        writer.write(0, Body::FileVersion("brain.Event:2"))?;
        Ok(writer)
    }

    /// Append one event at `step` and flush it.
    pub fn write(&mut self, step: u64, body: Body<'_>) -> Result<(), TensorboardError> {
        let data = proto::event(now(), step, body);
        record::write_record(&mut self.out, &data)
            .and_then(|()| self.out.flush())
            .map_err(io_err("writing", &self.path))
    }

    /// Scalars at `step`, in one event. Non-finite values are written as they are
    /// (TensorBoard shows them as gaps).
    pub fn scalars(&mut self, step: u64, values: &[(&str, f64)]) -> Result<(), TensorboardError> {
        let values: Vec<(&str, Value<'_>)> = values
            .iter()
            .map(|(tag, v)| (*tag, Value::Scalar(*v as f32)))
            .collect();
        self.write(step, Body::Summary(&values))
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What a training run logs to TensorBoard: the loop's view of [`EventWriter`].
#[derive(Debug)]
pub struct RunBoard {
    writer: EventWriter,
    /// `(elapsed seconds, busy seconds per stage)` at the previous pipeline record.
    last_pipeline: Option<(f64, Vec<f64>)>,
}

impl RunBoard {
    /// Open the event files of the run in `run_dir` at `first_step`: a fresh run starts a
    /// file and logs `recipe` as text; a resumed one (`first_step > 0`) first cuts the old
    /// files back to the steps before `first_step`, then marks the restart.
    pub fn open(run_dir: &Path, first_step: u64, recipe: &str) -> Result<Self, TensorboardError> {
        let dir = run_dir.join(DIR);
        if first_step > 0 {
            cut_back(&dir, first_step)?;
        }
        let mut writer = EventWriter::create(&dir)?;
        if first_step > 0 {
            writer.write(first_step, Body::SessionStart)?;
        } else {
            let text = format!("```json\n{recipe}\n```");
            writer.write(0, Body::Summary(&[("recipe", Value::Text(&text))]))?;
        }
        Ok(RunBoard {
            writer,
            last_pipeline: None,
        })
    }

    /// The scalars of one optimiser step.
    pub fn step(&mut self, m: &StepMetrics) -> Result<(), TensorboardError> {
        let part_tags: Vec<(String, f64)> = m
            .parts
            .iter()
            .map(|(name, v)| (format!("train/loss/{name}"), *v))
            .collect();
        let mut values: Vec<(&str, f64)> = vec![
            ("train/loss", m.loss),
            ("train/lr", m.lr),
            ("perf/images_per_second", m.images_per_second),
            ("perf/data_wait_fraction", m.data_wait_fraction),
            ("perf/step_seconds", m.step_seconds),
        ];
        values.extend(part_tags.iter().map(|(t, v)| (t.as_str(), *v)));
        if let Some(wd) = m.weight_decay {
            values.push(("train/weight_decay", wd));
        }
        if let Some(momentum) = m.momentum {
            values.push(("train/momentum", momentum));
        }
        self.writer.scalars(m.step, &values)
    }

    /// A picture the run saved, as an image summary under `tag`.
    pub fn picture(
        &mut self,
        tag: &str,
        step: u64,
        png: &[u8],
        (width, height): (u32, u32),
    ) -> Result<(), TensorboardError> {
        let value = Value::Image { png, width, height };
        self.writer.write(step, Body::Summary(&[(tag, value)]))
    }

    /// Each loader stage's busy share of its threads' time since the previous call (since
    /// the loader started, the first time), as `pipeline/busy/<stage>`.
    pub fn pipeline(&mut self, step: u64, s: &StatsSnapshot) -> Result<(), TensorboardError> {
        let busy: Vec<f64> = s
            .stages
            .iter()
            .map(|st| st.busy_fraction * s.elapsed_seconds * st.threads as f64)
            .collect();
        let (t0, busy0) = match &self.last_pipeline {
            Some((t, b)) if b.len() == busy.len() => (*t, b.clone()),
            _ => (0.0, vec![0.0; busy.len()]),
        };
        let dt = s.elapsed_seconds - t0;
        if dt <= 0.0 {
            return Ok(());
        }
        let tags: Vec<(String, f64)> = s
            .stages
            .iter()
            .zip(busy.iter().zip(&busy0))
            .map(|(st, (b, b0))| {
                let share = ((b - b0) / (dt * st.threads.max(1) as f64)).clamp(0.0, 1.0);
                (format!("pipeline/busy/{}", tag_name(&st.name)), share)
            })
            .collect();
        self.last_pipeline = Some((s.elapsed_seconds, busy));
        let values: Vec<(&str, f64)> = tags.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        self.writer.scalars(step, &values)
    }

    /// The event file this process writes.
    pub fn path(&self) -> &Path {
        self.writer.path()
    }
}

/// A stage name as a tag component: lower case, runs of other characters as one `_`
/// (`"decode + views"` -> `decode_views`).
pub fn tag_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn steps_in(dir: &Path) -> Vec<u64> {
        let mut steps = Vec::new();
        for path in event_files(dir).unwrap() {
            let bytes = std::fs::read(&path).unwrap();
            let (records, fault) = record::read_records(&bytes);
            assert_eq!(fault, None);
            for r in records {
                let top = proto::fields(r).unwrap();
                if top.iter().any(|(n, _)| *n == 5) {
                    steps.push(proto::event_step(r).unwrap());
                }
            }
        }
        steps
    }

    fn metrics(step: u64) -> StepMetrics {
        StepMetrics::new(
            step,
            0,
            1.0,
            1e-3,
            4,
            Duration::from_millis(10),
            Duration::ZERO,
        )
    }

    #[test]
    fn resume_cuts_back_and_marks_the_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut board = RunBoard::open(dir.path(), 0, "{}").unwrap();
        for step in 0..6 {
            board.step(&metrics(step)).unwrap();
        }
        drop(board);
        let mut board = RunBoard::open(dir.path(), 4, "{}").unwrap();
        for step in 4..7 {
            board.step(&metrics(step)).unwrap();
        }
        let tb = dir.path().join(DIR);
        assert_eq!(event_files(&tb).unwrap().len(), 2);
        // Step 0 also holds the recipe text.
        assert_eq!(steps_in(&tb), vec![0, 0, 1, 2, 3, 4, 5, 6]);
        let bytes = std::fs::read(board.path()).unwrap();
        let (records, _) = record::read_records(&bytes);
        let start = proto::fields(records[1]).unwrap();
        assert!(start.contains(&(2, proto::Field::Varint(4))), "{start:?}");
        assert!(start.iter().any(|(n, _)| *n == 7), "SessionLog: {start:?}");
    }

    #[test]
    fn stage_names_become_tags() {
        assert_eq!(tag_name("decode + views"), "decode_views");
        assert_eq!(tag_name("read (async I/O)"), "read_async_i_o");
    }
}
