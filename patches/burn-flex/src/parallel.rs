//! Element-wise kernels over large buffers, split across rayon's pool.
//!
//! Matmul, convolution and the reductions run on rayon's threads, but element-wise ops
//! (binary, scalar and unary ops, activations and their backward) ran on the calling
//! thread, so on a training step every other core idled through them. Here a kernel's
//! output is cut into chunks that rayon's threads fill at once, when the output is large
//! enough to pay for the hand-off ([`GRAIN`] elements per chunk at least, PyTorch's grain
//! size for its CPU element-wise loops). Sums of many rows into a short row are cut by
//! their output columns the same way, sized by the elements they read
//! ([`for_each_chunk_of_work`]). Each element is computed by the same code as on one
//! thread, so results are bitwise the same for any number of threads.

use core::mem::MaybeUninit;

/// The fewest elements a chunk holds: below `2 * GRAIN` a kernel runs on the calling
/// thread (a rayon hand-off costs microseconds; 32 Ki f32 additions take about as long).
pub(crate) const GRAIN: usize = 32 * 1024;

/// Runs `kernel(offset, chunk)` over `dst` cut into chunks (each starting at a multiple of
/// `align` elements, so a kernel that walks rows of `align` elements sees whole rows),
/// on rayon's threads when `dst` is large, else once over all of `dst`. `offset` is the
/// index of `chunk[0]` in `dst`.
///
/// Each call runs in code compiled for the CPU's widest vectors ([`crate::widest`]): an
/// `#[inline(always)]` kernel is compiled into it, so its loops use them.
pub(crate) fn for_each_chunk<T, K>(dst: &mut [T], align: usize, kernel: K)
where
    T: Send,
    K: Fn(usize, &mut [T]) + Sync + Send,
{
    for_each_chunk_of_work(dst, align, 1, kernel)
}

/// [`for_each_chunk`] for kernels that read `work` elements per element of `dst` (a sum
/// over `work` rows into one output row): the split is sized by the elements read, not
/// by the output's length.
pub(crate) fn for_each_chunk_of_work<T, K>(dst: &mut [T], align: usize, work: usize, kernel: K)
where
    T: Send,
    K: Fn(usize, &mut [T]) + Sync + Send,
{
    match chunk_len(dst.len(), align, work) {
        #[cfg(feature = "rayon")]
        Some(chunk) => {
            use rayon::prelude::*;
            dst.par_chunks_mut(chunk).enumerate().for_each(|(i, part)| {
                crate::widest::run(
                    #[inline(always)]
                    || kernel(i * chunk, part),
                )
            });
        }
        _ => crate::widest::run(
            #[inline(always)]
            || kernel(0, dst),
        ),
    }
}

/// A new vector of `n` elements, each written by `kernel(offset, chunk)` (see
/// [`for_each_chunk`]), which must write every element of its chunk. No element is read
/// before it is written, and the buffer is not zeroed first.
fn collect_chunks<T, K>(n: usize, kernel: K) -> Vec<T>
where
    T: Send,
    K: Fn(usize, &mut [MaybeUninit<T>]) + Sync + Send,
{
    let mut out: Vec<T> = Vec::with_capacity(n);
    for_each_chunk(&mut out.spare_capacity_mut()[..n], 1, kernel);
    // SAFETY: `for_each_chunk` hands every element of `spare_capacity_mut()[..n]` to
    // `kernel` exactly once, and `kernel` writes each element of its chunk (the contract
    // of this function, kept by every caller: a plain `zip` over the whole chunk).
    unsafe { out.set_len(n) };
    out
}

/// `dst[i] = op(src[i])` for a new `dst`, on rayon's threads when large.
pub(crate) fn map<E, Op>(src: &[E], op: Op) -> Vec<E>
where
    E: Copy + Send + Sync,
    Op: Fn(E) -> E + Sync + Send,
{
    collect_chunks(
        src.len(),
        #[inline(always)]
        |offset, chunk| {
            for (out, &x) in chunk.iter_mut().zip(&src[offset..]) {
                out.write(op(x));
            }
        },
    )
}

