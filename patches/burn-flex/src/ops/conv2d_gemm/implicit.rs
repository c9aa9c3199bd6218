//! The forward of stride-1 convolutions over large planes with few output channels, as
//! products that read the (padded) input in place: no column matrix.
//!
//! With the column matrix in the Caffe layout (`[c_in·kh·kw, pixels]`, `columns.rs`), the
//! forward's product `y = W · col` has the output channels as its short side; for 64 of them
//! gemm 0.19 packs the whole column matrix again before its micro-kernels read it, after
//! im2col wrote it. Here the image is instead laid out pixel by pixel with its padding
//! (`[h + 2·ph, w + 2·pw, c_in]`). At stride 1 and dilation 1, the values kernel row `i`
//! sees for output pixel `(oy, ox)`, its `kw` taps times `c_in` channels, are then one run
//! of the padded image, starting at pixel `(oy + i, ox)`; the run of the next pixel starts
//! `c_in` values later. So each kernel row is one product whose right-hand side is the
//! padded image itself, column `q` starting at `q · c_in` (overlapping columns):
//! `out[q, co] += Σ_(j, c) pad[q + i·wp + j, c] · W[co, c, i, j]` for every pixel `q` of the
//! padded grid, `kh` products adding up. The grid's `2·pw` extra columns per row give
//! values that are thrown away (6% more work for 32 x 32 images with 3 x 3 kernels, 10% for
//! 16 x 16: hence "large planes").
//!
//! Measured with gemm alone on one thread (the CIFAR ResNet-18's first stage: 64 channels,
//! 32 x 32, 3 x 3), the three products ran at 164-187 GFLOP/s of useful work where the
//! column-matrix product ran at 139-148 on the same minutes (the im2col it needs not
//! counted); at 16 x 16 with 128 channels the column matrix was faster (158 against 147),
//! at 8 x 8 with 256 much faster.

use alloc::vec::Vec;

use super::columns::Geometry;
use super::transpose::transpose;
use super::{ConvScalar, unwritten};

/// Whether the forward of `g` takes this path: stride 1, dilation 1, one group, 16 to 128
/// output channels (gemm's products with fewer rows, such as the input gradient of a
/// 3-channel stem, ran slower this way), at least 16 input channels (each tap's run is then
/// at least 16 values long), and planes whose padded grid throws away at most a sixteenth
/// of the products (32 x 32 with a 3 x 3 kernel: 6%; 16 x 16: 10%, which measured slower).
pub(super) fn applies(g: &Geometry) -> bool {
    const MIN_OUT_CHANNELS: usize = 16;
    const MAX_OUT_CHANNELS: usize = 128;
    const MIN_IN_CHANNELS: usize = 16;
    // Products computed per image: the padded grid's pixels up to the last output pixel.
    let computed = g.out_h.saturating_sub(1) * padded_width(g) + g.out_w;
    g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.groups == 1
        && (MIN_OUT_CHANNELS..=MAX_OUT_CHANNELS).contains(&g.c_out)
        && g.c_in >= MIN_IN_CHANNELS
        && g.out_pixels() > 0
        && 16 * (computed - g.out_pixels()) <= computed
}

/// Width of the padded image: `in_w + 2·pw` = `out_w + kw − 1` at stride 1.
fn padded_width(g: &Geometry) -> usize {
    g.out_w + g.k_w - 1
}

/// The weight `[c_out, c_in, kh, kw]` as `[kh, kw, c_in, c_out]`: kernel row `i` is then
/// one `[kw·c_in, c_out]` block, its rows in the order of the padded image's runs.
pub(super) fn weight<T: ConvScalar>(g: &Geometry, w: &[T]) -> Vec<T> {
    let (taps, c_in, c_out) = (g.taps(), g.c_in, g.c_out);
    // SAFETY: every element is written below (each (tap, c, co) once).
    let mut out = unsafe { unwritten::<T>(w.len()) };
    for co in 0..c_out {
        for c in 0..c_in {
            for tap in 0..taps {
                out[(tap * c_in + c) * c_out + co] = w[(co * c_in + c) * taps + tap];
            }
        }
    }
    out
}

/// Scratch of one image: the padded image pixel by pixel and the products' output.
pub(super) struct Scratch<T> {
    padded: Vec<T>,
    product: Vec<T>,
}

impl<T: ConvScalar> Scratch<T> {
    pub(super) fn new(g: &Geometry) -> Self {
        let (rows, wp) = (g.out_h + g.k_h - 1, padded_width(g));
        let padded = alloc::vec![T::zero(); rows * wp * g.c_in];
        // SAFETY: the products write every element they read back (`forward_image`).
        let product = unsafe { unwritten(rows * wp * g.c_out) };
        Self { padded, product }
    }
}

/// The output planes `dst` (`[c_out, P]`) of image `image`, on the calling thread. `w_t` is
/// [`weight`]'s layout.
pub(super) fn forward_image<T: ConvScalar>(
    g: &Geometry,
    x: &[T],
    w_t: &[T],
    bias: Option<&[T]>,
    image: usize,
    scratch: &mut Scratch<T>,
    dst: &mut [T],
) {
    let (c_in, c_out, p) = (g.c_in, g.c_out, g.out_pixels());
    let wp = padded_width(g);
    let [ph, pw] = g.padding;
    // padded[ph + y, pw + x, c] = x[image, c, y, x]; the border stays zero (written once, in
    // `Scratch::new`, and never again).
    let src = &x[image * c_in * g.in_pixels()..][..c_in * g.in_pixels()];
    for y in 0..g.in_h {
        let row = &mut scratch.padded[((ph + y) * wp + pw) * c_in..][..g.in_w * c_in];
        transpose(&src[y * g.in_w..], g.in_pixels(), row, c_in, [c_in, g.in_w]);
    }
    // Pixel q of the padded grid, for q < n, is output pixel (q / wp, q % wp) where
    // q % wp < out_w; the last one read ends at the padded image's end.
    let n = (g.out_h - 1) * wp + g.out_w;
    let run = g.k_w * c_in;
    for i in 0..g.k_h {
        // product (c_out x n, column-major) [+]= W_i (c_out x run) · pad_i (run x n), where
        // pad_i's column q is the run from padded pixel q + i·wp.
        // SAFETY: `product` holds n x c_out elements; `w_t`'s block i holds run x c_out;
        // column q < n of pad_i ends at ((q + i·wp) · c_in + run) ≤ the padded image's
        // length, since q + i·wp + kw − 1 < (out_h + kh − 1)·wp.
        unsafe {
            super::product(
                [c_out, n, run],
                (scratch.product.as_mut_ptr(), c_out as isize, 1),
                i > 0,
                (w_t[i * run * c_out..].as_ptr(), c_out as isize, 1),
                (scratch.padded[i * wp * c_in..].as_ptr(), c_in as isize, 1),
                false,
            );
        }
    }
    // dst[co, oy·out_w + ox] = product[oy·wp + ox, co] (+ bias[co])
    for oy in 0..g.out_h {
        let src = &scratch.product[oy * wp * c_out..][..g.out_w * c_out];
        transpose(src, c_out, &mut dst[oy * g.out_w..], p, [g.out_w, c_out]);
    }
    if let Some(bias) = bias {
        for (plane, &b) in dst.chunks_exact_mut(p).zip(bias) {
            plane.iter_mut().for_each(|d| *d = *d + b);
        }
    }
}
