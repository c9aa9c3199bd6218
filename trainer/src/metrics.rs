//! Per-step training metrics: the record, the `metrics.jsonl` log and the throughput meter.
//! Also the debiased smoothing the progress bar and the plots share ([`Smoothed`]), and
//! the end-of-process timing summary, `timing.json` ([`RunTiming`]).
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
    /// Momentum of the method's teacher (EMA) used after this step, for teacher methods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
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
            momentum: None,
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
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file of the run directory does not hold what it should.
    #[error("{}: not a {what}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A line of an existing log is not a metrics record.
    #[error("{}:{line}: not a metrics record", path.display())]
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

/// TensorBoard's smoothing: an exponential moving average with the start-up bias removed.
///
/// `ema_t = weight * ema_{t-1} + (1 - weight) * x_t` from `ema_0 = 0`, reported as
/// `ema_t / (1 - weight^t)`, the same debiasing as Adam's moment estimates. Unlike an EMA
/// started at the first value, the first points are not dragged towards it, and unlike a
/// zero-started EMA they are not dragged towards 0. Non-finite observations are skipped (the
/// previous smoothed value is repeated), as TensorBoard does. `weight` is TensorBoard's
/// "smoothing" slider: 0 = raw, 0.99 = very smooth.
#[derive(Debug, Clone, Copy)]
pub struct Smoothed {
    weight: f64,
    ema: f64,
    count: i32,
    value: Option<f64>,
}

impl Default for Smoothed {
    /// Weight 0.9, about the last ten observations.
    fn default() -> Self {
        Smoothed::new(0.9)
    }
}

impl Smoothed {
    /// A smoother with `weight` in `[0, 1)` (clamped there).
    pub fn new(weight: f64) -> Self {
        Smoothed {
            weight: weight.clamp(0.0, 0.999_999),
            ema: 0.0,
            count: 0,
            value: None,
        }
    }

    /// Add an observation and return the smoothed value.
    pub fn update(&mut self, x: f64) -> f64 {
        if x.is_finite() {
            self.ema = self.weight * self.ema + (1.0 - self.weight) * x;
            self.count = self.count.saturating_add(1);
            let debias = 1.0 - self.weight.powi(self.count);
            self.value = Some(self.ema / debias);
        }
        self.value.unwrap_or(x)
    }

    /// The current smoothed value (`None` before the first finite observation).
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// [`Smoothed`] over a whole series: one smoothed value per input value.
pub fn debiased_ema(values: &[f64], weight: f64) -> Vec<f64> {
    let mut s = Smoothed::new(weight);
    values.iter().map(|&x| s.update(x)).collect()
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

/// Where one process's training time went: written to `timing.json` when it stops, read
/// by `tessera report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTiming {
    /// Steps done by the process.
    pub steps: u64,
    /// Images they consumed.
    pub images: u64,
    /// Their wall time, seconds.
    pub seconds: f64,
    /// Of which waiting for an uploaded batch.
    pub data_wait_seconds: f64,
    /// Mean images per second.
    pub images_per_second: f64,
    /// `data_wait_seconds / seconds`.
    pub data_wait_fraction: f64,
    /// The uploader thread between the pipeline and the device.
    pub uploader: UploaderTimes,
    /// The loader's stages, in pipeline order (empty for synthetic batches).
    pub stages: Vec<StageTime>,
}

/// The uploader's cumulative time, seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UploaderTimes {
    /// Batches uploaded.
    pub batches: u64,
    /// Blocked waiting for the pipeline's next batch.
    pub waiting_for_pipeline_seconds: f64,
    /// Creating device tensors.
    pub uploading_seconds: f64,
    /// Blocked on a full queue (the step is the bottleneck).
    pub waiting_for_step_seconds: f64,
}

/// One loader stage over the whole process: shares of its threads' time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    /// The stage (`decode + views`, ...).
    pub name: String,
    /// Its threads.
    pub threads: usize,
    /// Items it finished.
    pub items: u64,
    /// Share doing its own work.
    pub busy_fraction: f64,
    /// Share waiting for the stage before it.
    pub blocked_on_input_fraction: f64,
    /// Share waiting for room after it.
    pub blocked_on_output_fraction: f64,
}

impl RunTiming {
    /// The summary of a process's totals, its uploader and its loader's last snapshot.
    pub fn new(
        totals: &RunTotals,
        uploader: &crate::feeder::UploaderTiming,
        pipeline: Option<tessera_pipeline::stats::StatsSnapshot>,
    ) -> Self {
        RunTiming {
            steps: totals.steps,
            images: totals.images,
            seconds: totals.seconds,
            data_wait_seconds: totals.data_wait_seconds,
            images_per_second: totals.images_per_second(),
            data_wait_fraction: totals.data_wait_fraction(),
            uploader: UploaderTimes {
                batches: uploader.batches,
                waiting_for_pipeline_seconds: uploader.waiting_for_pipeline.as_secs_f64(),
                uploading_seconds: uploader.uploading.as_secs_f64(),
                waiting_for_step_seconds: uploader.waiting_for_step.as_secs_f64(),
            },
            stages: pipeline
                .map(|p| {
                    p.stages
                        .into_iter()
                        .map(|s| StageTime {
                            name: s.name,
                            threads: s.threads,
                            items: s.items,
                            busy_fraction: s.busy_fraction,
                            blocked_on_input_fraction: s.blocked_on_input_fraction,
                            blocked_on_output_fraction: s.blocked_on_output_fraction,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Write it as pretty JSON at `path`.
    pub fn write(&self, path: &Path) -> Result<(), MetricsError> {
        let text = serde_json::to_vec_pretty(self).map_err(|source| MetricsError::Json {
            path: path.to_path_buf(),
            what: "timing record",
            source,
        })?;
        std::fs::write(path, text).map_err(io_err("writing", path))
    }

    /// Read one written by [`Self::write`].
    pub fn read(path: &Path) -> Result<Self, MetricsError> {
        let bytes = std::fs::read(path).map_err(io_err("reading", path))?;
        serde_json::from_slice(&bytes).map_err(|source| MetricsError::Json {
            path: path.to_path_buf(),
            what: "timing record",
            source,
        })
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
    fn debiased_ema_matches_a_hand_computation() {
        // weight 0.5: ema 0.5, 1.75, 2.375; debias 0.5, 0.75, 0.875.
        let s = debiased_ema(&[1.0, 3.0, 3.0], 0.5);
        let want = [1.0, 1.75 / 0.75, 2.375 / 0.875];
        for (a, b) in s.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{s:?}");
        }
        // A constant series stays constant from the first point (no lag, no pull to 0).
        assert!(
            debiased_ema(&[2.0; 5], 0.9)
                .iter()
                .all(|v| (v - 2.0).abs() < 1e-12)
        );
        // Non-finite values are skipped.
        assert_eq!(
            debiased_ema(&[1.0, f64::NAN, 1.0], 0.6),
            vec![1.0, 1.0, 1.0]
        );
        // Weight 0 is the raw series.
        assert_eq!(debiased_ema(&[3.0, 1.0], 0.0), vec![3.0, 1.0]);
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
