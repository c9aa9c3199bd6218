//! 2-D convolution and both of its gradients as im2col and one large product per chunk of
//! images (tessera's change 10, `patches/README.md`).
//!
//! burn-flex 0.21 convolves image by image in tiles of 512 output pixels (a product of
//! `[c_out, c_in·k·k] x [c_in·k·k, 512]` per tile, its weight packed again for each), and
//! leaves both gradients to burn-backend's defaults: the input gradient as a transposed
//! convolution, the weight gradient as a convolution of the input with the output gradient
//! (batch and channels swapped), whose "kernel" is the whole output plane, so its products
//! are `[c_out, b·oh·ow] x [b·oh·ow, 9]`: nine columns. On the CIFAR ResNet-18 that was
//! 2.5 s of a SimCLR step at 32-80 GFLOP/s where the same products reach about 200.
//!
//! Here all three are products over a column matrix `col` of `[c_in·kh·kw, images·oh·ow]`
//! (the Caffe layout: row `(c, i, j)` holds input channel `c` shifted by kernel tap
//! `(i, j)` for every output pixel of every image in the chunk; stride-1 rows are
//! contiguous copies):
//! - forward: `y = W · col` (per group), scattered from `[c_out, images·P]` into NCHW;
//! - input gradient: `dcol = Wᵀ · dy`, added back onto the input's pixels (col2im);
//! - weight gradient: `dWᵀ = col · dyᵀ`, accumulated over chunks in a fixed order.
//!
//! Every product has both operands row-major along its reduction (the layouts gemm packs
//! fastest: about 200 GFLOP/s on two AVX-512 cores against 35 with a column-major
//! right-hand side), and chunks are sized by a memory budget, not by the thread count,
//! so results do not depend on the number of threads.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::ops::ConvOptions;
use burn_backend::ops::conv::calculate_conv_output_size;
use burn_std::{Bytes, Shape};
use core::ops::Add;

use super::matmul::GemmScalar;
use crate::parallel::{for_each_chunk, for_each_chunk_of_work};
use crate::{FlexTensor, Layout};

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
pub(crate) trait ConvScalar: GemmScalar + Add<Output = Self> + Send + Sync {}
impl ConvScalar for f32 {}
impl ConvScalar for f64 {}

/// Sizes of one 2-D convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    c_in: usize,
    in_h: usize,
    in_w: usize,
    c_out: usize,
    k_h: usize,
    k_w: usize,
    out_h: usize,
    out_w: usize,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    /// Elements of one chunk's column matrix ([`COL_BUDGET`]; smaller in tests).
    col_budget: usize,
}

impl Geometry {
    fn new(x_shape: &[usize], w_shape: &[usize], options: &ConvOptions<2>) -> Self {
        assert_eq!(
            x_shape.len(),
            4,
            "conv2d: input must be [batch, channels, height, width]"
        );
        assert_eq!(
            w_shape.len(),
            4,
            "conv2d: weight must be [c_out, c_in / groups, kh, kw]"
        );
        let groups = options.groups;
        assert!(
            groups > 0 && x_shape[1].is_multiple_of(groups) && w_shape[0].is_multiple_of(groups),
            "conv2d: {groups} groups do not divide {} input and {} output channels",
            x_shape[1],
            w_shape[0]
        );
        assert_eq!(
            w_shape[1] * groups,
            x_shape[1],
            "conv2d: weight has {} input channels per group, input {} channels in {groups} groups",
            w_shape[1],
            x_shape[1]
        );
        let out = |axis: usize| {
            calculate_conv_output_size(
                w_shape[2 + axis],
                options.stride[axis],
                options.padding[axis],
                options.dilation[axis],
                x_shape[2 + axis],
            )
        };
        Self {
            batch: x_shape[0],
            c_in: x_shape[1],
            in_h: x_shape[2],
            in_w: x_shape[3],
            c_out: w_shape[0],
            k_h: w_shape[2],
            k_w: w_shape[3],
            out_h: out(0),
            out_w: out(1),
            stride: options.stride,
            padding: options.padding,
            dilation: options.dilation,
            groups,
            col_budget: COL_BUDGET,
        }
    }

    fn taps(&self) -> usize {
        self.k_h * self.k_w
    }

