//! The weight gradient of a convolution: `dWᵀ = col · dyᵀ` over the chunks of images,
//! in order, then transposed to dW's layout.

use alloc::vec;
use alloc::vec::Vec;

use super::columns::{Geometry, gather_output, im2col};
use super::transpose::transpose;
use super::{ConvScalar, TASK_CHUNKS, product, unwritten};
use crate::parallel::for_each_chunk_of_work;

/// dW (`[c_out, c_in / groups · kh · kw]`) of the convolution `g` of `x`, given its output
/// gradient `dy`.
pub(super) fn weight_grad<T: ConvScalar>(g: &Geometry, x: &[T], dy: &[T]) -> Vec<T> {
    if g.is_empty() {
        return vec![T::zero(); g.c_out * g.group_rows()];
    }
    let p = g.out_pixels();
    let per = g.images_per_chunk();
    let len = g.c_out * g.group_rows();
    // SAFETY: each chunk's `col` is written by im2col and `dy_t` by gather_output before
    // the products read them.
    let scratch = || unsafe {
        (
            unwritten::<T>(g.col_rows() * per * p),
            unwritten::<T>(per * p * g.c_out),
        )
    };
    let chunks: Vec<(usize, usize)> = g.chunks().collect();
    // dWᵀ per group, [kg, cg] row-major: gemm writes a row-major product at full speed and
    // a column-major one (dW's own layout seen from here) at a sixth of it.
    let dw_t = if chunks.len() >= TASK_CHUNKS {
        // Many chunks: TASK_CHUNKS parts of consecutive chunks, each summed by one task on
        // one thread into a dWᵀ of its own (no fork per chunk, each chunk's column matrix
        // stays in that core's cache), then the parts added in order. The parts depend on
        // the shapes only, so the result does not depend on the threads.
        // SAFETY: each part's first chunk writes all of its dWᵀ (later ones add onto it).
        let mut parts = unsafe { unwritten::<T>(TASK_CHUNKS * len) };
        let part_chunks = |part: usize| {
            &chunks[part * chunks.len() / TASK_CHUNKS..(part + 1) * chunks.len() / TASK_CHUNKS]
        };
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            parts.par_chunks_mut(len).enumerate().for_each_init(
                scratch,
                |(col, dy_t), (part, dst)| {
                    weight_grad_chunks(g, x, dy, part_chunks(part), col, dy_t, dst, false)
                },
            );
        }
        #[cfg(not(feature = "rayon"))]
        {
            let (mut col, mut dy_t) = scratch();
            for (part, dst) in parts.chunks_mut(len).enumerate() {
                weight_grad_chunks(g, x, dy, part_chunks(part), &mut col, &mut dy_t, dst, false);
            }
        }
        // SAFETY: every element is written below.
        let mut sum = unsafe { unwritten::<T>(len) };
        for_each_chunk_of_work(&mut sum, 1, TASK_CHUNKS, |offset, dst| {
            for (i, d) in dst.iter_mut().enumerate() {
                let at = offset + i;
                *d = (1..TASK_CHUNKS).fold(parts[at], |acc, part| acc + parts[part * len + at]);
            }
        });
        sum
    } else {
        // Few chunks: one after another, each split across the threads.
        // SAFETY: as above, for the one dWᵀ.
        let mut dw_t = unsafe { unwritten::<T>(len) };
        let (mut col, mut dy_t) = scratch();
        weight_grad_chunks(g, x, dy, &chunks, &mut col, &mut dy_t, &mut dw_t, true);
        dw_t
    };
    // dW[grp·cg + co, r] = dWᵀ[grp][r, co]
    let (kg, cg) = (g.group_rows(), g.group_out());
    // SAFETY: the transposes write every element of every group's block.
    let mut dw = unsafe { unwritten::<T>(len) };
    for (grp, dst) in dw.chunks_exact_mut(cg * kg).enumerate() {
        transpose(&dw_t[grp * kg * cg..], cg, dst, kg, [kg, cg]);
    }
    dw
}

/// Writes into `dw_t` (dWᵀ per group, `[kg, cg]` row-major) the weight gradient of the
/// `chunks` (at least one), summed in their order, with `col` and `dy_t` as scratch; split
/// across rayon's threads when `threaded`.
#[allow(clippy::too_many_arguments)]
fn weight_grad_chunks<T: ConvScalar>(
    g: &Geometry,
    x: &[T],
    dy: &[T],
    chunks: &[(usize, usize)],
    col: &mut [T],
    dy_t: &mut [T],
    dw_t: &mut [T],
    threaded: bool,
) {
    let (kg, cg) = (g.group_rows(), g.group_out());
    for (index, &(first, images)) in chunks.iter().enumerate() {
        let n = images * g.out_pixels();
        let col = &mut col[..g.col_rows() * n];
        im2col(g, x, first, images, col, threaded);
        let dy_t = &mut dy_t[..n * g.c_out];
        gather_output(g, dy, first, images, true, dy_t, threaded);
        for grp in 0..g.groups {
            // dWᵀ[grp] (kg x cg) [+]= col[grp rows] (kg x n) · dyᵀ[:, grp cols] (n x cg);
            // chunks add in order.
            // SAFETY: each block lies inside its buffer (shapes from `g`).
            unsafe {
                product(
                    [kg, cg, n],
                    (dw_t[grp * kg * cg..].as_mut_ptr(), 1, cg as isize),
                    index > 0,
                    (col[grp * kg * n..].as_ptr(), 1, n as isize),
                    (dy_t[grp * cg..].as_ptr(), 1, g.c_out as isize),
                    threaded,
                );
            }
        }
    }
}
