//! Times `linear` and its two gradients per layer shape of `mae_vit_tiny_cifar` (batch 64),
//! then attention's batched products, on rayon's pool of `THREADS` (2) threads; best of 5
//! after a warm-up, each of `REPS` (20) calls. `LAYER` (e.g. "enc fc1") times one layer.
//! Tessera's change 14 (`patches/README.md`) was measured with it, against PyTorch's
//! `F.linear`, `mm` and `bmm` on the same shapes and threads:
//!
//!     cargo run --release --manifest-path patches/burn-flex/Cargo.toml --features x86-v4 \
//!         --example linear_bench

use burn_backend::ops::ModuleOps;
use burn_flex::Flex;
use common::{best_of, tensor};

mod common;

fn main() {
    let threads: usize = std::env::var("THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    let layers = [
        ("patch_embed", 4096, 48, 192, 1),
        ("enc qkv", 1088, 192, 576, 6),
        ("enc proj", 1088, 192, 192, 6),
        ("enc fc1", 1088, 192, 768, 6),
        ("enc fc2", 1088, 768, 192, 6),
        ("dec embed", 1088, 192, 128, 1),
        ("dec qkv", 4160, 128, 384, 2),
        ("dec proj", 4160, 128, 128, 2),
        ("dec fc1", 4160, 128, 512, 2),
        ("dec fc2", 4160, 512, 128, 2),
        ("dec pred", 4160, 128, 48, 1),
    ];
    let mut total = [0.0f64; 3];
    for (name, m, d_in, d_out, count) in layers {
        let x = tensor(&[m, d_in], 1);
        let w = tensor(&[d_in, d_out], 2);
        let b = tensor(&[d_out], 3);
        let g = tensor(&[m, d_out], 4);
        if std::env::var("LAYER").is_ok_and(|only| only != name) {
            continue;
        }
        let reps = std::env::var("REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        let f = best_of(5, || {
            for _ in 0..reps {
                drop(Flex::linear(
                    x.clone(),
                    w.clone(),
                    if std::env::var("NOBIAS").is_ok() {
                        None
                    } else {
                        Some(b.clone())
                    },
                ));
            }
        }) / reps as f64;
        let dx = best_of(5, || {
            for _ in 0..reps {
                drop(Flex::linear_x_backward(w.clone(), g.clone()));
            }
        }) / reps as f64;
        let dw = best_of(5, || {
            for _ in 0..reps {
                drop(Flex::linear_weight_backward(x.clone(), g.clone()));
            }
        }) / reps as f64;
        let gf = 2.0 * (m * d_in * d_out) as f64 / 1e9;
        println!(
            "{name:12} x{count}: fwd {:.3} ms ({:.0} GF/s) dx {:.3} ms ({:.0}) dw {:.3} ms ({:.0})",
            f * 1e3,
            gf / f,
            dx * 1e3,
            gf / dx,
            dw * 1e3,
            gf / dw
        );
        total[0] += f * count as f64;
        total[1] += dx * count as f64;
        total[2] += dw * count as f64;
    }
    // Attention's batched products: (batch, m, k, n, count per step incl. backward)
    let bmm = [
        ("enc q.kT", 192, 17, 64, 17, 1),
        ("enc a.v", 192, 17, 17, 64, 1),
        ("dec q.kT", 256, 65, 32, 65, 1),
        ("dec a.v", 256, 65, 65, 32, 1),
    ];
    for (name, b, m, k, n, _) in bmm {
        use burn_backend::ops::FloatTensorOps;
        let a = tensor(&[b, m, k], 5);
        let c = tensor(&[b, k, n], 6);
        let t = best_of(5, || {
            for _ in 0..20 {
                drop(Flex::float_matmul(a.clone(), c.clone()));
            }
        }) / 20.0;
        println!(
            "{name:10} [{b}, {m}x{k}] x [{k}x{n}]: {:.3} ms ({:.0} GF/s)",
            t * 1e3,
            2.0 * (b * m * k * n) as f64 / t / 1e9
        );
    }
    println!(
        "total ms: fwd {:.2} dx {:.2} dw {:.2} sum {:.2}",
        total[0] * 1e3,
        total[1] * 1e3,
        total[2] * 1e3,
        (total[0] + total[1] + total[2]) * 1e3
    );
}