    /// Rows of the column matrix: one per input channel and kernel tap.
    fn col_rows(&self) -> usize {
        self.c_in * self.taps()
    }

    /// Reduction length of one group's products.
    fn group_rows(&self) -> usize {
        self.col_rows() / self.groups
    }

    fn group_out(&self) -> usize {
        self.c_out / self.groups
    }

    fn in_pixels(&self) -> usize {
        self.in_h * self.in_w
    }

    fn out_pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    fn check_output_grad(&self, shape: &Shape) {
        let want = [self.batch, self.c_out, self.out_h, self.out_w];
        assert_eq!(
            shape.to_vec(),
            want.to_vec(),
            "conv2d backward: the output gradient's shape is not the convolution's output"
        );
    }

    /// For stride 1, the input gradient is itself a convolution: of the output gradient
    /// with the weight flipped in space and its channel axes swapped, padded by
    /// `dilation · (k − 1) − padding`. Returns that convolution's geometry and weight, or
    /// `None` where it does not apply (strides, or padding past the kernel's reach).
    fn as_transposed_conv<T: ConvScalar>(&self, w: &[T]) -> Option<(Geometry, Vec<T>)> {
        let reach = |a: usize| self.dilation[a] * ([self.k_h, self.k_w][a] - 1);
        if self.stride != [1, 1] || (0..2).any(|a| self.padding[a] > reach(a)) {
            return None;
        }
        let (cig, cog) = (self.c_in / self.groups, self.group_out());
        let taps = self.taps();
        let mut flipped = vec![T::zero(); w.len()];
        // flipped[grp·cig + ci, co, tap] = w[grp·cog + co, ci, taps − 1 − tap] (reversing the
        // taps flips both axes)
        for_each_chunk(&mut flipped, cog * taps, |offset, rows| {
            for (k, row) in rows.chunks_exact_mut(cog * taps).enumerate() {
                let c = offset / (cog * taps) + k;
                let (grp, ci) = (c / cig, c % cig);
                for (co, dst) in row.chunks_exact_mut(taps).enumerate() {
                    let src = &w[((grp * cog + co) * cig + ci) * taps..][..taps];
                    dst.iter_mut()
                        .zip(src.iter().rev())
                        .for_each(|(d, &v)| *d = v);
                }
            }
        });
        let transposed = Geometry {
            batch: self.batch,
            c_in: self.c_out,
            in_h: self.out_h,
            in_w: self.out_w,
            c_out: self.c_in,
            k_h: self.k_h,
            k_w: self.k_w,
            out_h: self.in_h,
            out_w: self.in_w,
            stride: [1, 1],
            padding: [reach(0) - self.padding[0], reach(1) - self.padding[1]],
            dilation: self.dilation,
            groups: self.groups,
            col_budget: self.col_budget,
        };
        debug_assert_eq!(
            (transposed.out_h, transposed.out_w),
            (
                self.out_h + 2 * transposed.padding[0] - reach(0),
                self.out_w + 2 * transposed.padding[1] - reach(1)
            )
        );
        Some((transposed, flipped))
    }

    /// Whether no product is computed: no image, output channel or output pixel (every
    /// result is then zeros, or empty).
    fn is_empty(&self) -> bool {
        self.batch == 0 || self.c_out == 0 || self.out_pixels() == 0
    }

    fn out_shape(&self) -> Shape {
        Shape::from(vec![self.batch, self.c_out, self.out_h, self.out_w])
    }

    /// Images per chunk: as many as fit the column budget, at least one, balanced so the
    /// last chunk is not a sliver.
    fn images_per_chunk(&self) -> usize {
        let per_image = (self.col_rows() * self.out_pixels()).max(1);
        let fit = (self.col_budget / per_image).clamp(1, self.batch.max(1));
        let chunks = self.batch.div_ceil(fit).max(1);
        self.batch.div_ceil(chunks).max(1)
    }

