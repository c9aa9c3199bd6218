//! Watching a run (issue #15): TensorBoard event files, `tessera report`, and `--json`
//! being the only way a summary reaches stdout.
//!
//! The event files are read back twice: by a parser written here from the format's
//! documentation (TFRecord framing with its CRCs checked by a bit-by-bit CRC-32C, protobuf
//! fields walked by hand), and, when the Python oracle environment is there, by
//! TensorBoard's own `EventAccumulator`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;

use crate::train::{metrics, tiny_recipe};
use crate::util::*;

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), one bit at a time.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TensorFlow's masked CRC.
fn masked(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The records of a TFRecord file, every CRC checked.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        assert_eq!(
            masked(len_bytes),
            len_crc,
            "{}@{at}: length CRC",
            path.display()
        );
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let data = &bytes[at + 12..at + 12 + len];
        let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
        assert_eq!(masked(data), crc, "{}@{at}: data CRC", path.display());
        out.push(data.to_vec());
        at += 16 + len;
    }
    out
}

/// A protobuf field's value.
#[derive(Debug, Clone)]
enum F {
    Int(u64),
    F64(f64),
    F32(f32),
    Bytes(Vec<u8>),
}

/// The fields of a protobuf message, `(number, value)`.
fn fields(mut d: &[u8]) -> Vec<(u64, F)> {
    fn varint(d: &mut &[u8]) -> u64 {
        let mut v = 0;
        let mut shift = 0;
        loop {
            let b = d[0];
            *d = &d[1..];
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !d.is_empty() {
        let key = varint(&mut d);
        let value = match key & 7 {
            0 => F::Int(varint(&mut d)),
            1 => {
                let v = f64::from_le_bytes(d[..8].try_into().unwrap());
                d = &d[8..];
                F::F64(v)
            }
            5 => {
                let v = f32::from_le_bytes(d[..4].try_into().unwrap());
                d = &d[4..];
                F::F32(v)
            }
            2 => {
                let n = varint(&mut d) as usize;
                let v = d[..n].to_vec();
                d = &d[n..];
                F::Bytes(v)
            }
            w => panic!("wire type {w}"),
        };
        out.push((key >> 3, value));
    }
    out
}

fn bytes_of(fs: &[(u64, F)], n: u64) -> Vec<&[u8]> {
    fs.iter()
        .filter_map(|(k, v)| match v {
            F::Bytes(b) if *k == n => Some(b.as_slice()),
            _ => None,
        })
        .collect()
}

/// What the event files of a run hold, after TensorBoard's restart rule (a `SessionLog
/// START` at step s drops earlier events at steps >= s).
#[derive(Debug, Default)]
struct Events {
    /// tag -> (step, value) in file order.
    scalars: BTreeMap<String, Vec<(u64, f32)>>,
    /// tag -> (step, width, height, PNG signature ok).
    images: BTreeMap<String, Vec<(u64, u64, u64, bool)>>,
    /// Tags of text (string tensor) values.
    texts: BTreeSet<String>,
    /// Steps of `SessionLog START` events.
    restarts: Vec<u64>,
    files: usize,
}

fn read_events(tb: &Path) -> Events {
    let mut files: Vec<PathBuf> = std::fs::read_dir(tb)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("tfevents")
        })
        .collect();
    files.sort();
    let mut ev = Events {
        files: files.len(),
        ..Events::default()
    };
    for file in &files {
        let recs = records(file);
        let first = fields(&recs[0]);
        assert_eq!(
            bytes_of(&first, 3),
            vec![&b"brain.Event:2"[..]],
            "file_version first"
        );
        for r in &recs[1..] {
            let top = fields(r);
            let step = top
                .iter()
                .find_map(|(k, v)| match v {
                    F::Int(s) if *k == 2 => Some(*s),
                    _ => None,
                })
                .unwrap_or(0);
            assert!(
                top.iter()
                    .any(|(k, v)| *k == 1 && matches!(v, F::F64(t) if *t > 1.6e9)),
                "wall time"
            );
            if !bytes_of(&top, 7).is_empty() {
                ev.restarts.push(step);
                for v in ev.scalars.values_mut() {
                    v.retain(|e| e.0 < step);
                }
            }
            for summary in bytes_of(&top, 5) {
                for value in bytes_of(&fields(summary), 1) {
                    let vf = fields(value);
                    let tag = String::from_utf8(bytes_of(&vf, 1)[0].to_vec()).unwrap();
                    for (k, v) in &vf {
                        match (k, v) {
                            (2, F::F32(x)) => {
                                ev.scalars.entry(tag.clone()).or_default().push((step, *x))
                            }
                            (4, F::Bytes(img)) => {
                                let f = fields(img);
                                let int = |n| {
                                    f.iter()
                                        .find_map(|(k, v)| match v {
                                            F::Int(x) if *k == n => Some(*x),
                                            _ => None,
                                        })
                                        .unwrap()
                                };
                                let png = bytes_of(&f, 4)[0].starts_with(b"\x89PNG");
                                ev.images.entry(tag.clone()).or_default().push((
                                    step,
                                    int(2),
                                    int(1),
                                    png,
                                ));
                            }
                            (8, F::Bytes(_)) => {
                                ev.texts.insert(tag.clone());
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    ev
}

fn run_dir_train(recipe: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "train",
        "--config",
        recipe.to_str().unwrap(),
        "--synthetic",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--json",
    ];
    args.extend(extra);
    stdout_json(&run_ok(&args))
}

fn steps_of(v: &[(u64, f32)]) -> Vec<u64> {
    v.iter().map(|e| e.0).collect()
}

/// A synthetic run stopped after step 7 whose last checkpoint (7) is lost, as when a run is
/// killed: steps 5 and 6 are in its logs but will be recomputed on resume.
#[test]
fn tensorboard_events_hold_every_step_once_across_a_resume() {
    let tmp = tempdir();
    let recipe = tiny_recipe(tmp.path(), 10, "");
    let run = tmp.path().join("run");
    run_dir_train(
        &recipe,
        &run,
        &["--stop-after", "7", "--picture-every", "3"],
    );
    let checkpoints = run.join("checkpoints");
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    steps.sort();
    let last = steps.last().unwrap();
    assert!(last.ends_with("step-00000007"), "{last:?}");
    std::fs::remove_dir_all(last).unwrap();
    let summary = run_dir_train(&recipe, &run, &["--resume", "--picture-every", "3"]);
    assert_eq!(summary["first_step"], 5);
    assert_eq!(summary["steps_done"], 10);

    let ev = read_events(&run.join("tb"));
    assert_eq!(ev.files, 2, "one event file per process");
    assert_eq!(
        ev.restarts,
        vec![5],
        "the resumed process marks its restart"
    );
    let all: Vec<u64> = (0..10).collect();
    for tag in [
        "train/loss",
        "train/lr",
        "train/weight_decay",
        "perf/images_per_second",
        "perf/data_wait_fraction",
    ] {
        let got = ev
            .scalars
            .get(tag)
            .unwrap_or_else(|| panic!("no {tag}: {ev:?}"));
        assert_eq!(steps_of(got), all, "{tag}: every step once");
    }
    // The values are metrics.jsonl's, as f32.
    let logged = metrics(&run);
    for (m, (step, loss)) in logged.iter().zip(&ev.scalars["train/loss"]) {
        assert_eq!(m["step"].as_u64().unwrap(), *step);
        assert_eq!(m["loss"].as_f64().unwrap() as f32, *loss);
    }
    // Pictures every 3 steps and at each process's last step; the lost process's 5 and 6
    // are gone with its other events.
    let pictures = &ev.images["pictures/mae"];
    let picture_steps: Vec<u64> = pictures.iter().map(|p| p.0).collect();
    assert_eq!(picture_steps, vec![2, 5, 8, 9]);
    assert!(
        pictures.iter().all(|p| p.3 && p.1 > 100 && p.2 > 100),
        "{pictures:?}"
    );
    assert!(ev.texts.contains("recipe"), "{:?}", ev.texts);

    // TensorBoard itself reads the same.
    let Some(python) = python() else { return };
    let oracle = Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/tb_events.py"))
        .arg(run.join("tb"))
        .output()
        .unwrap();
    assert!(
        oracle.status.success(),
        "{}",
        String::from_utf8_lossy(&oracle.stderr)
    );
    let tb: serde_json::Value = serde_json::from_slice(&oracle.stdout).unwrap();
    for tag in ["train/loss", "train/lr"] {
        let points = tb["scalars"][tag].as_array().unwrap();
        let steps: Vec<u64> = points.iter().map(|p| p[0].as_u64().unwrap()).collect();
        assert_eq!(steps, all, "{tag} as TensorBoard reads it");
        let ours = &ev.scalars[tag];
        for (p, (_, v)) in points.iter().zip(ours) {
            assert_eq!(p[1].as_f64().unwrap() as f32, *v, "{tag}");
        }
    }
    let images = tb["images"]["pictures/mae"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    assert_eq!(
        tb["tensors"]["recipe"].as_array().unwrap().len(),
        1,
        "{}",
        tb["tensors"]
    );
}

/// `tessera report` on a run of real shards (pipeline stages) and, overlaid, a synthetic one.
#[test]
fn report_is_one_page_with_inline_plots_recipe_and_timing() {
    let tmp = tempdir();
    let shards =
        crate::util::cifar_shards(tmp.path(), "train", "train/*/00[0-1]?.jpg", "folders", 100);
    let recipe = tiny_recipe(tmp.path(), 6, "");
    let text = std::fs::read_to_string(&recipe).unwrap().replace(
        "checkpoint_every = 5",
        "checkpoint_every = 5\nlog_every = 2",
    );
    std::fs::write(&recipe, text).unwrap();
    let a = tmp.path().join("cifar-run");
    let args = [
        "train",
        "--config",
        recipe.to_str().unwrap(),
        "--shards",
        &shards,
        "--out",
        a.to_str().unwrap(),
        "--workers",
        "2",
        "--quiet",
    ];
    let out = run_ok(&args);
    assert!(out.stdout.is_empty(), "no --json: nothing on stdout");
    let b = tmp.path().join("synthetic-run");
    run_dir_train(&recipe, &b, &[]);

    // Pipeline stage shares reach TensorBoard.
    let ev = read_events(&a.join("tb"));
    let busy: Vec<&String> = ev
        .scalars
        .keys()
        .filter(|t| t.starts_with("pipeline/busy/"))
        .collect();
    assert!(
        busy.iter()
            .any(|t| t.as_str() == "pipeline/busy/decode_views"),
        "{busy:?}"
    );

    // One run: the page lands in the run directory.
    let report = stdout_json(&run_ok(&["report", a.to_str().unwrap(), "--json"]));
    let page_path = PathBuf::from(report["report"].as_str().unwrap());
    assert_eq!(page_path, a.join("report.html"));
    let page = std::fs::read_to_string(&page_path).unwrap();
    assert!(page.starts_with("<!doctype html>"));
    let svgs = decoded(&page, "data:image/svg+xml;base64,");
    assert!(svgs.len() >= 4, "loss, throughput, data wait, lr");
    let titles = [
        "Training loss",
        "Throughput",
        "Waiting for data",
        "Learning rate",
    ];
    for title in titles {
        assert!(
            svgs.iter().any(|s| s.contains(title)),
            "no plot titled {title}"
        );
    }
    let pngs = decoded(&page, "data:image/png;base64,");
    assert_eq!(pngs.len(), 1, "the latest picture");
    assert!(pngs[0].starts_with("\u{fffd}PNG"), "a PNG");
    for text in [
        "recipe.toml",
        "Recipe",
        "Command and machine",
        "--workers 2",
        "decode + views",
        "Where the time went",
    ] {
        assert!(page.contains(text), "page lacks {text}");
    }
    assert!(!page.contains("src=\"http"), "nothing fetched");

    // Two runs: one page, curves of both on the same axes.
    let both = tmp.path().join("both.html");
    run_ok(&[
        "report",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        both.to_str().unwrap(),
        "--log-loss",
    ]);
    let page = std::fs::read_to_string(&both).unwrap();
    let svgs = decoded(&page, "data:image/svg+xml;base64,");
    let loss = svgs.iter().find(|s| s.contains("Training loss")).unwrap();
    assert!(loss.contains("cifar-run") && loss.contains("synthetic-run"));
    assert!(loss.contains("log scale"));
    assert_eq!(page.matches("<h2>Run ").count(), 2);

    chromium_check(&page_path);
}

/// The page in headless Chromium (Debian's `chromium`), when installed: it renders, with no
/// console errors, to a screenshot with the plots in it.
fn chromium_check(page: &Path) {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        eprintln!("note: no chromium; the report page is not rendered");
        return;
    };
    let shot = page.with_extension("png");
    let out = output_with_watchdog(Command::new(chromium).args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1200,2400",
        &format!("--screenshot={}", shot.display()),
        &format!("file://{}", page.display()),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr
            .lines()
            .any(|l| l.contains("CONSOLE") && l.contains("rror")),
        "console errors: {stderr}"
    );
    let img = std::fs::read(&shot).unwrap();
    assert!(
        img.len() > 20_000,
        "a rendered screenshot, {} bytes",
        img.len()
    );
}

/// The decoded `data:` payloads with this prefix, as (lossy) text.
fn decoded(page: &str, prefix: &str) -> Vec<String> {
    page.split(prefix)
        .skip(1)
        .map(|rest| {
            let b64 = &rest[..rest.find('"').unwrap()];
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect()
}

#[test]
fn demo_prints_json_only_when_asked() {
    let tmp = tempdir();
    let out = tmp.path().join("demo");
    let args = [
        "demo",
        "--quick",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
        "--workers",
        "2",
    ];
    let plain = run_ok(&args);
    assert!(
        plain.stdout.is_empty(),
        "stdout without --json: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(stderr.contains("report:"), "{stderr}");
    assert!(out.join("run/report.html").exists());
    assert!(out.join("run/tb").is_dir());
}
