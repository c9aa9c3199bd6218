//! Per-step training metrics: the record, the `metrics.jsonl` log and the throughput meter.
//!
//! One JSON object per line, one line per optimiser step, flushed as it is written so a
//! killed run keeps every finished step. On `--resume` the log is cut back to the steps the
//! checkpoint covers (a crash between the last checkpoint and the kill left steps that will
//! be recomputed), so the file always reads as one unbroken loss curve.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What one optimiser step logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimiser step, 0-based (the step that produced this loss).
    pub step: u64,
    /// Epoch of the pipeline after this step's batch.
    pub epoch: u64,
    /// Training loss of the step (mean over the accumulated micro-batches).
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Weight decay used by this step (absent in logs of older runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// The method's named loss parts (VICReg's three terms, ...), if it reports any.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub parts: std::collections::BTreeMap<String, f64>,
    /// Images in this step (all micro-batches).
    pub images: u64,
    /// Images per second over this step, wall clock (data wait included).
    pub images_per_second: f64,
    /// Seconds from the end of the previous step to the end of this one.
    pub step_seconds: f64,
    /// Seconds of `step_seconds` spent blocked waiting for an uploaded batch.
    pub data_wait_seconds: f64,
    /// `data_wait_seconds / step_seconds`: 0 = the device never waited for data.
    pub data_wait_fraction: f64,
}

impl StepMetrics {
    /// The record of a step of `images` images with the given timings.
    pub fn new(
        step: u64,
        epoch: u64,
        loss: f64,
        lr: f64,
        images: u64,
        elapsed: Duration,
        data_wait: Duration,
    ) -> Self {
        let step_seconds = elapsed.as_secs_f64().max(1e-9);
        let data_wait_seconds = data_wait.as_secs_f64().min(step_seconds);
        StepMetrics {
            step,
            epoch,
            loss,
            lr,
            weight_decay: None,
            parts: Default::default(),
            images,
            images_per_second: images as f64 / step_seconds,
            step_seconds,
            data_wait_seconds,
            data_wait_fraction: data_wait_seconds / step_seconds,
        }
    }
}

/// Errors of the metrics log.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Reading, writing or renaming the log failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line of an existing log is not a metrics record.
    #[error("{path}:{line}: not a metrics record")]
    Parse {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MetricsError + 'a {
    move |source| MetricsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `metrics.jsonl`, opened for appending.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Start a fresh log at `path` (an existing one is replaced).
    pub fn create(path: &Path) -> Result<Self, MetricsError> {
        let file = File::create(path).map_err(io_err("creating", path))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Continue the log at `path` after a resume at `next_step`: keep the records of steps
    /// before it (rewritten atomically), drop any later ones, then append.
    pub fn resume(path: &Path, next_step: u64) -> Result<Self, MetricsError> {
        let kept: Vec<StepMetrics> = if path.exists() {
            read_metrics(path)?
                .into_iter()
                .filter(|m| m.step < next_step)
                .collect()
        } else {
            Vec::new()
        };
        let tmp = path.with_extension("jsonl.tmp");
        {
            let mut w = BufWriter::new(File::create(&tmp).map_err(io_err("creating", &tmp))?);
            for m in &kept {
                write_record(&mut w, m).map_err(io_err("writing", &tmp))?;
            }
            let file = w.into_inner().map_err(|e| MetricsError::Io {
                op: "writing",
                path: tmp.clone(),
                source: e.into_error(),
            })?;
            file.sync_all().map_err(io_err("syncing", &tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(io_err("renaming", path))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err("opening", path))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Append one record and flush it to the OS.
    pub fn append(&mut self, m: &StepMetrics) -> Result<(), MetricsError> {
        write_record(&mut self.out, m)
            .and_then(|()| self.out.flush())
            .map_err(io_err("writing", &self.path))
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_record(w: &mut impl Write, m: &StepMetrics) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, m)?;
    w.write_all(b"\n")
}

/// Every record of a `metrics.jsonl`, in file order. A last line without its newline (cut
/// by a kill mid-write) is ignored; any other bad line is an error.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>, MetricsError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let mut out = Vec::new();
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(io_err("reading", path))?;
        if n == 0 {
            break;
        }
        number += 1;
        let complete = line.ends_with('\n');
        match serde_json::from_str::<StepMetrics>(line.trim_end()) {
            Ok(m) => out.push(m),
            Err(_) if !complete => break,
            Err(source) => {
                return Err(MetricsError::Parse {
                    path: path.to_path_buf(),
                    line: number,
                    source,
                });
            }
        }
    }
    Ok(out)
}

/// Exponential moving average for the progress bar (raw per-step numbers jitter).
#[derive(Debug, Clone, Copy, Default)]
pub struct Smoothed {
    value: Option<f64>,
}

impl Smoothed {
    /// Weight of the newest observation.
    const ALPHA: f64 = 0.1;

    /// Add an observation and return the smoothed value.
    pub fn update(&mut self, x: f64) -> f64 {
        let v = match self.value {
            Some(v) => v + Self::ALPHA * (x - v),
            None => x,
        };
        self.value = Some(v);
        v
    }

    /// The current smoothed value (`None` before the first observation).
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// Totals over a run, for the end-of-run summary.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunTotals {
    /// Steps completed in this process.
    pub steps: u64,
    /// Images consumed in this process.
    pub images: u64,
    /// Wall time of those steps.
    pub seconds: f64,
    /// Time of those steps spent waiting for data.
    pub data_wait_seconds: f64,
}

impl RunTotals {
    /// Account for one step.
    pub fn add(&mut self, m: &StepMetrics) {
        self.steps += 1;
        self.images += m.images;
        self.seconds += m.step_seconds;
        self.data_wait_seconds += m.data_wait_seconds;
    }

    /// Mean images per second over the run (0 before the first step).
    pub fn images_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.images as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Fraction of the run's wall time spent waiting for data.
    pub fn data_wait_fraction(&self) -> f64 {
        if self.seconds > 0.0 {
            self.data_wait_seconds / self.seconds
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, loss: f64) -> StepMetrics {
        StepMetrics::new(
            step,
            0,
            loss,
            1e-3,
            8,
            Duration::from_millis(100),
            Duration::from_millis(25),
        )
    }

    #[test]
    fn record_derives_rates() {
        let m = record(3, 0.5);
        assert!((m.images_per_second - 80.0).abs() < 1e-9);
        assert!((m.data_wait_fraction - 0.25).abs() < 1e-9);
    }

    #[test]
    fn resume_cuts_the_log_back_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::create(&path).unwrap();
        for step in 0..5 {
            log.append(&record(step, step as f64)).unwrap();
        }
        drop(log);
        // A kill mid-write leaves a partial last line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"step\":5,")
            .unwrap();
        assert_eq!(read_metrics(&path).unwrap().len(), 5);

        let mut log = MetricsLog::resume(&path, 3).unwrap();
        log.append(&record(3, 30.0)).unwrap();
        drop(log);
        let steps: Vec<(u64, f64)> = read_metrics(&path)
            .unwrap()
            .iter()
            .map(|m| (m.step, m.loss))
            .collect();
        assert_eq!(steps, vec![(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]);
    }

    #[test]
    fn a_bad_line_in_the_middle_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, "not json\n").unwrap();
        let err = read_metrics(&path).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("metrics.jsonl:1: not a metrics record"),
            "{err}"
        );
    }
}
