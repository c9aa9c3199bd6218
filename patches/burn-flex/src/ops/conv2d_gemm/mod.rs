//! 2-D convolution and both of its gradients as im2col and one large product per chunk of
//! images (tessera's change 10, `patches/README.md`).
//!
//! burn-flex 0.21 convolves image by image in tiles of 512 output pixels (a product of
//! `[c_out, c_in·k·k] x [c_in·k·k, 512]` per tile, its weight packed again for each), and
//! leaves both gradients to burn-backend's defaults: the input gradient as a transposed
//! convolution, the weight gradient as a convolution of the input with the output gradient
//! (batch and channels swapped), whose "kernel" is the whole output plane, so its products
//! are `[c_out, b·oh·ow] x [b·oh·ow, 9]`: nine columns. On the CIFAR ResNet-18 that was
//! 2.5 s of a SimCLR step at 86 GFLOP/s overall where well-shaped products reach about 200.
//!
//! Here all three are products over a column matrix `col` of `[c_in·kh·kw, images·oh·ow]`
//! (the Caffe layout: row `(c, i, j)` holds input channel `c` seen through kernel tap
//! `(i, j)` for every output pixel of every image in a chunk; built in `columns.rs`):
//! - forward: `y = W · col` per group, written straight into the output for a chunk of one
//!   image, else scattered from `[c_out, images·P]` into NCHW; stride-1 convolutions over
//!   large planes with 16 to 128 output channels instead read the padded image in place,
//!   one product per kernel row (`implicit.rs`, tessera's change 22);
//! - input gradient: for stride 1, the forward convolution of the output gradient with the
//!   weight flipped in space and its channel axes swapped; otherwise `dcol = Wᵀ · dy`,
//!   added back onto the input's pixels (col2im);
//! - weight gradient: `dWᵀ = col · dyᵀ`, accumulated over the chunks in order, then
//!   transposed; with many chunks, in a fixed number of parts summed apart and then added
//!   in order (change 22).
//!
//! Each product's operands and output are laid out as gemm runs fastest (about 200
//! GFLOP/s on two AVX-512 cores, against 35 for a column-major right-hand side or output).
//! Chunks are sized by a memory budget; with many chunks each is one task on one thread
//! (the forward, the col2im input gradient, the weight gradient's parts), with few each
//! chunk is split across the threads. Every choice depends on the shapes only, and gemm
//! splits outputs, not reductions, so results are bitwise the same on any number of
//! threads.

mod columns;
mod implicit;
#[cfg(test)]
mod tests;
mod transpose;
mod weight_grad;

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::ops::ConvOptions;
use burn_std::{Bytes, Shape};
use core::ops::Add;

use super::gemm_panels;
use super::matmul::GemmScalar;
use crate::parallel::{for_each_chunk, for_each_chunk_of_work};
use crate::{FlexTensor, Layout};
use columns::{Geometry, col2im, gather_output, im2col};
use weight_grad::weight_grad;

/// Elements of one chunk's column matrix (4 MiB of f32): big enough that a chunk's
/// products have hundreds of columns even for the last stage of a ResNet (224 at 4 x 4
/// pixels), small enough to stay in the caches (the products slow down by a tenth to a
/// half past 16 MiB on the development machine).
const COL_BUDGET: usize = 1024 * 1024;

/// Convolutions of at least this many chunks run each chunk as one task on one thread
/// (fixed, not the thread count: how a chunk is computed must not depend on the threads).
const TASK_CHUNKS: usize = 8;

/// Products smaller than this (multiply-adds) run on the calling thread.
const PARALLEL_PRODUCT: usize = 128 * 128 * 128;

/// Element types this module convolves (those gemm multiplies natively).
pub(crate) trait ConvScalar:
    GemmScalar + Add<Output = Self> + Send + Sync + 'static
{
}
impl ConvScalar for f32 {}
impl ConvScalar for f64 {}

/// [`for_each_chunk`] when `threaded`, else `kernel(0, dst)` on the calling thread (inside
/// a task that already has its share of the pool).
fn each_chunk<T, K>(threaded: bool, dst: &mut [T], align: usize, kernel: K)
where
    T: Send,
    K: Fn(usize, &mut [T]) + Sync + Send,
{
    if threaded {
        for_each_chunk(dst, align, kernel)
    } else {
        kernel(0, dst)
    }
}

