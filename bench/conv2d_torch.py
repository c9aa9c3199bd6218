#!/usr/bin/env python3
"""PyTorch's twin of burn-flex's `examples/conv2d_bench.rs`: forward, input gradient and weight
gradient of each convolution of the CIFAR ResNet-18 (SimCLR's backbone, 64 views a step) on
THREADS (2) threads, best of 3 after a warm-up, in ms per op, and the step's totals (each
layer times its count). Run both in the same minutes to compare:

    cargo run --release --manifest-path patches/burn-flex/Cargo.toml --features x86-v4 \\
        --example conv2d_bench
    bench/.venv/bin/python bench/conv2d_torch.py
"""
import os
import time

import torch
import torch.nn.functional as F

THREADS = int(os.environ.get("THREADS", "2"))
BATCH = int(os.environ.get("BATCH", "64"))
# (c_in, c_out, input side, kernel, stride, padding, layers of this shape), as conv2d_bench.
LAYERS = [(3, 64, 32, 3, 1, 1, 1), (64, 64, 32, 3, 1, 1, 4), (64, 128, 32, 3, 2, 1, 1),
          (64, 128, 32, 1, 2, 0, 1), (128, 128, 16, 3, 1, 1, 3), (128, 256, 16, 3, 2, 1, 1),
          (128, 256, 16, 1, 2, 0, 1), (256, 256, 8, 3, 1, 1, 3), (256, 512, 8, 3, 2, 1, 1),
          (256, 512, 8, 1, 2, 0, 1), (512, 512, 4, 3, 1, 1, 3)]


def best_of(fn, runs=3):
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main():
    torch.set_num_threads(THREADS)
    print(f"batch {BATCH}, {THREADS} threads, torch {torch.__version__}; ms per op")
    print("| layer | count | forward | input gradient | weight gradient |\n|---|---|---|---|---|")
    total = [0.0, 0.0, 0.0]
    for c_in, c_out, side, k, stride, pad, count in LAYERS:
        x = torch.randn(BATCH, c_in, side, side)
        w = torch.randn(c_out, c_in, k, k)
        dy = torch.randn_like(F.conv2d(x, w, None, stride, pad))

        def backward(mask):
            return torch.ops.aten.convolution_backward(
                dy, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, mask)

        times = [best_of(lambda: F.conv2d(x, w, None, stride, pad)),
                 best_of(lambda: backward([True, False, False])),
                 best_of(lambda: backward([False, True, False]))]
        print(f"| {c_in} → {c_out}, {side} px, {k}x{k} stride {stride} | {count} | "
              + " | ".join(f"{t:.2f}" for t in times) + " |")
        total = [s + t * count for s, t in zip(total, times)]
    print(f"step: forward {total[0]:.0f} ms, input gradient {total[1]:.0f} ms, "
          f"weight gradient {total[2]:.0f} ms, all {sum(total):.0f} ms")


if __name__ == "__main__":
    main()
