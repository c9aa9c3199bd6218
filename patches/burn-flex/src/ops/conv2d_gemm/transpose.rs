//! Out-of-place transposes of the blocks around the convolution's products (planes to
//! pixel-major and back, dWᵀ to dW).
//!
//! Element by element, a transpose of a `[64, 1024]` block ran at about a nanosecond per
//! value: in 16 x 16 tiles, the 16 rows read (or written) 4 KiB apart fall into the same
//! L1 set. On CPUs with AVX-512, f32 tiles of 16 x 16 are transposed in registers instead:
//! 16 row loads, four rounds of shuffles, 16 row stores.

/// `dst[c · dst_stride + r] = src[r · src_stride + c]` for `r < rows`, `c < cols`.
pub(super) fn transpose<T: Copy + 'static>(
    src: &[T],
    src_stride: usize,
    dst: &mut [T],
    dst_stride: usize,
    [rows, cols]: [usize; 2],
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        (rows - 1) * src_stride + cols <= src.len() && (cols - 1) * dst_stride + rows <= dst.len(),
        "transpose: a {rows} x {cols} block does not fit its buffers"
    );
    let (mut rows_done, mut cols_done) = (0, 0);
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if core::any::TypeId::of::<T>() == core::any::TypeId::of::<f32>()
        && std::arch::is_x86_feature_detected!("avx512f")
    {
        (rows_done, cols_done) = (rows / 16 * 16, cols / 16 * 16);
        // SAFETY: T is f32 (checked above); the assert bounds every tile inside the buffers;
        // the CPU has AVX-512F.
        unsafe {
            avx512::tiles(
                src.as_ptr().cast::<f32>(),
                src_stride,
                dst.as_mut_ptr().cast::<f32>(),
                dst_stride,
                [rows_done, cols_done],
            )
        };
    }
    // What the tiles left: the columns past the last whole tile for every row, and the rows
    // past the last whole tile for the tiled columns.
    scalar(
        src,
        src_stride,
        dst,
        dst_stride,
        [0, rows],
        [cols_done, cols],
    );
    scalar(
        src,
        src_stride,
        dst,
        dst_stride,
        [rows_done, rows],
        [0, cols_done],
    );
}

/// The transpose of rows `r0..r1` and columns `c0..c1`, in 8 x 8 tiles.
fn scalar<T: Copy>(
    src: &[T],
    src_stride: usize,
    dst: &mut [T],
    dst_stride: usize,
    [r0, r1]: [usize; 2],
    [c0, c1]: [usize; 2],
) {
    const TILE: usize = 8;
    for rt in (r0..r1).step_by(TILE) {
        for ct in (c0..c1).step_by(TILE) {
            for c in ct..(ct + TILE).min(c1) {
                let out = &mut dst[c * dst_stride..];
                for r in rt..(rt + TILE).min(r1) {
                    out[r] = src[r * src_stride + c];
                }
            }
        }
    }
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod avx512 {
    use core::arch::x86_64::*;

    /// Transposes the `rows x cols` block (both multiples of 16) tile by tile.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `src` holds `(rows − 1) · src_stride + cols` values and `dst`
    /// `(cols − 1) · dst_stride + rows`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tiles(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
        [rows, cols]: [usize; 2],
    ) {
        for r in (0..rows).step_by(16) {
            for c in (0..cols).step_by(16) {
                // SAFETY: tile (r, c) lies inside the block the caller vouched for.
                unsafe {
                    tile(
                        src.add(r * src_stride + c),
                        src_stride,
                        dst.add(c * dst_stride + r),
                        dst_stride,
                    )
                };
            }
        }
    }

    /// One 16 x 16 tile: `dst[c · dst_stride + r] = src[r · src_stride + c]`.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
        // SAFETY (the loads and stores): 16 rows of 16 values at each side, per the caller.
        let r: [__m512; 16] =
            core::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.add(i * src_stride)) });
        // Within each 128-bit lane l (columns 4l..4l+4): pairs of rows interleaved by value
        // (t[2i] holds columns 4l, 4l+1 of rows 2i, 2i+1; t[2i+1] columns 4l+2, 4l+3) ...
        let t: [__m512; 16] = core::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // ... then by pairs of values: u[4i + k]'s lane l is column 4l + k of rows 4i..4i+4.
        let u: [__m512; 16] = core::array::from_fn(|i| {
            let (base, k) = (i & !3, i % 4);
            let a = _mm512_castps_pd(t[base + k / 2]);
            let b = _mm512_castps_pd(t[base + 2 + k / 2]);
            _mm512_castpd_ps(if k % 2 == 0 {
                _mm512_unpacklo_pd(a, b)
            } else {
                _mm512_unpackhi_pd(a, b)
            })
        });
        // Column 4l + k is lane l of u[k], u[4 + k], u[8 + k], u[12 + k], in that order.
        for k in 0..4 {
            let (a, b, c, d) = (u[k], u[4 + k], u[8 + k], u[12 + k]);
            let ab_lo = _mm512_shuffle_f32x4::<0x44>(a, b); // a0 a1 b0 b1
            let ab_hi = _mm512_shuffle_f32x4::<0xEE>(a, b); // a2 a3 b2 b3
            let cd_lo = _mm512_shuffle_f32x4::<0x44>(c, d);
            let cd_hi = _mm512_shuffle_f32x4::<0xEE>(c, d);
            let columns = [
                _mm512_shuffle_f32x4::<0x88>(ab_lo, cd_lo), // a0 b0 c0 d0
                _mm512_shuffle_f32x4::<0xDD>(ab_lo, cd_lo), // a1 b1 c1 d1
                _mm512_shuffle_f32x4::<0x88>(ab_hi, cd_hi),
                _mm512_shuffle_f32x4::<0xDD>(ab_hi, cd_hi),
            ];
            for (l, column) in columns.into_iter().enumerate() {
                // SAFETY: row 4l + k of the tile's destination, per the caller.
                unsafe { _mm512_storeu_ps(dst.add((4 * l + k) * dst_stride), column) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::transpose;
    use alloc::vec::Vec;

    #[test]
    fn transposes_equal_the_definition_for_any_shape_and_strides() {
        for (rows, cols) in [
            (1, 1),
            (16, 16),
            (17, 33),
            (64, 32),
            (3, 40),
            (48, 5),
            (0, 7),
        ] {
            for pad in [0, 3] {
                let (src_stride, dst_stride) = (cols + pad, rows + 2 * pad);
                let src: Vec<f32> = (0..rows * src_stride).map(|i| i as f32).collect();
                let mut dst = alloc::vec![-1.0f32; cols * dst_stride];
                transpose(&src, src_stride, &mut dst, dst_stride, [rows, cols]);
                for c in 0..cols {
                    for r in 0..dst_stride {
                        let want = if r < rows {
                            src[r * src_stride + c]
                        } else {
                            -1.0
                        };
                        assert_eq!(dst[c * dst_stride + r], want, "{rows}x{cols}, ({r}, {c})");
                    }
                }
                // f64 takes the element loop.
                let src64: Vec<f64> = src.iter().map(|&v| v as f64).collect();
                let mut dst64 = alloc::vec![0.0f64; cols * dst_stride];
                transpose(&src64, src_stride, &mut dst64, dst_stride, [rows, cols]);
                for c in 0..cols {
                    for r in 0..rows {
                        assert_eq!(dst64[c * dst_stride + r], src64[r * src_stride + c]);
                    }
                }
            }
        }
    }
}
