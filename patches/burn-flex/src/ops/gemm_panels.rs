//! Large products on rayon's threads, one panel of the output per thread.
//!
//! gemm's own threading (`Parallelism::Rayon`) forks its threads twice per block of the
//! reduction dimension (once to pack the right-hand side, once for the micro-kernels), each
//! thread packing again the blocks of the left-hand side it needs. On two cores its
//! products ran at 1.56 times their one-thread speed where PyTorch's reach 1.98
//! (`examples/linear_bench.rs`, the linear layers of a small ViT). Here the output is cut
//! into one panel per thread, along its longer side, and each panel is one single-threaded
//! gemm call: one fork per product, packing that each thread does for itself and no
//! barrier between reduction blocks.
//!
//! Each output element is still computed by a single gemm micro-kernel summing the same
//! terms in the same order, so the split changes which thread computes it, not its value:
//! gemm's reduction blocks depend on `k` and the cache sizes, except for small outputs,
//! which it sums another way (one block of up to 512, or dot products when at most 256
//! elements), and a panel is never cut small enough to take another way than the whole
//! output ([`panel_count`]). Results are bitwise the same on any number of threads.

/// A matrix operand for gemm: its first element and its column and row strides.
pub(crate) type Matrix<P> = (P, isize, isize);

use super::matmul::GemmScalar;

/// Panels start at multiples of this many rows or columns: a whole number of gemm's
/// 16-lane (AVX-512 f32) vectors, so only the last panel has a narrower edge.
const PANEL_ALIGN: usize = 16;

/// `dst (m x n) = [dst +] lhs (m x k) · rhs (k x n)` (`dst` is read, and the product added
/// onto it, only when `accumulate`), on rayon's threads when `threaded` (the caller judges
/// whether the product is large enough to pay for a fork); see the module's doc.
///
/// # Safety
///
/// The pointers and strides must address `m x k`, `k x n` and `m x n` elements, and `dst`
/// must be valid for writes and not overlap the operands (gemm's own contract).
pub(crate) unsafe fn gemm<T: GemmScalar>(
    [m, n, k]: [usize; 3],
    dst: Matrix<*mut T>,
    accumulate: bool,
    lhs: Matrix<*const T>,
    rhs: Matrix<*const T>,
    threaded: bool,
) {
    let one_call = |[m, n]: [usize; 2], [row, col]: [usize; 2]| {
        let (row, col) = (row as isize, col as isize);
        // SAFETY: rows `row..row + m` and columns `col..col + n` of the caller's output
        // (and the matching rows of `lhs`, columns of `rhs`) are inside the matrices the
        // caller vouched for.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.0.wrapping_offset(row * dst.2 + col * dst.1),
                dst.1,
                dst.2,
                accumulate,
                lhs.0.wrapping_offset(row * lhs.2),
                lhs.1,
                lhs.2,
                rhs.0.wrapping_offset(col * rhs.1),
                rhs.1,
                rhs.2,
                T::one(),
                T::one(),
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    };
    let panels = if threaded {
        #[cfg(feature = "rayon")]
        let threads = rayon::current_num_threads();
        #[cfg(not(feature = "rayon"))]
        let threads = 1;
        panel_count(m.max(n), m.min(n), threads)
    } else {
        1
    };
    if panels <= 1 {
        return one_call([m, n], [0, 0]);
    }
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        let by_rows = m >= n;
        let long = if by_rows { m } else { n };
        let one_call = SendSync(one_call);
        (0..panels).into_par_iter().for_each(|p| {
            let (start, end) = (
                panel_start(long, panels, p),
                panel_start(long, panels, p + 1),
            );
            if by_rows {
                one_call.get()([end - start, n], [start, 0]);
            } else {
                one_call.get()([m, end - start], [0, start]);
            }
        });
    }
}

/// How many panels to cut an output of `long` by `short` elements into, along `long`: one
/// per thread, fewer when the side has fewer than [`PANEL_ALIGN`] elements per thread or
/// when a panel would be small enough for gemm to sum it another way than the whole
/// output ([`Summation`]), which would change the result's rounding.
fn panel_count(long: usize, short: usize, threads: usize) -> usize {
    let whole = Summation::of(long, short);
    (2..=threads.min(long / PANEL_ALIGN))
        .rev()
        .find(|&panels| {
            (0..panels).all(|p| {
                let width = panel_start(long, panels, p + 1) - panel_start(long, panels, p);
                Summation::of(width, short) == whole
            })
        })
        .unwrap_or(1)
}

/// How gemm 0.19 (`gemm-common`'s `gemm_basic_generic`) orders the sums of an `m x n`
/// output: dot products for at most 256 elements, one block of up to 512 terms when both
/// sides are at most 64, else blocks sized from `k` and the caches.
#[derive(PartialEq, Eq, Debug)]
enum Summation {
    Dots,
    SmallBlocks,
    Blocks,
}

impl Summation {
    fn of(m: usize, n: usize) -> Self {
        if m * n <= 16 * 16 {
            Summation::Dots
        } else if m <= 64 && n <= 64 {
            Summation::SmallBlocks
        } else {
            Summation::Blocks
        }
    }
}

/// Where panel `p` of `panels` starts on a side of `long` elements: evenly spread, at a
/// multiple of [`PANEL_ALIGN`] except the end of the last one.
fn panel_start(long: usize, panels: usize, p: usize) -> usize {
    if p >= panels {
        return long;
    }
    let even = long * p / panels;
    (even / PANEL_ALIGN * PANEL_ALIGN).min(long)
}

