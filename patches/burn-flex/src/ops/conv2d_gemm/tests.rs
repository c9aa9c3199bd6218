//! The kernels of `conv2d_gemm` against the definition of a convolution, in f64.

use super::*;
use crate::Flex;
use crate::ops::test_values as values;
use burn_backend::TensorData;
use burn_backend::ops::ModuleOps;

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
    assert_close_within(got, want, what, 2e-5);
}

/// `got` within `tol · (1 + |want|)` of `want`, element by element.
fn assert_close_within(got: &[f32], want: &[f64], what: &str, tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
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
        // Stride 1 over planes large enough for `implicit.rs` (and so are their input
        // gradients, stride-1 convolutions of the output gradient): a 3 x 3 kernel, a 5 x 3
        // one with less padding than its reach, a 1 x 1 one (nothing thrown away).
        Case {
            batch: 8,
            c_in: 16,
            hw: [30, 32],
            c_out: 24,
            ..base
        },
        Case {
            batch: 8,
            c_in: 16,
            hw: [31, 40],
            c_out: 17,
            k: [5, 3],
            padding: [1, 1],
            ..base
        },
        Case {
            batch: 9,
            c_in: 20,
            hw: [9, 11],
            c_out: 16,
            k: [1, 1],
            padding: [0, 0],
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
        // The weight and bias gradients sum batch x pixels terms each (9280 in the largest
        // case): their rounding is bounded by f32's epsilon per term.
        let terms = g.batch * g.out_pixels();
        let sum_tol = (f32::EPSILON as f64 * terms as f64).max(2e-5);
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
            assert_close_within(
                &weight_grad(&g, &x, &dy),
                &dw,
                &alloc::format!("dw, {what}"),
                sum_tol,
            );
        }
        let db_got = conv2d_bias_backward::<f32>(tensor_of(&dy, &g.out_shape().to_vec()));
        assert_close_within(
            &to_vec(db_got),
            &db,
            &alloc::format!("db, {case:?}"),
            sum_tol,
        );
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
    // Large enough that im2col, col2im, the gathers and the products are split across
    // threads. Stride 1 (the input gradient as a convolution) and stride 2 (col2im); twelve
    // one-image chunks (a task each, for the forward) and two chunks of six images (each
    // split: a chunk's 76,800-element input gradient is past the split size).
    for stride in [1, 2] {
        let case = Case {
            batch: 12,
            c_in: 32,
            hw: [20, 20],
            c_out: 48,
            k: [3, 3],
            stride: [stride, stride],
            padding: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let p = case.geometry(COL_BUDGET).out_pixels();
        let x = values(case.x_shape().iter().product(), 12);
        let w = values(case.w_shape().iter().product(), 13);
        let dy = values(case.batch * case.c_out * p, 14);
        let [out, dx, dw, _] = reference(&case, &x, &w, &vec![0.0; case.c_out], &dy);
        for images in [1, 6] {
            let g = case.geometry(images * case.c_in * 9 * p);
            assert_eq!(g.images_per_chunk(), images);
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
            let what = |op: &str| alloc::format!("{op}, stride {stride}, {images} images a chunk");
            assert_eq!(bits(&one.0), bits(&four.0), "{}", what("forward"));
            assert_eq!(bits(&one.1), bits(&four.1), "{}", what("input gradient"));
            assert_eq!(bits(&one.2), bits(&four.2), "{}", what("weight gradient"));
            // Split across threads, the results are still the convolution's.
            assert_close(&four.0, &out, &what("forward"));
            assert_close(&four.1, &dx, &what("input gradient"));
            // Each weight-gradient element sums batch x output pixels (4800 at stride 1)
            // products of values in [-1, 1), ten times more than the forward's or the input
            // gradient's, so its f32 rounding is larger and depends on how gemm's kernel
            // blocks the sum (on a Sapphire Rapids Xeon, 4e-5 off at stride 1: past the
            // 2e-5 of the other checks). Bounded by f32's epsilon per term.
            let terms = case.batch * p;
            let tol = f32::EPSILON as f64 * terms as f64;
            assert_close_within(&four.2, &dw, &what("weight gradient"), tol);
        }
    }
}

#[test]
fn the_implicit_forward_applies_to_stride_one_over_large_planes_only() {
    let cases = cases();
    let large: Vec<&Case> = cases
        .iter()
        .filter(|c| c.batch >= 8 && c.hw[1] >= 30)
        .collect();
    assert_eq!(large.len(), 2);
    for case in large {
        let g = case.geometry(COL_BUDGET);
        assert!(implicit::applies(&g), "{case:?}");
        let w = values(case.w_shape().iter().product(), 2);
        let (transposed, _) = g.as_transposed_conv(&w).expect("stride 1");
        assert!(implicit::applies(&transposed), "input gradient of {case:?}");
    }
    let one_by_one = cases.iter().find(|c| c.batch == 9 && c.c_in == 20).unwrap();
    assert!(implicit::applies(&one_by_one.geometry(COL_BUDGET)));
    // The CIFAR ResNet-18's first stage takes it; its second stage (16 x 16), a stride-2
    // layer and the 3-channel stem's input gradient do not.
    let resnet = |c_in, c_out, hw, stride| Case {
        batch: 64,
        c_in,
        hw: [hw, hw],
        c_out,
        k: [3, 3],
        stride: [stride, stride],
        padding: [1, 1],
        dilation: [1, 1],
        groups: 1,
    };
    assert!(implicit::applies(
        &resnet(64, 64, 32, 1).geometry(COL_BUDGET)
    ));
    assert!(!implicit::applies(
        &resnet(128, 128, 16, 1).geometry(COL_BUDGET)
    ));
    assert!(!implicit::applies(
        &resnet(64, 128, 32, 2).geometry(COL_BUDGET)
    ));
    assert!(!implicit::applies(
        &resnet(3, 64, 32, 1).geometry(COL_BUDGET)
    ));
    let stem = resnet(3, 64, 32, 1).geometry(COL_BUDGET);
    let (stem_dx, _) = stem.as_transposed_conv(&values(64 * 3 * 9, 1)).unwrap();
    assert!(!implicit::applies(&stem_dx));
}

#[cfg(feature = "rayon")]
#[test]
fn the_implicit_forward_is_bitwise_the_same_on_one_thread_and_on_four() {
    let case = cases()
        .into_iter()
        .find(|c| c.batch == 8 && c.c_out == 24)
        .unwrap();
    let g = case.geometry(COL_BUDGET);
    assert!(implicit::applies(&g));
    let x = values(case.x_shape().iter().product(), 5);
    let w = values(case.w_shape().iter().product(), 6);
    let dy = values(g.batch * g.c_out * g.out_pixels(), 7);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| (forward(&g, &x, &w, None), input_grad(&g, &w, &dy)))
    };
    let (one, four) = (run(1), run(4));
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one.0), bits(&four.0), "forward");
    assert_eq!(bits(&one.1), bits(&four.1), "input gradient");
}