/// A buffer of `len` elements, not zeroed. Every buffer made here is written whole before
/// anything reads it: product outputs (`read_dst = false`), column matrices (im2col writes
/// the padding's zeros itself), gathered gradients and transposes; only col2im's
/// destination, which it adds onto, is still zeroed. Zeroing the others first, as
/// `vec![T::zero(); len]` did, was a memset per buffer: about 3% of a SimCLR ResNet-18 step.
///
/// In this crate's tests the buffer is NaN (all bits set) instead, so that an element read
/// before it is written turns the results the tests compare into NaN.
///
/// # Safety
///
/// The caller writes every element before reading it.
unsafe fn unwritten<T: ConvScalar>(len: usize) -> Vec<T> {
    if cfg!(test) {
        let mut poisoned = vec![T::zero(); len];
        bytemuck::cast_slice_mut::<T, u8>(&mut poisoned).fill(0xFF);
        return poisoned;
    }
    let mut buffer = Vec::with_capacity(len);
    // SAFETY: `T` is plain data (f32 or f64), the capacity is `len`, and the caller writes
    // each element before it is read.
    #[allow(clippy::uninit_vec)]
    unsafe {
        buffer.set_len(len)
    };
    buffer
}

/// `dst (m x n) = [dst +] lhs (m x k) · rhs (k x n)`, each given by its column and row
/// strides, on rayon's threads when `threaded` and large (split by output panels, never
/// along the reduction, so the result does not depend on the threads).
#[allow(clippy::too_many_arguments)]
unsafe fn product<T: ConvScalar>(
    [m, n, k]: [usize; 3],
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
    threaded: bool,
) {
    let threaded = threaded && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_PRODUCT;
    // SAFETY: the caller's pointers and strides address m x k, k x n and m x n elements.
    unsafe {
        gemm_panels::gemm([m, n, k], dst, accumulate, lhs, rhs, threaded);
    }
}

/// The convolution of `x` (`[b, c_in, h, w]`) with `weight` (`[c_out, c_in / groups, kh, kw]`).
pub(crate) fn conv2d<T: ConvScalar>(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let g = Geometry::new(x.layout().shape(), weight.layout().shape(), options);
    let bias = bias.map(|b| b.to_contiguous());
    let out = forward::<T>(
        &g,
        x.storage(),
        weight.storage(),
        bias.as_ref().map(|b| b.storage()),
    );
    tensor(out, g.out_shape())
}

/// The gradient of [`conv2d`] with respect to its input `x` (whose shape it takes).
pub(crate) fn conv2d_x_backward<T: ConvScalar>(
    x_shape: &[usize],
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (weight, dy) = (weight.to_contiguous(), output_grad.to_contiguous());
    let g = Geometry::new(x_shape, weight.layout().shape(), options);
    g.check_output_grad(dy.layout().shape());
    tensor(
        input_grad::<T>(&g, weight.storage(), dy.storage()),
        Shape::from(x_shape.to_vec()),
    )
}

/// The gradient of [`conv2d`] with respect to its weight (whose shape it takes).
pub(crate) fn conv2d_weight_backward<T: ConvScalar>(
    x: FlexTensor,
    w_shape: &[usize],
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (x, dy) = (x.to_contiguous(), output_grad.to_contiguous());
    let g = Geometry::new(x.layout().shape(), w_shape, options);
    g.check_output_grad(dy.layout().shape());
    tensor(
        weight_grad::<T>(&g, x.storage(), dy.storage()),
        Shape::from(w_shape.to_vec()),
    )
}

fn tensor<T: ConvScalar>(data: Vec<T>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(shape),
        T::dtype(),
    )
}