/// The closure's captured raw pointers are shared by the panels, each of which writes its
/// own rows or columns of the output only.
struct SendSync<F>(F);
impl<F> SendSync<F> {
    /// Through a method, so that a closure captures the wrapper, not its field.
    fn get(&self) -> &F {
        &self.0
    }
}
// SAFETY: the closure only reads the operands and writes the output's panel it is given;
// panels are disjoint.
unsafe impl<F> Send for SendSync<F> {}
// SAFETY: as above.
unsafe impl<F> Sync for SendSync<F> {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn no_panel_is_summed_another_way_than_the_whole_output() {
        // A 288 x 48 output (a weight gradient) on four threads: panels of 64 or 80 would
        // be gemm's small case where the whole is not, so it takes three of 96.
        assert_eq!(panel_count(288, 48, 4), 3);
        assert_eq!(panel_count(288, 100, 4), 4);
        assert_eq!(panel_count(1088, 768, 2), 2);
        assert_eq!(panel_count(64, 48, 2), 2); // small as a whole and in panels
        assert_eq!(panel_count(40, 8, 2), 1); // 320 elements; panels of 160 would be dots
        assert_eq!(panel_count(100, 500, 1), 1);
        for long in [16, 63, 64, 65, 130, 288, 1088] {
            for short in [1, 2, 8, 16, 48, 64, 65, 192] {
                for threads in 1..=6 {
                    let panels = panel_count(long, short, threads);
                    for p in 0..panels {
                        let width = panel_start(long, panels, p + 1) - panel_start(long, panels, p);
                        assert_eq!(
                            Summation::of(width, short),
                            Summation::of(long, short),
                            "{long} x {short} on {threads}"
                        );
                    }
                }
            }
        }
    }

    /// Runs `gemm` for `m x k` by `k x n` (`test_values`; the lhs row- or column-major,
    /// the rhs row-major) on a pool of `threads`, onto `start` when given.
    fn product(
        [m, n, k]: [usize; 3],
        threads: usize,
        start: Option<&[f32]>,
        transposed_lhs: bool,
    ) -> Vec<f32> {
        let lhs = crate::ops::test_values(m * k, 1);
        let rhs = crate::ops::test_values(k * n, 2);
        let mut out = start.map_or_else(|| vec![f32::NAN; m * n], <[f32]>::to_vec);
        // The lhs read as its transpose's transpose: column-major, as a weight gradient's.
        let lhs_strides = if transposed_lhs {
            (m as isize, 1)
        } else {
            (1, k as isize)
        };
        let run = || unsafe {
            gemm(
                [m, n, k],
                (out.as_mut_ptr(), 1, n as isize),
                start.is_some(),
                (lhs.as_ptr(), lhs_strides.0, lhs_strides.1),
                (rhs.as_ptr(), 1, n as isize),
                true,
            )
        };
        #[cfg(feature = "rayon")]
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(run);
        #[cfg(not(feature = "rayon"))]
        {
            let _ = threads;
            run();
        }
        out
    }

    #[test]
    fn products_are_the_definition_and_bitwise_the_same_on_any_threads() {
        for (shape, transposed) in [
            ([300, 70, 200], false),
            ([50, 500, 64], false),
            ([192, 768, 1088], true),
            ([288, 48, 2400], true),
            ([40, 8, 700], false),
        ] {
            let [m, n, k] = shape;
            let lhs = crate::ops::test_values(m * k, 1);
            let rhs = crate::ops::test_values(k * n, 2);
            let start = crate::ops::test_values(m * n, 3);
            for accumulate in [false, true] {
                let start = accumulate.then_some(&start[..]);
                let one = product(shape, 1, start, transposed);
                for (i, &got) in one.iter().enumerate() {
                    let (r, c) = (i / n, i % n);
                    let a = |j: usize| {
                        if transposed {
                            lhs[j * m + r]
                        } else {
                            lhs[r * k + j]
                        }
                    };
                    let want: f64 = (0..k)
                        .map(|j| a(j) as f64 * rhs[j * n + c] as f64)
                        .sum::<f64>()
                        + start.map_or(0.0, |s| s[i] as f64);
                    let tol = 1e-6 * k as f64 * (1.0 + want.abs());
                    assert!(
                        (got as f64 - want).abs() <= tol,
                        "{shape:?} [{r}, {c}]: {got} vs {want}"
                    );
                }
                for threads in [2, 3, 4] {
                    let many = product(shape, threads, start, transposed);
                    assert!(
                        one.iter()
                            .zip(&many)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{shape:?}, accumulate {accumulate}: one thread and {threads} differ"
                    );
                }
            }
        }
    }

    #[test]
    fn panels_cover_the_side_once_at_aligned_starts() {
        for long in [16, 17, 100, 192, 576, 1088, 4160] {
            for panels in 1..=5 {
                let starts: Vec<usize> =
                    (0..=panels).map(|p| panel_start(long, panels, p)).collect();
                assert_eq!(starts[0], 0);
                assert_eq!(starts[panels], long);
                for w in starts.windows(2) {
                    assert!(w[0] <= w[1], "{long} {panels}: {starts:?}");
                    assert_eq!(w[0] % PANEL_ALIGN, 0, "{long} {panels}: {starts:?}");
                }
            }
        }
    }
}