    /// The chunks of images: `(first, count)`.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let per = self.images_per_chunk();
        let batch = self.batch;
        (0..batch)
            .step_by(per)
            .map(move |first| (first, per.min(batch - first)))
    }

    /// The output columns `lo..hi` whose input column `ox * stride + offset` lies inside
    /// `0..len` (`offset` = tap · dilation − padding, possibly negative).
    fn valid(out_len: usize, stride: usize, offset: isize, len: usize) -> (usize, usize) {
        let lo = if offset < 0 { (-offset) as usize } else { 0 }.div_ceil(stride);
        let end = len as isize - offset;
        let hi = if end <= 0 {
            0
        } else {
            (end as usize).div_ceil(stride).min(out_len)
        };
        (lo.min(hi), hi)
    }

    /// Tap `(i, j)`'s offsets: the input coordinate is `o * stride + offset` per axis.
    fn offsets(&self, i: usize, j: usize) -> (isize, isize) {
        (
            (i * self.dilation[0]) as isize - self.padding[0] as isize,
            (j * self.dilation[1]) as isize - self.padding[1] as isize,
        )
    }
}

/// Fills `col` (`[col_rows, images · P]`) with the chunk of `images` images from `first`.
fn im2col<T: ConvScalar>(
    g: &Geometry,
    x: &[T],
    first: usize,
    images: usize,
    col: &mut [T],
    threaded: bool,
) {
    let p = g.out_pixels();
    let n = images * p;
    each_chunk(threaded, col, n, |offset, rows| {
        for (r, row) in rows.chunks_exact_mut(n).enumerate() {
            let r = offset / n + r;
            let (c, tap) = (r / g.taps(), r % g.taps());
            let (oy_off, ox_off) = g.offsets(tap / g.k_w, tap % g.k_w);
            for (b, out) in row.chunks_exact_mut(p).enumerate() {
                let plane = &x[((first + b) * g.c_in + c) * g.in_pixels()..][..g.in_pixels()];
                if g.stride == [1, 1] && g.out_w == g.in_w {
                    shifted_plane(g, plane, oy_off, ox_off, out);
                } else {
                    strided_plane(g, plane, oy_off, ox_off, out);
                }
            }
        }
    });
}

/// One image's row of the column matrix for a tap whose input pixel is `(oy · sy + oy_off,
/// ox · sx + ox_off)`, zero where that falls outside the image.
fn strided_plane<T: ConvScalar>(
    g: &Geometry,
    plane: &[T],
    oy_off: isize,
    ox_off: isize,
    out: &mut [T],
) {
    let (x_lo, x_hi) = Geometry::valid(g.out_w, g.stride[1], ox_off, g.in_w);
    for (oy, dst) in out.chunks_exact_mut(g.out_w).enumerate() {
        let iy = (oy * g.stride[0]) as isize + oy_off;
        if iy < 0 || iy >= g.in_h as isize || x_lo == x_hi {
            dst.fill(T::zero());
            continue;
        }
        let src = &plane[iy as usize * g.in_w..][..g.in_w];
        dst[..x_lo].fill(T::zero());
        dst[x_hi..].fill(T::zero());
        let start = ((x_lo * g.stride[1]) as isize + ox_off) as usize;
        for (k, d) in dst[x_lo..x_hi].iter_mut().enumerate() {
            *d = src[start + k * g.stride[1]];
        }
    }
}

/// [`strided_plane`] for stride 1 with rows as wide as the input's ("same" convolutions):
/// the row is the input plane shifted by `oy_off · w + ox_off` elements, so it is one copy
/// (not one per output row) and then the columns that wrapped around zeroed.
fn shifted_plane<T: ConvScalar>(
    g: &Geometry,
    plane: &[T],
    oy_off: isize,
    ox_off: isize,
    out: &mut [T],
) {
    let w = g.in_w;
    let (y_lo, y_hi) = Geometry::valid(g.out_h, 1, oy_off, g.in_h);
    let (x_lo, x_hi) = Geometry::valid(g.out_w, 1, ox_off, g.in_w);
    if y_lo == y_hi || x_lo == x_hi {
        out.fill(T::zero());
        return;
    }
    let shift = oy_off * w as isize + ox_off;
    // Output pixels y_lo·w.. y_hi·w read input pixel `d + shift`, clipped to the plane.
    let lo = ((y_lo * w) as isize).max(-shift) as usize;
    let hi = ((y_hi * w) as isize).min(plane.len() as isize - shift) as usize;
    out[..lo].fill(T::zero());
    out[hi..].fill(T::zero());
    out[lo..hi].copy_from_slice(&plane[(lo as isize + shift) as usize..][..hi - lo]);
    if x_lo > 0 || x_hi < w {
        for row in out[y_lo * w..y_hi * w].chunks_exact_mut(w) {
            row[..x_lo].fill(T::zero());
            row[x_hi..].fill(T::zero());
        }
    }
}

