#!/usr/bin/env python3
"""Share of a training step's `perf` samples per kind of work (docs/PERFORMANCE.md).

    perf record -F 299 --call-graph dwarf,32768 -o perf.data tessera train ... --synthetic
    perf script -i perf.data > perf.txt
    bench/perf_groups.py perf.txt

Each sample is counted under the group of the nearest frame of its stack (leaf first, 40
frames at most) that matches one of GROUPS, else "other". Prints a markdown table.
"""
import collections
import re
import sys

GROUPS = [
    ("gemm (matmul: gemm's microkernels, packing, the batch loop)", r"gemm_|gemm::|matmul"),
    ("the kernel (idle threads yielding and being woken, page faults)",
     r"\[kernel|rayon_core::sleep|sched_yield|futex"),
    ("element-wise kernels (binary, unary, scalar, activations, broadcasts)",
     r"burn_flex::ops::(binary|unary|activation|float|vectorisable)"
     r"|burn_flex::parallel::(map|zip_map)|burn_flex::simd::portable|strided_rows"),
    ("convolution and pooling outside gemm (im2col, col2im, layouts)",
     r"burn_flex::ops::(conv|conv_common|conv_transpose|pool|unfold)"),
    ("reductions (sums, means, softmax)", r"burn_flex::ops::reduce|scatter_add_columns"),
    ("gather, scatter, slice, cat", r"gather_scatter|burn_flex::ops::(slice|cat|mask|repeat_dim|expand)"),
    ("copies (permutes, to_contiguous, memmove)", r"copy_contiguous|to_contiguous|memmove|memcpy"),
    ("allocation", r"malloc|_int_free|free\b|memset|alloc::"),
    ("autodiff graph bookkeeping", r"burn_autodiff"),
]


def group_of(frames):
    for frame in frames[:40]:
        for name, pattern in GROUPS:
            if re.search(pattern, frame):
                return name
    return "other"


def main(path):
    counts = collections.Counter()
    for sample in open(path, errors="replace").read().split("\n\n"):
        lines = sample.strip().split("\n")
        if len(lines) < 2:
            continue
        frames = [re.sub(r"^\s*[0-9a-f]+ ", "", line).strip() for line in lines[1:]]
        counts[group_of(frames)] += 1
    total = sum(counts.values())
    print("| what | share of samples |\n|---|---|")
    for name, n in counts.most_common():
        print(f"| {name} | {100 * n / total:.1f}% |")
    print(f"\n{total} samples", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