fn forward<T: ConvScalar>(g: &Geometry, x: &[T], w: &[T], bias: Option<&[T]>) -> Vec<T> {
    let len = g.batch * g.c_out * g.out_pixels();
    if g.is_empty() {
        return vec![T::zero(); len];
    }
    let per = g.images_per_chunk();
    let chunk_out = per * g.c_out * g.out_pixels();
    // SAFETY (here and for the scratch): each chunk of `out` is written whole by
    // `forward_chunk` (its product, or the copy out of `y`), `col` by im2col and `y` by the
    // product before they are read.
    let mut out = unsafe { unwritten::<T>(len) };
    let scratch = || {
        let y = if per > 1 { chunk_out } else { 0 };
        unsafe {
            (
                unwritten::<T>(g.col_rows() * per * g.out_pixels()),
                unwritten::<T>(y),
            )
        }
    };
    if g.batch >= TASK_CHUNKS && implicit::applies(g) {
        // Stride 1 over large planes: one image a task, no column matrix (`implicit.rs`).
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            let w_t = implicit::weight(g, w);
            let image_out = g.c_out * g.out_pixels();
            out.par_chunks_mut(image_out).enumerate().for_each_init(
                || implicit::Scratch::new(g),
                |scratch, (image, dst)| {
                    implicit::forward_image(g, x, &w_t, bias, image, scratch, dst)
                },
            );
            return out;
        }
    }
    if g.batch.div_ceil(per) >= TASK_CHUNKS {
        // Many chunks: each a task of its own, from im2col to its output planes, on one
        // thread (no hand-offs inside a chunk, its column matrix stays in that core's cache).
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            out.par_chunks_mut(chunk_out).enumerate().for_each_init(
                scratch,
                |(col, y), (index, dst)| {
                    let first = index * per;
                    forward_chunk(
                        g,
                        x,
                        w,
                        bias,
                        first,
                        dst.len() / (g.c_out * g.out_pixels()),
                        col,
                        y,
                        dst,
                        false,
                    );
                },
            );
            return out;
        }
    }
    // Few chunks (large images, or a small batch): one after another, each split across the
    // threads.
    let (mut col, mut y) = scratch();
    for ((first, images), dst) in g.chunks().zip(out.chunks_mut(chunk_out)) {
        forward_chunk(g, x, w, bias, first, images, &mut col, &mut y, dst, true);
    }
    out
}

/// The output planes `dst` of the `images` images from `first`, with `col` and `y` as
/// scratch; split across rayon's threads when `threaded`.
#[allow(clippy::too_many_arguments)]
fn forward_chunk<T: ConvScalar>(
    g: &Geometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    first: usize,
    images: usize,
    col: &mut [T],
    y: &mut [T],
    dst: &mut [T],
    threaded: bool,
) {
    let p = g.out_pixels();
    let n = images * p;
    let (kg, cg) = (g.group_rows(), g.group_out());
    let col = &mut col[..g.col_rows() * n];
    im2col(g, x, first, images, col, threaded);
    // One image's [c_out, P] product is its output plane: written in place.
    let y_ptr = if images == 1 {
        dst.as_mut_ptr()
    } else {
        y[..g.c_out * n].as_mut_ptr()
    };
    for grp in 0..g.groups {
        // y[grp rows] (cg x n) = W[grp rows] (cg x kg) · col[grp rows] (kg x n)
        // SAFETY: each block lies inside its buffer (shapes from `g`).
        unsafe {
            product(
                [cg, n, kg],
                (y_ptr.add(grp * cg * n), 1, n as isize),
                false,
                (w[grp * cg * kg..].as_ptr(), 1, kg as isize),
                (col[grp * kg * n..].as_ptr(), 1, n as isize),
                threaded,
            );
        }
    }
    if images == 1 {
        if let Some(bias) = bias {
            each_chunk(threaded, dst, p, |offset, planes| {
                for (k, plane) in planes.chunks_exact_mut(p).enumerate() {
                    let b = bias[offset / p + k];
                    plane.iter_mut().for_each(|d| *d = *d + b);
                }
            });
        }
        return;
    }
    let y = &y[..g.c_out * n];
    each_chunk(threaded, dst, p, |offset, planes| {
        for (k, plane) in planes.chunks_exact_mut(p).enumerate() {
            let index = offset / p + k;
            let (b, co) = (index / g.c_out, index % g.c_out);
            let src = &y[co * n + b * p..][..p];
            match bias {
                Some(bias) => plane
                    .iter_mut()
                    .zip(src)
                    .for_each(|(d, &s)| *d = s + bias[co]),
                None => plane.copy_from_slice(src),
            }
        }
    });
}