/// `dst[i] = op(a[i], b[i])` for a new `dst` of `a.len()` elements, on rayon's threads
/// when large.
pub(crate) fn zip_map<E, Op>(a: &[E], b: &[E], op: Op) -> Vec<E>
where
    E: Copy + Send + Sync,
    Op: Fn(E, E) -> E + Sync + Send,
{
    debug_assert_eq!(a.len(), b.len());
    collect_chunks(
        a.len(),
        #[inline(always)]
        |offset, chunk| {
            for ((out, &x), &y) in chunk.iter_mut().zip(&a[offset..]).zip(&b[offset..]) {
                out.write(op(x, y));
            }
        },
    )
}

/// The chunk length for `n` output elements (`work` elements read for each) in multiples
/// of `align`, or `None` to run on the calling thread: one thread in the pool, too little
/// work, or rows too long to cut.
fn chunk_len(n: usize, align: usize, work: usize) -> Option<usize> {
    #[cfg(feature = "rayon")]
    {
        let threads = rayon::current_num_threads();
        let align = align.max(1);
        let total = n.saturating_mul(work);
        if threads < 2 || total < 2 * GRAIN || n / align < 2 {
            return None;
        }
        // A few chunks per thread evens out threads that start late; none under GRAIN.
        let chunks = (total / GRAIN).clamp(2, 4 * threads).min(n / align);
        let chunk = n.div_ceil(chunks).div_ceil(align) * align;
        (chunk < n).then_some(chunk)
    }
    #[cfg(not(feature = "rayon"))]
    {
        let _ = (n, align, work);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_element_once_at_row_boundaries() {
        for &(n, align) in &[
            (0, 1),
            (5, 1),
            (2 * GRAIN - 1, 1),
            (2 * GRAIN, 1),
            (10 * GRAIN + 7, 1),
            (10 * GRAIN + 7 * 13, 13),
            (3 * GRAIN, 3 * GRAIN),
            (1 << 20, 192),
        ] {
            let mut seen = vec![0u32; n];
            for_each_chunk(&mut seen, align, |offset, chunk| {
                assert_eq!(offset % align, 0, "n {n} align {align}");
                for (i, x) in chunk.iter_mut().enumerate() {
                    *x += 1 + u32::try_from(offset + i).unwrap();
                }
            });
            for (i, &x) in seen.iter().enumerate() {
                assert_eq!(x, 1 + i as u32, "n {n} align {align} element {i}");
            }
        }
    }

    #[test]
    fn map_and_zip_map_equal_the_serial_loop() {
        for n in [0, 1, 3, GRAIN, 2 * GRAIN + 1, 9 * GRAIN + 5] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 11.0).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 17) as f32 + 0.5).collect();
            let serial: Vec<f32> = a.iter().map(|&x| x.mul_add(2.0, 1.0).exp()).collect();
            let mapped = map(&a, |x: f32| x.mul_add(2.0, 1.0).exp());
            assert_eq!(
                mapped.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                serial.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            let serial: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| x / y).collect();
            assert_eq!(zip_map(&a, &b, |x, y| x / y), serial);
        }
    }

    #[cfg(feature = "rayon")]
    #[test]
    fn large_outputs_are_split_when_the_pool_has_threads() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            assert_eq!(chunk_len(2 * GRAIN - 1, 1, 1), None);
            let chunk = chunk_len(10 * GRAIN, 1, 1).expect("split");
            assert!((GRAIN..10 * GRAIN).contains(&chunk));
            let chunk = chunk_len(10 * GRAIN, 1000, 1).expect("split");
            assert_eq!(chunk % 1000, 0);
            // One row longer than half the buffer cannot be cut.
            assert_eq!(chunk_len(10 * GRAIN, 6 * GRAIN, 1), None);
            // A short output that takes many reads (a bias gradient: 192 sums of 1088
            // rows) is split by its columns, in whole groups of 16.
            let chunk = chunk_len(192, 16, 1088).expect("split");
            assert_eq!(chunk % 16, 0);
            assert!(chunk < 192);
            assert_eq!(chunk_len(192, 16, 100), None);
        });
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        one.install(|| assert_eq!(chunk_len(100 * GRAIN, 1, 1), None));
    }
}
