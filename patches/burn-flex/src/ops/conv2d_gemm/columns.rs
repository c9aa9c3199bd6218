//! The column matrix of a chunk of images and the copies around the products: sizes of a
//! convolution ([`Geometry`]), im2col and col2im, and the output gradient's chunk in either
//! layout.

use alloc::vec;
use burn_backend::ops::ConvOptions;
use burn_backend::ops::conv::calculate_conv_output_size;
use burn_std::Shape;

use super::transpose::transpose;
use super::{COL_BUDGET, ConvScalar, each_chunk};
use crate::parallel::for_each_chunk;

/// Sizes of one 2-D convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub(super) batch: usize,
    pub(super) c_in: usize,
    pub(super) in_h: usize,
    pub(super) in_w: usize,
    pub(super) c_out: usize,
    pub(super) k_h: usize,
    pub(super) k_w: usize,
    pub(super) out_h: usize,
    pub(super) out_w: usize,
    pub(super) stride: [usize; 2],
    pub(super) padding: [usize; 2],
    pub(super) dilation: [usize; 2],
    pub(super) groups: usize,
    /// Elements of one chunk's column matrix ([`COL_BUDGET`]; smaller in tests).
    pub(super) col_budget: usize,
}

impl Geometry {
    pub(super) fn new(x_shape: &[usize], w_shape: &[usize], options: &ConvOptions<2>) -> Self {
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

    pub(super) fn taps(&self) -> usize {
        self.k_h * self.k_w
    }

    /// Rows of the column matrix: one per input channel and kernel tap.
    pub(super) fn col_rows(&self) -> usize {
        self.c_in * self.taps()
    }

    /// Reduction length of one group's products.
    pub(super) fn group_rows(&self) -> usize {
        self.col_rows() / self.groups
    }

    pub(super) fn group_out(&self) -> usize {
        self.c_out / self.groups
    }

    pub(super) fn in_pixels(&self) -> usize {
        self.in_h * self.in_w
    }

    pub(super) fn out_pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    pub(super) fn check_output_grad(&self, shape: &Shape) {
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
    pub(super) fn as_transposed_conv<T: ConvScalar>(&self, w: &[T]) -> Option<(Geometry, Vec<T>)> {
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
    pub(super) fn is_empty(&self) -> bool {
        self.batch == 0 || self.c_out == 0 || self.out_pixels() == 0
    }

    pub(super) fn out_shape(&self) -> Shape {
        Shape::from(vec![self.batch, self.c_out, self.out_h, self.out_w])
    }

    /// Images per chunk: as many as fit the column budget, at least one, balanced so the
    /// last chunk is not a sliver.
    pub(super) fn images_per_chunk(&self) -> usize {
        let per_image = (self.col_rows() * self.out_pixels()).max(1);
        let fit = (self.col_budget / per_image).clamp(1, self.batch.max(1));
        let chunks = self.batch.div_ceil(fit).max(1);
        self.batch.div_ceil(chunks).max(1)
    }

    /// The chunks of images: `(first, count)`.
    pub(super) fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let per = self.images_per_chunk();
        let batch = self.batch;
        (0..batch)
            .step_by(per)
            .map(move |first| (first, per.min(batch - first)))
    }

    /// The output columns `lo..hi` whose input column `ox * stride + offset` lies inside
    /// `0..len` (`offset` = tap · dilation − padding, possibly negative).
    pub(super) fn valid(
        out_len: usize,
        stride: usize,
        offset: isize,
        len: usize,
    ) -> (usize, usize) {
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
    pub(super) fn offsets(&self, i: usize, j: usize) -> (isize, isize) {
        (
            (i * self.dilation[0]) as isize - self.padding[0] as isize,
            (j * self.dilation[1]) as isize - self.padding[1] as isize,
        )
    }
}

/// Fills `col` (`[col_rows, images · P]`) with the chunk of `images` images from `first`.
pub(super) fn im2col<T: ConvScalar>(
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
pub(super) fn col2im<T: ConvScalar>(
    g: &Geometry,
    dcol: &[T],
    images: usize,
    dx: &mut [T],
    threaded: bool,
) {
    let p = g.out_pixels();
    let n = images * p;
    each_chunk(threaded, dx, g.in_pixels(), |offset, planes| {
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
/// (`transposed`: into `[images·P, c_out]`), split across rayon's threads when `threaded`.
pub(super) fn gather_output<T: ConvScalar>(
    g: &Geometry,
    dy: &[T],
    first: usize,
    images: usize,
    transposed: bool,
    out: &mut [T],
    threaded: bool,
) {
    let p = g.out_pixels();
    let src = &dy[first * g.c_out * p..][..images * g.c_out * p];
    if transposed {
        // out[b·P + q, co] = src[b, co, q]: each image's [c_out, P] plane transposed, the
        // rows of `out` split across threads.
        each_chunk(threaded, out, g.c_out, |offset, rows| {
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
        each_chunk(threaded, out, n, |offset, rows| {
            for (k, row) in rows.chunks_exact_mut(n).enumerate() {
                let co = offset / n + k;
                for (b, dst) in row.chunks_exact_mut(p).enumerate() {
                    dst.copy_from_slice(&src[(b * g.c_out + co) * p..][..p]);
                }
            }
        });
    }
}
