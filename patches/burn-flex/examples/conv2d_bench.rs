//! Times `conv2d` and its three gradients per layer of the CIFAR ResNet-18 (SimCLR's
//! backbone, 64 views a step), on rayon's pool of `THREADS` (2) threads; best of 3 after a
//! warm-up. Tessera's change 10 (`patches/README.md`) was measured with it:
//!
//!     cargo run --release --manifest-path patches/burn-flex/Cargo.toml --example conv2d_bench
//!
//! `BATCH` changes the batch (64); `C_IN` and `C_OUT` time only the layers of those channels.

use burn_backend::ops::{ConvOptions, ModuleOps};
use burn_flex::Flex;
use common::{best_of, tensor};

mod common;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let threads = env("THREADS", 2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    let batch = env("BATCH", 64);
    // (c_in, c_out, input side, kernel, stride, padding, layers of this shape)
    let layers = [
        (3, 64, 32, 3, 1, 1, 1),
        (64, 64, 32, 3, 1, 1, 4),
        (64, 128, 32, 3, 2, 1, 1),
        (64, 128, 32, 1, 2, 0, 1),
        (128, 128, 16, 3, 1, 1, 3),
        (128, 256, 16, 3, 2, 1, 1),
        (128, 256, 16, 1, 2, 0, 1),
        (256, 256, 8, 3, 1, 1, 3),
        (256, 512, 8, 3, 2, 1, 1),
        (256, 512, 8, 1, 2, 0, 1),
        (512, 512, 4, 3, 1, 1, 3),
    ];
    println!("batch {batch}, {threads} threads; ms per op (GFLOP/s)");
    println!(
        "| layer | count | forward | input gradient | weight gradient |\n|---|---|---|---|---|"
    );
    let (mut total, mut flops) = ([0.0f64; 3], 0.0);
    for (c_in, c_out, side, k, stride, pad, count) in layers {
        if std::env::var("C_IN").is_ok_and(|only| only != c_in.to_string())
            || std::env::var("C_OUT").is_ok_and(|only| only != c_out.to_string())
        {
            continue;
        }
        let options = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
        let x = tensor(&[batch, c_in, side, side], 1);
        let w = tensor(&[c_out, c_in, k, k], 2);
        let out = Flex::conv2d(x.clone(), w.clone(), None, options.clone());
        let out_shape = out.layout().shape().to_vec();
        let dy = tensor(&out_shape, 3);
        let flop = 2.0 * (batch * c_out * out_shape[2] * out_shape[3] * c_in * k * k) as f64;
        let times = [
            best_of(3, || {
                drop(Flex::conv2d(x.clone(), w.clone(), None, options.clone()))
            }),
            best_of(3, || {
                drop(Flex::conv2d_x_backward(
                    x.clone(),
                    w.clone(),
                    dy.clone(),
                    options.clone(),
                ))
            }),
            best_of(3, || {
                drop(Flex::conv2d_weight_backward(
                    x.clone(),
                    w.clone(),
                    dy.clone(),
                    options.clone(),
                ))
            }),
        ];
        let cell = |t: f64| format!("{:.2} ({:.0})", t * 1e3, flop / t / 1e9);
        println!(
            "| {c_in} → {c_out}, {side} px, {k}x{k} stride {stride} | {count} | {} | {} | {} |",
            cell(times[0]),
            cell(times[1]),
            cell(times[2])
        );
        for (sum, t) in total.iter_mut().zip(times) {
            *sum += t * count as f64;
        }
        flops += flop * count as f64;
    }
    let all: f64 = total.iter().sum();
    println!(
        "step: forward {:.0} ms, input gradient {:.0} ms, weight gradient {:.0} ms, all {:.0} ms ({:.0} GFLOP/s)",
        total[0] * 1e3,
        total[1] * 1e3,
        total[2] * 1e3,
        all * 1e3,
        3.0 * flops / all / 1e9
    );
}
