//! Flat memory with a slow consumer (issue #3): every queue is bounded, so while the
//! consumer sleeps the loader fills its queues and pools and then waits; nothing grows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_pipeline::Recipe;
use tessera_pipeline::loader::{Loader, LoaderOptions};

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata")
        .join(rel)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn slow_consumer_keeps_queues_and_memory_bounded() {
    let recipe = Recipe::parse(
        r#"
[data]
batch_size = 8
shuffle_buffer = 32

[[views]]
name = "image"
size = 64
"#,
        "memory-test",
    )
    .unwrap();
    let shards = vec![
        testdata("reference-shards/ref-000000.tar"),
        testdata("reference-shards/ref-000001.tar"),
    ];
    let mut options = LoaderOptions::new(shards, recipe);
    options.graph.workers = 2;
    options.graph.epochs = None; // endless: the producer could run arbitrarily far ahead
    options.graph.prefetch_batches = 2;
    let mut loader = Loader::start(options).unwrap();
    // Let the pipeline fill up while nobody consumes.
    drop(loader.next_batch().unwrap().unwrap());
    std::thread::sleep(Duration::from_millis(800));
    let before = rss_bytes();
    let filled = loader.stats();
    for _ in 0..20 {
        drop(loader.next_batch().unwrap().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = rss_bytes();
    let stats = loader.stats();
    for q in &stats.queues {
        assert!(
            q.max_depth <= q.capacity,
            "queue {} grew to {} > {}",
            q.name,
            q.max_depth,
            q.capacity
        );
    }
    let batches = stats.queues.iter().find(|q| q.name == "batches").unwrap();
    assert!(
        batches.max_depth >= 1,
        "the producer did run ahead: {batches:?}"
    );
    // The producer is stalled, not racing ahead: samples produced stay within the bounds.
    let worker = stats
        .stages
        .iter()
        .find(|s| s.name.starts_with("decode"))
        .unwrap();
    // At most every pooled batch buffer (prefetch + 3) full of finished samples.
    let in_flight = worker.items - stats.samples;
    assert!(
        in_flight <= 8 * 6,
        "{in_flight} samples made but not consumed"
    );
    assert!(filled.samples <= 8 * 2, "nothing consumed while sleeping");
    // 21 batches of 8 went through; memory must not follow the stream.
    let growth = after.saturating_sub(before);
    assert!(
        growth < 16 << 20,
        "RSS grew by {growth} bytes with a slow consumer"
    );
}
