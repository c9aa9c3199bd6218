//! Reader throughput: samples/s and MB/s of [`ShardReader::read_into`] over the test shards
//! (read from the page cache), plus the same shards written by us as `.tar.zst`/`.tar.gz`,
//! against a plain Python `tarfile` loop over the same files as the peer.
//!
//! Run: `cargo bench -p tessera-shards --bench reader` (optional args: `--runs N`,
//! `--no-python`). Each number is the median of `--runs` (default 5) timed passes, each
//! pass reading the shard as many times as fit in ~0.25 s. MB/s counts the shard file's
//! bytes (compressed size for compressed shards) and, separately, the tar stream bytes.
//!
//! A `harness = false` bench rather than criterion: no extra dependencies to build on the
//! shared machines, and the peer comparison needs one process running both anyway.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tessera_shards::Sample;
use tessera_shards::compression::Compression;
use tessera_shards::reader::ShardReader;
use tessera_shards::writer::ShardFileWriter;

struct Measured {
    samples: u64,
    tar_bytes: u64,
    secs_per_pass: f64,
}

/// Read the whole shard once; returns (samples, tar bytes).
fn read_once(path: &Path, sample: &mut Sample) -> (u64, u64) {
    let mut reader = ShardReader::open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut n = 0;
    loop {
        match reader.read_into(sample) {
            Ok(true) => n += 1,
            Ok(false) => break,
            // A damaged shard counts what it yields, like a pipeline would.
            Err(_) => break,
        }
    }
    (n, reader.tar_offset())
}

fn measure(path: &Path, runs: usize) -> Measured {
    let mut sample = Sample::default();
    let (samples, tar_bytes) = read_once(path, &mut sample); // warm the page cache
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut passes = 0u32;
        while passes == 0 || start.elapsed() < Duration::from_millis(250) {
            read_once(path, &mut sample);
            passes += 1;
        }
        times.push(start.elapsed().as_secs_f64() / passes as f64);
    }
    Measured {
        samples,
        tar_bytes,
        secs_per_pass: median(&mut times),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

const PYTHON_PEER: &str = r#"
import sys, tarfile, time
path, runs = sys.argv[1], int(sys.argv[2])
def once():
    n = 0
    with tarfile.open(path, "r|*") as t:
        for m in t:
            if m.isreg():
                t.extractfile(m).read()
                n += 1
    return n
once()
times = []
for _ in range(runs):
    start = time.perf_counter(); passes = 0
    while passes == 0 or time.perf_counter() - start < 0.25:
        once(); passes += 1
    times.append((time.perf_counter() - start) / passes)
times.sort()
print(times[len(times) // 2])
"#;

/// Seconds per pass of Python's `tarfile` (streaming mode, reading every member).
fn python_peer(path: &Path, runs: usize) -> Option<f64> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_PEER)
        .arg(path)
        .arg(runs.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let with_python = !args.iter().any(|a| a == "--no-python");
    let testdata = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata");
    let mut shards: Vec<PathBuf> = [
        "hostile/shards/hostile-files.tar",
        "reference-shards/ref-000000.tar",
        "wds-reference/testgz.tar",
        "wds-reference/tendata.tar",
        "wds-reference/sample.tgz",
    ]
    .iter()
    .map(|p| testdata.join(p))
    .filter(|p| p.exists())
    .collect();

    // The big shard re-written by our writer, zstd (frame per sample) and gzip.
    let tmp = std::env::temp_dir().join(format!("tessera-reader-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    if let Some(src) = shards.first().cloned() {
        for c in [Compression::ZSTD, Compression::GZIP] {
            let dst = tmp.join(format!("hostile-files{}", c.extension()));
            let mut w = ShardFileWriter::create(&dst, c).expect("create");
            let mut r = ShardReader::open(&src).expect("open");
            let mut s = Sample::default();
            while r.read_into(&mut s).expect("read") {
                let fields: Vec<(&str, &[u8])> = s
                    .fields()
                    .iter()
                    .map(|f| (f.name.as_str(), f.data.as_slice()))
                    .collect();
                w.write_sample(&s.key, &fields).expect("write");
            }
            w.finish().expect("finish");
            shards.push(dst);
        }
    }

    println!(
        "reader throughput, median of {runs} runs (page cache); peer = python3 tarfile 'r|*' loop"
    );
    println!(
        "{:<28} {:>8} {:>10} {:>11} {:>11} {:>12} {:>9}",
        "shard", "samples", "file MB", "samples/s", "file MB/s", "tar MB/s", "vs py"
    );
    for path in &shards {
        let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let m = measure(path, runs);
        let mbps = |bytes: u64, secs: f64| bytes as f64 / 1e6 / secs;
        let peer = if with_python {
            python_peer(path, runs)
        } else {
            None
        };
        let ratio = peer.map_or("-".to_string(), |p| format!("{:.1}x", p / m.secs_per_pass));
        println!(
            "{:<28} {:>8} {:>10.1} {:>11.0} {:>11.0} {:>12.0} {:>9}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            m.samples,
            file_bytes as f64 / 1e6,
            m.samples as f64 / m.secs_per_pass,
            mbps(file_bytes, m.secs_per_pass),
            mbps(m.tar_bytes, m.secs_per_pass),
            ratio,
        );
        if let Some(p) = peer {
            println!(
                "{:<28} {:>8} {:>10} {:>11} {:>11.0} {:>12}",
                "  python tarfile",
                "",
                "",
                "",
                mbps(file_bytes, p),
                ""
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
