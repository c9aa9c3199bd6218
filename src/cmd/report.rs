//! `tessera report RUN_DIR... [--out report.html]`: one self-contained HTML page about one
//! or more runs, that a person opens in a browser (nothing to serve, nothing fetched: plots
//! are inline SVG and pictures inline PNG, as `data:` URIs).
//!
//! For each run it reads what `tessera train` leaves in the run directory: `config.json`
//! (the resolved recipe), `invocations.jsonl` (each command line and the machine it ran
//! on, written by [`Invocation::record`] at the start of every `tessera train`),
//! `metrics.jsonl` (the curves), `timing.json` (where the last process's time went),
//! `pictures/` (the newest one is shown) and `eval.jsonl` (what `tessera eval` measured on
//! its checkpoints). Several runs share their curves' axes (one colour a run) and get one
//! section each below.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tessera_trainer::metrics::{RunTiming, StepMetrics, read_metrics};
use tessera_trainer::pictures::plot;
use tessera_trainer::train::layout;

/// Where `tessera train` appends one [`Invocation`] per start.
pub const INVOCATIONS: &str = "invocations.jsonl";
/// Where `tessera eval` appends one report per evaluation of a run's checkpoint.
pub const EVALS: &str = "eval.jsonl";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directories (`tessera train --out`); several put their curves on the same axes.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// The page to write. Default: `RUN_DIR/report.html` for one run, `report.html` for
    /// several.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Smoothing of the curves, TensorBoard's slider: 0 = raw, 0.99 = very smooth.
    #[arg(long, default_value_t = 0.9)]
    pub smoothing: f64,
    /// Draw the loss on a logarithmic axis.
    #[arg(long)]
    pub log_loss: bool,
    /// Print one JSON object (the page's path and the runs) to stdout.
    #[arg(long)]
    pub json: bool,
}

/// One start of `tessera train` in a run directory: the command and the machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invocation {
    /// The command line, program name first.
    pub command: Vec<String>,
    /// Start time, seconds since the Unix epoch.
    pub started_unix: u64,
    /// `tessera`'s version.
    pub version: String,
    /// Host name.
    pub host: String,
    /// Operating system and architecture.
    pub os: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// CPU model, where the OS says.
    pub cpu_model: Option<String>,
    /// Memory in GiB, where the OS says.
    pub memory_gib: Option<f64>,
    /// The `--device` trained on.
    pub device: String,
}

impl Invocation {
    /// This process's command line and machine, training on `device`.
    pub fn current(device: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / (1024.0 * 1024.0));
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Invocation {
            command: std::env::args().collect(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            version: env!("CARGO_PKG_VERSION").into(),
            host,
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib,
            device: device.into(),
        }
    }

    /// Append this process's invocation to `run_dir/invocations.jsonl` (created with the
    /// directory if missing).
    pub fn record(run_dir: &Path, device: &str) -> anyhow::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let path = run_dir.join(INVOCATIONS);
        let mut line = serde_json::to_vec(&Invocation::current(device))?;
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&line))
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Everything the page shows about one run.
struct RunData {
    name: String,
    dir: PathBuf,
    config: Option<serde_json::Value>,
    metrics: Vec<StepMetrics>,
    invocations: Vec<Invocation>,
    timing: Option<RunTiming>,
    picture: Option<PathBuf>,
    evals: Vec<serde_json::Value>,
}

impl RunData {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let metrics_path = dir.join(layout::METRICS);
        if !metrics_path.exists() {
            bail!(
                "{} is not a run directory (no {})",
                dir.display(),
                layout::METRICS
            );
        }
        let metrics = read_metrics(&metrics_path)?;
        let config = read_json(&dir.join(layout::CONFIG))?;
        let timing_path = dir.join(layout::TIMING);
        let timing = if timing_path.exists() {
            Some(RunTiming::read(&timing_path)?)
        } else {
            None
        };
        let invocations: Vec<Invocation> = read_lines(&dir.join(INVOCATIONS))?
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}", dir.join(INVOCATIONS).display()))?;
        let evals = read_lines(&dir.join(EVALS))?;
        let picture = newest_png(&dir.join(layout::PICTURES))?;
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
        Ok(RunData {
            name,
            dir: dir.to_path_buf(),
            config,
            metrics,
            invocations,
            timing,
            picture,
            evals,
        })
    }
}

fn read_json(path: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?,
    ))
}

