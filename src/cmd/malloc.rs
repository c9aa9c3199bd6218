//! glibc allocator settings for CPU training (issue #11).
//!
//! burn-flex allocates a fresh buffer for most op outputs, from a few KiB to tens of MiB, and
//! frees it a few ops later. glibc serves allocations above its mmap threshold (128 KiB at
//! start) with `mmap` and hands them back with `munmap`, so those buffers are new pages every
//! time: a page fault and a kernel zeroing per 4 KiB. On the demo MAE step that was a quarter
//! of the process's CPU time (system time 1.4-1.7 s of 5.1 s, against 0.1 s with the settings
//! below; `docs/PERFORMANCE.md`). Raising the threshold to glibc's maximum (32 MiB) and
//! trimming the heap only above 1 GiB keeps freed buffers in the heap for the next op. The
//! cost is that the process keeps its peak heap. `MALLOC_MMAP_THRESHOLD_` in the
//! environment (glibc's own tunable) leaves everything as glibc set it.

/// Keep freed buffers up to 32 MiB in the heap for reuse (glibc on Linux; elsewhere nothing).
pub fn keep_freed_buffers() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it takes glibc's arena lock.
        let ok = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
        };
        if !ok {
            tracing::debug!("mallopt refused a setting; glibc's defaults stay");
        }
    }
}