/// Adds `dcol` (`[col_rows, images · P]`) back onto the chunk's input pixels: `dx` is the
/// chunk's slice of the input gradient, `[images, c_in, in_h, in_w]`, zeroed. Each input
/// plane sums its taps in the same order whatever the threads.
fn col2im<T: ConvScalar>(g: &Geometry, dcol: &[T], images: usize, dx: &mut [T]) {
    let p = g.out_pixels();
    let n = images * p;
    for_each_chunk(dx, g.in_pixels(), |offset, planes| {
        for (k, plane) in planes.chunks_exact_mut(g.in_pixels()).enumerate() {
            let index = offset / g.in_pixels() + k;
            let (b, c) = (index / g.c_in, index % g.c_in);
            for tap in 0..g.taps() {
                let row = &dcol[(c * g.taps() + tap) * n + b * p..][..p];
                let (oy_off, ox_off) = g.offsets(tap / g.k_w, tap % g.k_w);
                let (x_lo, x_hi) = Geometry::valid(g.out_w, g.stride[1], ox_off, g.in_w);
                if x_lo == x_hi {
                    continue;
                }
                for (oy, src) in row.chunks_exact(g.out_w).enumerate() {
                    let iy = (oy * g.stride[0]) as isize + oy_off;
                    if iy < 0 || iy >= g.in_h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.in_w..][..g.in_w];
                    let start = ((x_lo * g.stride[1]) as isize + ox_off) as usize;
                    for (ox, &v) in src[x_lo..x_hi].iter().enumerate() {
                        let d = &mut dst[start + ox * g.stride[1]];
                        *d = *d + v;
                    }
                }
            }
        }
    });
}

/// Copies the chunk's output gradient planes `[images, c_out, P]` into `[c_out, images·P]`
/// (`transposed`: into `[images·P, c_out]`).
fn gather_output<T: ConvScalar>(
    g: &Geometry,
    dy: &[T],
    first: usize,
    images: usize,
    transposed: bool,
    out: &mut [T],
) {
    let p = g.out_pixels();
    let src = &dy[first * g.c_out * p..][..images * g.c_out * p];
    if transposed {
        // out[b·P + q, co] = src[b, co, q]: each image's [c_out, P] plane transposed, the
        // rows of `out` split across threads.
        for_each_chunk(out, g.c_out, |offset, rows| {
            let (mut row, end) = (offset / g.c_out, (offset + rows.len()) / g.c_out);
            while row < end {
                let (b, q) = (row / p, row % p);
                let count = (p - q).min(end - row);
                let dst = &mut rows[(row - offset / g.c_out) * g.c_out..][..count * g.c_out];
                let plane = &src[b * g.c_out * p + q..];
                transpose(plane, p, dst, g.c_out, [g.c_out, count]);
                row += count;
            }
        });
    } else {
        let n = images * p;
        for_each_chunk(out, n, |offset, rows| {
            for (k, row) in rows.chunks_exact_mut(n).enumerate() {
                let co = offset / n + k;
                for (b, dst) in row.chunks_exact_mut(p).enumerate() {
                    dst.copy_from_slice(&src[(b * g.c_out + co) * p..][..p]);
                }
            }
        });
    }
}

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