fn input_grad<T: ConvScalar>(g: &Geometry, w: &[T], dy: &[T]) -> Vec<T> {
    if g.is_empty() || g.in_pixels() == 0 {
        return vec![T::zero(); g.batch * g.c_in * g.in_pixels()];
    }
    if let Some((transposed, w_flipped)) = g.as_transposed_conv(w) {
        return forward(&transposed, dy, &w_flipped, None);
    }
    let p = g.out_pixels();
    let per = g.images_per_chunk();
    let planes = g.c_in * g.in_pixels();
    let mut dx = vec![T::zero(); g.batch * planes];
    // SAFETY: each chunk's `dcol` is written by its products and `dy_chunk` by
    // gather_output before they are read.
    let scratch = || unsafe {
        (
            unwritten::<T>(g.col_rows() * per * p),
            unwritten::<T>(g.c_out * per * p),
        )
    };
    // Each chunk adds onto its own images only, so the chunks are independent.
    if g.batch.div_ceil(per) >= TASK_CHUNKS {
        // Many chunks: each a task of its own on one thread, as the forward's.
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            dx.par_chunks_mut(per * planes).enumerate().for_each_init(
                scratch,
                |(dcol, dy_chunk), (index, dst)| {
                    let images = dst.len() / planes;
                    input_grad_chunk(g, w, dy, index * per, images, dcol, dy_chunk, dst, false);
                },
            );
            return dx;
        }
    }
    let (mut dcol, mut dy_chunk) = scratch();
    for ((first, images), dst) in g.chunks().zip(dx.chunks_mut(per * planes)) {
        input_grad_chunk(g, w, dy, first, images, &mut dcol, &mut dy_chunk, dst, true);
    }
    dx
}

/// Adds onto `dx` (the input planes of the `images` images from `first`) their gradient
/// through `dcol = Wᵀ · dy` and col2im, with `dcol` and `dy_chunk` as scratch; split
/// across rayon's threads when `threaded`.
#[allow(clippy::too_many_arguments)]
fn input_grad_chunk<T: ConvScalar>(
    g: &Geometry,
    w: &[T],
    dy: &[T],
    first: usize,
    images: usize,
    dcol: &mut [T],
    dy_chunk: &mut [T],
    dx: &mut [T],
    threaded: bool,
) {
    let n = images * g.out_pixels();
    let (kg, cg) = (g.group_rows(), g.group_out());
    let dy_c = &mut dy_chunk[..g.c_out * n];
    gather_output(g, dy, first, images, false, dy_c, threaded);
    let dcol = &mut dcol[..g.col_rows() * n];
    for grp in 0..g.groups {
        // dcol[grp rows] (kg x n) = W[grp]ᵀ (kg x cg) · dy[grp rows] (cg x n)
        // SAFETY: each block lies inside its buffer (shapes from `g`).
        unsafe {
            product(
                [kg, n, cg],
                (dcol[grp * kg * n..].as_mut_ptr(), 1, n as isize),
                false,
                (w[grp * cg * kg..].as_ptr(), kg as isize, 1),
                (dy_c[grp * cg * n..].as_ptr(), 1, n as isize),
                threaded,
            );
        }
    }
    col2im(g, dcol, images, dx, threaded);
}

/// The gradient of a convolution's bias: the output gradient summed over images and pixels.
pub(crate) fn conv2d_bias_backward<T: ConvScalar>(output_grad: FlexTensor) -> FlexTensor {
    let dy = output_grad.to_contiguous();
    let shape = dy.layout().shape().to_vec();
    let (batch, c_out) = (shape[0], shape[1]);
    let p: usize = shape[2..].iter().product();
    let dy: &[T] = dy.storage();
    let mut db = vec![T::zero(); c_out];
    for_each_chunk_of_work(&mut db, 1, batch * p, |offset, sums| {
        for (k, sum) in sums.iter_mut().enumerate() {
            let co = offset + k;
            for b in 0..batch {
                for &v in &dy[(b * c_out + co) * p..][..p] {
                    *sum = *sum + v;
                }
            }
        }
    });
    tensor(db, Shape::from(vec![c_out]))
}
