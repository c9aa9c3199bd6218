//! Reading allocates nothing in steady state: after one pass has grown the caller's
//! `Sample` buffers, a second reader, once warm, fills the same `Sample` without a single
//! allocation (counted by a per-thread counting allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use tessera_shards::Sample;
use tessera_shards::compression::Compression;
use tessera_shards::reader::ShardReader;

use crate::util::testdata;
use crate::writer::write_shards;

struct CountingAlloc;

thread_local! {
    // Const-initialised and without a destructor: safe to touch from the allocator.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn read_into_does_not_allocate_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let mut shards = vec![
        testdata().join("reference-shards/ref-000000.tar"),
        testdata().join("hostile/shards/hostile-files.tar"),
    ];
    for c in [Compression::ZSTD, Compression::GZIP] {
        let sub = dir.path().join(c.to_string().replace(':', "-"));
        std::fs::create_dir(&sub).unwrap();
        shards.push(write_shards(&sub, c, None, 40).remove(0).path);
    }
    for shard in shards {
        let mut sample = Sample::default();
        // Pass 1 grows the sample's buffers to the largest field at each position.
        let mut reader = ShardReader::open(&shard).unwrap();
        while reader.read_into(&mut sample).unwrap() {}
        // Pass 2: a fresh reader; once it has warmed up (its own scratch buffers and, for
        // zstd, the decoder's window grow to the largest member and frame seen), reading
        // the rest of the shard must not allocate at all.
        let total = {
            let mut r = ShardReader::open(&shard).unwrap();
            let mut n = 0u64;
            while r.read_into(&mut sample).unwrap() {
                n += 1;
            }
            n
        };
        let mut reader = ShardReader::open(&shard).unwrap();
        for _ in 0..total / 2 {
            assert!(reader.read_into(&mut sample).unwrap());
        }
        let before = allocations();
        let mut n = 0;
        while reader.read_into(&mut sample).unwrap() {
            n += 1;
        }
        let during = allocations() - before;
        assert!(n >= 10, "{}", shard.display());
        assert_eq!(
            during,
            0,
            "{}: {during} allocations over {n} samples",
            shard.display()
        );
    }
}