/// `dst[c · dst_stride + r] = src[r · src_stride + c]` for `r < rows`, `c < cols`, in
/// 16 x 16 tiles (so both sides are read and written a cache line at a time).
fn transpose<T: Copy>(
    src: &[T],
    src_stride: usize,
    dst: &mut [T],
    dst_stride: usize,
    [rows, cols]: [usize; 2],
) {
    const TILE: usize = 16;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                let out = &mut dst[c * dst_stride..];
                for r in r0..(r0 + TILE).min(rows) {
                    out[r] = src[r * src_stride + c];
                }
            }
        }
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) · rhs (k x n)`, each given by its column and row
/// strides, on rayon's threads when `threaded` and large (gemm splits the output, never the reduction,
/// so the result does not depend on the threads).
#[allow(clippy::too_many_arguments)]
unsafe fn product<T: ConvScalar>(
    [m, n, k]: [usize; 3],
    dst: (*mut T, isize, isize),
    accumulate: bool,
    lhs: (*const T, isize, isize),
    rhs: (*const T, isize, isize),
    threaded: bool,
) {
    let parallelism = if threaded && m.saturating_mul(n).saturating_mul(k) >= PARALLEL_PRODUCT {
        #[cfg(feature = "rayon")]
        {
            gemm::Parallelism::Rayon(0)
        }
        #[cfg(not(feature = "rayon"))]
        {
            gemm::Parallelism::None
        }
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's pointers and strides address m x k, k x n and m x n elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.1,
            dst.2,
            accumulate,
            lhs.0,
            lhs.1,
            lhs.2,
            rhs.0,
            rhs.1,
            rhs.2,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        );
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
    let mut out = vec![T::zero(); len];
    let scratch = || {
        let y = if per > 1 { chunk_out } else { 0 };
        (
            vec![T::zero(); g.col_rows() * per * g.out_pixels()],
            vec![T::zero(); y],
        )
    };
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
    let (kg, cg) = (g.group_rows(), g.group_out());
    let mut dx = vec![T::zero(); g.batch * g.c_in * g.in_pixels()];
    let per = g.images_per_chunk();
    let mut dcol = vec![T::zero(); g.col_rows() * per * p];
    let mut dy_chunk = vec![T::zero(); g.c_out * per * p];
    for (first, images) in g.chunks() {
        let n = images * p;
        let dy_c = &mut dy_chunk[..g.c_out * n];
        gather_output(g, dy, first, images, false, dy_c);
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
                    true,
                );
            }
        }
        let planes = g.c_in * g.in_pixels();
        col2im(
            g,
            dcol,
            images,
            &mut dx[first * planes..][..images * planes],
        );
    }
    dx
}

fn weight_grad<T: ConvScalar>(g: &Geometry, x: &[T], dy: &[T]) -> Vec<T> {
    if g.is_empty() {
        return vec![T::zero(); g.c_out * g.group_rows()];
    }
    let p = g.out_pixels();
    let (kg, cg) = (g.group_rows(), g.group_out());
    // dWᵀ per group, [kg, cg] row-major: gemm writes a row-major product at full speed and
    // a column-major one (dW's own layout seen from here) at a sixth of it.
    let mut dw_t = vec![T::zero(); g.c_out * kg];
    let per = g.images_per_chunk();
    let mut col = vec![T::zero(); g.col_rows() * per * p];
    let mut dy_t = vec![T::zero(); per * p * g.c_out];
    for (index, (first, images)) in g.chunks().enumerate() {
        let n = images * p;
        let col = &mut col[..g.col_rows() * n];
        im2col(g, x, first, images, col, true);
        let dy_t = &mut dy_t[..n * g.c_out];
        gather_output(g, dy, first, images, true, dy_t);
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
                    true,
                );
            }
        }
    }
    // dW[grp·cg + co, r] = dWᵀ[grp][r, co]
    let mut dw = vec![T::zero(); g.c_out * kg];
    for (grp, dst) in dw.chunks_exact_mut(cg * kg).enumerate() {
        transpose(&dw_t[grp * kg * cg..], cg, dst, kg, [kg, cg]);
    }
    dw
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Flex;
    use burn_backend::TensorData;
    use burn_backend::ops::ModuleOps;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// One convolution to check: shapes and options.
    #[derive(Debug, Clone, Copy)]
    struct Case {
        batch: usize,
        c_in: usize,
        hw: [usize; 2],
        c_out: usize,
        k: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    }

    impl Case {
        fn options(&self) -> ConvOptions<2> {
            ConvOptions::new(self.stride, self.padding, self.dilation, self.groups)
        }
        fn x_shape(&self) -> [usize; 4] {
            [self.batch, self.c_in, self.hw[0], self.hw[1]]
        }
        fn w_shape(&self) -> [usize; 4] {
            [self.c_out, self.c_in / self.groups, self.k[0], self.k[1]]
        }
        fn geometry(&self, col_budget: usize) -> Geometry {
            let mut g = Geometry::new(&self.x_shape(), &self.w_shape(), &self.options());
            g.col_budget = col_budget;
            g
        }
    }

    /// The definition, in f64: the output, and the input, weight and bias gradients for
    /// the output gradient `dy`.
    fn reference(c: &Case, x: &[f32], w: &[f32], bias: &[f32], dy: &[f32]) -> [Vec<f64>; 4] {
        let g = c.geometry(COL_BUDGET);
        let (cig, cog) = (c.c_in / c.groups, c.c_out / c.groups);
        let mut out = vec![0.0f64; g.batch * g.c_out * g.out_pixels()];
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        let mut db = vec![0.0f64; c.c_out];
        for b in 0..g.batch {
            for co in 0..g.c_out {
                let grp = co / cog;
                for oy in 0..g.out_h {
                    for ox in 0..g.out_w {
                        let o = ((b * g.c_out + co) * g.out_h + oy) * g.out_w + ox;
                        let mut sum = bias[co] as f64;
                        db[co] += dy[o] as f64;
                        for ci in 0..cig {
                            let cx = grp * cig + ci;
                            for i in 0..g.k_h {
                                for j in 0..g.k_w {
                                    let iy = (oy * g.stride[0] + i * g.dilation[0]) as isize
                                        - g.padding[0] as isize;
                                    let ix = (ox * g.stride[1] + j * g.dilation[1]) as isize
                                        - g.padding[1] as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= g.in_h as isize
                                        || ix >= g.in_w as isize
                                    {
                                        continue;
                                    }
                                    let xi = ((b * g.c_in + cx) * g.in_h + iy as usize) * g.in_w
                                        + ix as usize;
                                    let wi = ((co * cig + ci) * g.k_h + i) * g.k_w + j;
                                    sum += x[xi] as f64 * w[wi] as f64;
                                    dx[xi] += dy[o] as f64 * w[wi] as f64;
                                    dw[wi] += dy[o] as f64 * x[xi] as f64;
                                }
                            }
                        }
                        out[o] = sum;
                    }
                }
            }
        }
        [out, dx, dw, db]
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 2e-5 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    fn tensor_of(data: &[f32], shape: &[usize]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(data.to_vec(), shape.to_vec()))
    }

    fn to_vec(t: FlexTensor) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap()
    }

    fn cases() -> Vec<Case> {
        let base = Case {
            batch: 3,
            c_in: 4,
            hw: [7, 6],
            c_out: 5,
            k: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        vec![
            base,
            Case {
                stride: [2, 2],
                ..base
            },
            Case {
                stride: [2, 3],
                padding: [0, 2],
                ..base
            },
            Case {
                k: [1, 1],
                padding: [0, 0],
                ..base
            },
            Case {
                k: [1, 1],
                padding: [2, 2],
                stride: [2, 1],
                ..base
            },
            Case {
                k: [5, 3],
                padding: [2, 0],
                ..base
            },
            Case {
                dilation: [2, 2],
                padding: [2, 1],
                ..base
            },
            Case {
                c_in: 6,
                c_out: 4,
                groups: 2,
                ..base
            },
            Case {
                c_in: 4,
                c_out: 8,
                groups: 4,
                ..base
            },
            Case {
                hw: [2, 2],
                k: [3, 3],
                padding: [0, 0],
                ..base
            },
            Case {
                batch: 1,
                hw: [16, 16],
                k: [16, 16],
                stride: [16, 16],
                padding: [0, 0],
                c_in: 3,
                ..base
            },
            Case { batch: 0, ..base },
            // Nine one-image chunks: each a task of its own (TASK_CHUNKS).
            Case { batch: 9, ..base },
            Case {
                batch: 9,
                c_in: 6,
                c_out: 4,
                groups: 2,
                stride: [2, 2],
                ..base
            },
            Case {
                dilation: [2, 2],
                padding: [2, 2],
                ..base
            },
            Case {
                k: [1, 5],
                padding: [0, 2],
                ..base
            },
            Case {
                padding: [0, 1],
                ..base
            },
            Case {
                padding: [3, 1],
                ..base
            },
            Case {
                c_in: 6,
                c_out: 9,
                groups: 3,
                k: [3, 1],
                padding: [1, 0],
                ..base
            },
        ]
    }

    #[test]
    fn forward_and_both_gradients_equal_the_definition_for_any_chunking() {
        for case in cases() {
            let x = values(case.x_shape().iter().product(), 1);
            let w = values(case.w_shape().iter().product(), 2);
            let bias = values(case.c_out, 3);
            let g = case.geometry(COL_BUDGET);
            let dy = values(g.batch * g.c_out * g.out_pixels(), 4);
            let [out, dx, dw, db] = reference(&case, &x, &w, &bias, &dy);
            // One image per chunk, two or three (a short last chunk), and the whole batch.
            let per_image = g.col_rows() * g.out_pixels();
            for budget in [1, 2 * per_image, COL_BUDGET] {
                let g = case.geometry(budget);
                let what = alloc::format!("{case:?}, budget {budget}");
                assert_close(
                    &forward(&g, &x, &w, Some(&bias)),
                    &out,
                    &alloc::format!("out, {what}"),
                );
                assert_close(&input_grad(&g, &w, &dy), &dx, &alloc::format!("dx, {what}"));
                assert_close(
                    &weight_grad(&g, &x, &dy),
                    &dw,
                    &alloc::format!("dw, {what}"),
                );
            }
            let db_got = conv2d_bias_backward::<f32>(tensor_of(&dy, &g.out_shape().to_vec()));
            assert_close(&to_vec(db_got), &db, &alloc::format!("db, {case:?}"));
        }
    }

    #[test]
    fn module_ops_route_every_dtype_and_layout_here() {
        let case = Case {
            batch: 2,
            c_in: 3,
            hw: [9, 8],
            c_out: 4,
            k: [3, 3],
            stride: [2, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let x = values(case.x_shape().iter().product(), 5);
        let w = values(case.w_shape().iter().product(), 6);
        let bias = values(case.c_out, 7);
        let g = case.geometry(COL_BUDGET);
        let dy = values(g.batch * g.c_out * g.out_pixels(), 8);
        let [out, dx, dw, db] = reference(&case, &x, &w, &bias, &dy);
        let out_shape = g.out_shape().to_vec();
        // x given as a non-contiguous view: a transposed copy swapped back.
        let [b, c, h, wd] = case.x_shape();
        let mut xt = vec![0.0f32; x.len()];
        for i in 0..b * c {
            for y in 0..h {
                for z in 0..wd {
                    xt[(i * wd + z) * h + y] = x[(i * h + y) * wd + z];
                }
            }
        }
        let x_view = tensor_of(&xt, &[b, c, wd, h]).transpose(2, 3);
        assert!(!x_view.is_contiguous());
        let got = Flex::conv2d(
            x_view,
            tensor_of(&w, &case.w_shape()),
            Some(tensor_of(&bias, &[4])),
            case.options(),
        );
        assert_close(&to_vec(got), &out, "conv2d");
        let dx_got = Flex::conv2d_x_backward(
            tensor_of(&x, &case.x_shape()),
            tensor_of(&w, &case.w_shape()),
            tensor_of(&dy, &out_shape),
            case.options(),
        );
        assert_close(&to_vec(dx_got), &dx, "conv2d_x_backward");
        let dw_got = Flex::conv2d_weight_backward(
            tensor_of(&x, &case.x_shape()),
            tensor_of(&w, &case.w_shape()),
            tensor_of(&dy, &out_shape),
            case.options(),
        );
        assert_close(&to_vec(dw_got), &dw, "conv2d_weight_backward");
        let db_got = Flex::conv2d_bias_backward(
            tensor_of(&x, &case.x_shape()),
            tensor_of(&bias, &[4]),
            tensor_of(&dy, &out_shape),
        );
        assert_close(&to_vec(db_got), &db, "conv2d_bias_backward");

        // f64 runs the same kernels; f16 and bf16 gradients go through f32.
        let as_dtype = |t: &[f32], shape: &[usize], dtype: burn_backend::DType| {
            FlexTensor::from_data(TensorData::new(t.to_vec(), shape.to_vec()).convert_dtype(dtype))
        };
        for (dtype, tol) in [
            (burn_backend::DType::F64, 1e-5),
            (burn_backend::DType::F16, 2e-2),
            (burn_backend::DType::BF16, 8e-2),
        ] {
            let dx_got = Flex::conv2d_x_backward(
                as_dtype(&x, &case.x_shape(), dtype),
                as_dtype(&w, &case.w_shape(), dtype),
                as_dtype(&dy, &out_shape, dtype),
                case.options(),
            );
            assert_eq!(dx_got.dtype(), dtype);
            let dw_got = Flex::conv2d_weight_backward(
                as_dtype(&x, &case.x_shape(), dtype),
                as_dtype(&w, &case.w_shape(), dtype),
                as_dtype(&dy, &out_shape, dtype),
                case.options(),
            );
            assert_eq!(dw_got.dtype(), dtype);
            let out_got = Flex::conv2d(
                as_dtype(&x, &case.x_shape(), dtype),
                as_dtype(&w, &case.w_shape(), dtype),
                Some(as_dtype(&bias, &[4], dtype)),
                case.options(),
            );
            for (got, want, what) in [
                (to_vec(dx_got), &dx, "dx"),
                (to_vec(dw_got), &dw, "dw"),
                (to_vec(out_got), &out, "out"),
            ] {
                for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= tol * (1.0 + w.abs()) * 4.0,
                        "{dtype:?} {what}[{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn depthwise_forward_keeps_its_kernel_and_its_gradients_come_from_here() {
        let case = Case {
            batch: 2,
            c_in: 4,
            hw: [6, 5],
            c_out: 4,
            k: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 4,
        };
        let x = values(case.x_shape().iter().product(), 9);
        let w = values(case.w_shape().iter().product(), 10);
        let bias = vec![0.0f32; 4];
        let g = case.geometry(COL_BUDGET);
        let dy = values(g.batch * g.c_out * g.out_pixels(), 11);
        let [out, dx, dw, _] = reference(&case, &x, &w, &bias, &dy);
        let out_shape = g.out_shape().to_vec();
        assert_close(
            &to_vec(Flex::conv2d(
                tensor_of(&x, &case.x_shape()),
                tensor_of(&w, &case.w_shape()),
                None,
                case.options(),
            )),
            &out,
            "out",
        );
        assert_close(
            &to_vec(Flex::conv2d_x_backward(
                tensor_of(&x, &case.x_shape()),
                tensor_of(&w, &case.w_shape()),
                tensor_of(&dy, &out_shape),
                case.options(),
            )),
            &dx,
            "dx",
        );
        assert_close(
            &to_vec(Flex::conv2d_weight_backward(
                tensor_of(&x, &case.x_shape()),
                tensor_of(&w, &case.w_shape()),
                tensor_of(&dy, &out_shape),
                case.options(),
            )),
            &dw,
            "dw",
        );
    }

    #[cfg(feature = "rayon")]
    #[test]
    fn results_are_bitwise_the_same_on_one_thread_and_on_four() {
        // Large enough that im2col, col2im and the products are split across threads; ten
        // one-image chunks (a task each) and three of four images (each split).
        let case = Case {
            batch: 10,
            c_in: 32,
            hw: [20, 20],
            c_out: 48,
            k: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let x = values(case.x_shape().iter().product(), 12);
        let w = values(case.w_shape().iter().product(), 13);
        let dy = values(case.batch * case.c_out * 400, 14);
        let [out, dx, dw, _] = reference(&case, &x, &w, &vec![0.0; case.c_out], &dy);
        for images in [1, 4] {
            let g = case.geometry(images * case.c_in * 9 * 400);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    (
                        forward(&g, &x, &w, None),
                        input_grad(&g, &w, &dy),
                        weight_grad(&g, &x, &dy),
                    )
                })
            };
            let (one, four) = (run(1), run(4));
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&one.0),
                bits(&four.0),
                "forward, {images} images a chunk"
            );
            assert_eq!(
                bits(&one.1),
                bits(&four.1),
                "input gradient, {images} images a chunk"
            );
            assert_eq!(
                bits(&one.2),
                bits(&four.2),
                "weight gradient, {images} images a chunk"
            );
            // Split across threads, the results are still the convolution's.
            assert_close(&four.0, &out, "forward");
            assert_close(&four.1, &dx, "input gradient");
            assert_close(&four.2, &dw, "weight gradient");
        }
    }
}