/// The JSON objects of a `.jsonl` file (none when it does not exist).
fn read_lines(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// The picture with the largest name (`step_0000120.png` ...), if any.
fn newest_png(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !dir.exists() {
        return Ok(None);
    }
    let mut newest: Option<PathBuf> = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "png")
            && newest
                .as_ref()
                .is_none_or(|n| path.file_name() > n.file_name())
        {
            newest = Some(path);
        }
    }
    Ok(newest)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| match args.runs.as_slice() {
            [one] => one.join("report.html"),
            _ => PathBuf::from("report.html"),
        });
    let written = write_report(&args.runs, &out, args.smoothing, args.log_loss)?;
    eprintln!("report of {} run(s): {}", args.runs.len(), out.display());
    if args.json {
        let json = serde_json::json!({ "report": out, "runs": args.runs, "bytes": written });
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}

/// Write the page about `runs` at `out`; returns its size in bytes.
pub fn write_report(
    runs: &[PathBuf],
    out: &Path,
    smoothing: f64,
    log_loss: bool,
) -> anyhow::Result<usize> {
    if !(0.0..1.0).contains(&smoothing) {
        bail!("--smoothing must be in [0, 1), not {smoothing}");
    }
    let data = runs
        .iter()
        .map(|d| RunData::load(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let page = render(&data, smoothing, log_loss)?;
    std::fs::write(out, &page).with_context(|| format!("writing {}", out.display()))?;
    Ok(page.len())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;\
color:#222;padding:0 1em}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;\
margin-top:2em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;\
padding:.25em .6em;text-align:left;font-variant-numeric:tabular-nums}th{background:#f4f4f4}\
img{max-width:100%;height:auto}.plots{display:flex;flex-wrap:wrap;gap:1em}\
.plots img{width:540px;border:1px solid #eee}pre{background:#f7f7f7;padding:1em;overflow:auto;\
max-height:30em;font-size:.85em}code{background:#f4f4f4;padding:0 .2em}.note{color:#666}";

fn render(runs: &[RunData], smoothing: f64, log_loss: bool) -> anyhow::Result<String> {
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let title = format!("Tessera report: {}", names.join(", "));
    let mut h = String::new();
    write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    )?;

    // Curves of every run on shared axes.
    let series: Vec<(&str, &[StepMetrics])> = runs
        .iter()
        .map(|r| (r.name.as_str(), r.metrics.as_slice()))
        .collect();
    let mut plots = vec![
        plot::loss_plot(&series, log_loss),
        plot::throughput_plot(&series),
        plot::data_wait_plot(&series),
        plot::lr_plot(&series),
    ];
    if let [one] = runs {
        plots.extend(plot::parts_plot(&one.metrics));
    }
    h.push_str("<h2 id=\"curves\">Curves</h2>\n<div class=\"plots\">\n");
    for mut p in plots {
        if p.smoothing > 0.0 {
            p.smoothing = smoothing;
        }
        let svg = p.svg(720, 440)?;
        writeln!(
            h,
            "<img class=\"plot\" alt=\"{}\" src=\"data:image/svg+xml;base64,{}\">",
            esc(&p.title),
            base64::engine::general_purpose::STANDARD.encode(svg)
        )?;
    }
    h.push_str("</div>\n");
    if smoothing > 0.0 {
        writeln!(
            h,
            "<p class=\"note\">Faint lines are the per-step values; solid lines their \
             exponential moving average (weight {smoothing}) with the start-up bias removed, \
             as TensorBoard smooths.</p>"
        )?;
    }

    for run in runs {
        run_section(&mut h, run)?;
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

fn run_section(h: &mut String, run: &RunData) -> anyhow::Result<()> {
    writeln!(h, "<h2>Run <code>{}</code></h2>", esc(&run.name))?;
    writeln!(
        h,
        "<p>Directory: <code>{}</code></p>",
        esc(&run.dir.display().to_string())
    )?;

    // Summary.
    let last = run.metrics.last();
    let smoothed = {
        let losses: Vec<f64> = run.metrics.iter().map(|m| m.loss).collect();
        tessera_trainer::metrics::debiased_ema(&losses, 0.9)
            .last()
            .copied()
    };
    h.push_str("<h3>Summary</h3><table>\n");
    row(h, "steps logged", &run.metrics.len().to_string())?;
    if let Some(m) = last {
        row(h, "last step", &m.step.to_string())?;
        row(h, "epoch", &m.epoch.to_string())?;
        row(h, "last loss", &format!("{:.5}", m.loss))?;
        row(h, "last lr", &format!("{:.3e}", m.lr))?;
    }
    if let Some(s) = smoothed {
        row(h, "smoothed loss (0.9)", &format!("{s:.5}"))?;
    }
    if let Some(first) = run.metrics.first() {
        row(h, "first loss", &format!("{:.5}", first.loss))?;
    }
    h.push_str("</table>\n");

    // Command and machine.
    if !run.invocations.is_empty() {
        h.push_str(
            "<h3>Command and machine</h3><table><tr><th>started (UTC)</th><th>command</th>\
             <th>machine</th><th>device</th></tr>\n",
        );
        for inv in &run.invocations {
            let machine = format!(
                "{} ({}; {} CPUs{}{}), tessera {}",
                inv.host,
                inv.os,
                inv.cpus,
                inv.cpu_model
                    .as_deref()
                    .map_or(String::new(), |m| format!(", {m}")),
                inv.memory_gib
                    .map_or(String::new(), |g| format!(", {g:.0} GiB")),
                inv.version
            );
            writeln!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                utc(inv.started_unix),
                esc(&inv.command.join(" ")),
                esc(&machine),
                esc(&inv.device)
            )?;
        }
        h.push_str("</table>\n");
    }

    // Where the time went.
    if let Some(t) = &run.timing {
        h.push_str("<h3>Where the time went (last process)</h3><table>\n");
        row(h, "steps", &t.steps.to_string())?;
        row(h, "wall time of the steps", &format!("{:.1} s", t.seconds))?;
        row(
            h,
            "images per second",
            &format!("{:.1}", t.images_per_second),
        )?;
        row(
            h,
            "waiting for data",
            &format!(
                "{:.1} s ({:.1}% of step time)",
                t.data_wait_seconds,
                t.data_wait_fraction * 100.0
            ),
        )?;
        let u = &t.uploader;
        row(
            h,
            "uploader",
            &format!(
                "{} batches: {:.1} s waiting for the pipeline, {:.1} s uploading, {:.1} s \
                 waiting for the step",
                u.batches,
                u.waiting_for_pipeline_seconds,
                u.uploading_seconds,
                u.waiting_for_step_seconds
            ),
        )?;
        h.push_str("</table>\n");
        if t.stages.is_empty() {
            h.push_str("<p class=\"note\">Synthetic batches: no input pipeline.</p>\n");
        } else {
            h.push_str(
                "<table><tr><th>pipeline stage</th><th>threads</th><th>items</th>\
                 <th>busy</th><th>waiting for input</th><th>waiting for room</th></tr>\n",
            );
            for s in &t.stages {
                writeln!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}%</td><td>{:.0}%</td>\
                     <td>{:.0}%</td></tr>",
                    esc(&s.name),
                    s.threads,
                    s.items,
                    s.busy_fraction * 100.0,
                    s.blocked_on_input_fraction * 100.0,
                    s.blocked_on_output_fraction * 100.0
                )?;
            }
            h.push_str("</table>\n");
        }
    }

    // Latest picture.
    if let Some(p) = &run.picture {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        writeln!(
            h,
            "<h3>Latest picture</h3><p><code>{}</code></p>\
             <img class=\"picture\" alt=\"latest picture\" src=\"data:image/png;base64,{}\">",
            esc(&p.display().to_string()),
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )?;
    }

    // Evaluations.
    if !run.evals.is_empty() {
        h.push_str(
            "<h3>Evaluation</h3><table><tr><th>step</th><th>kNN top-1</th><th>kNN top-5</th>\
             <th>linear probe top-1</th><th>train / val images</th></tr>\n",
        );
        for e in &run.evals {
            let pct = |k: &str| {
                e[k].as_f64()
                    .map_or("-".to_string(), |v| format!("{:.2}%", v * 100.0))
            };
            writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td></tr>",
                e["step"],
                pct("knn_top1"),
                pct("knn_top5"),
                pct("linear_probe_top1"),
                e["train_images"],
                e["val_images"]
            )?;
        }
        h.push_str("</table>\n");
    }

    // The resolved recipe.
    if let Some(config) = &run.config {
        writeln!(
            h,
            "<h3>Recipe (resolved, <code>config.json</code>)</h3><pre class=\"recipe\">{}</pre>",
            esc(&serde_json::to_string_pretty(config)?)
        )?;
    }
    Ok(())
}

fn row(h: &mut String, key: &str, value: &str) -> std::fmt::Result {
    writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(key), esc(value))
}

/// `YYYY-MM-DD HH:MM` of a Unix time, UTC (civil-from-days, H. Hinnant's algorithm).
fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// Text as HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_escapes() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13");
        assert_eq!(esc("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }
}
