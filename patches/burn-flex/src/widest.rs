//! Element loops compiled for the widest vector instructions the running CPU has.
//!
//! The element-wise kernels (binary, scalar and unary ops, activations and their backward,
//! `exp`) are plain loops that LLVM vectorises, but only for the target the crate is
//! compiled for: x86-64's baseline is SSE2, four f32 lanes, where nearly every x86-64 CPU
//! in use has AVX2 (eight lanes) and servers AVX-512 (sixteen). gemm and macerator choose
//! their instructions at run time; these loops did not. [`run`] calls a kernel in a copy
//! compiled with AVX-512 or with AVX2 and FMA when the CPU has them (std detects the
//! features once and caches them), else in the baseline copy. A kernel is compiled into
//! those copies only where it is inlined, so the kernels handed to [`run`] are
//! `#[inline(always)]` closures, and so are the loops they call.
//!
//! Results are bitwise the same in every copy: LLVM vectorises only independent elements,
//! and Rust lets it neither reorder nor contract float operations (`a * b + c` never
//! becomes an FMA unless written as `mul_add`, which is correctly rounded either way), so
//! each element goes through the same IEEE operations whatever the vector width.

/// `kernel()`, compiled for the widest vector instructions this CPU has.
#[inline(always)]
pub(crate) fn run<R>(kernel: impl FnOnce() -> R) -> R {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (and with it AVX2 and FMA), all that
            // `x86::avx512` is compiled for.
            return unsafe { x86::avx512(kernel) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, all that `x86::avx2` is compiled for.
            return unsafe { x86::avx2(kernel) };
        }
    }
    kernel()
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod x86 {
    /// `kernel()` inlined into code that may use AVX-512F (which implies AVX2 and FMA).
    #[target_feature(enable = "avx512f")]
    pub(super) fn avx512<R>(kernel: impl FnOnce() -> R) -> R {
        kernel()
    }

    /// `kernel()` inlined into code that may use AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn avx2<R>(kernel: impl FnOnce() -> R) -> R {
        kernel()
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use crate::ops::vectorisable::{exp, gelu, gelu_backward};

    /// Inputs over every range the kernels treat differently: tails, zero, subnormals,
    /// infinities, NaN.
    fn inputs() -> Vec<f32> {
        let mut values: Vec<f32> = (-40_000..=40_000).map(|i| i as f32 / 997.0).collect();
        values.extend([
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            f32::MIN_POSITIVE,
            1e30,
            -1e30,
            88.8,
            -104.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        values
    }

    /// The element kernels whose loops [`super::run`] recompiles, as one loop each.
    #[inline(always)]
    fn kernels(x: &[f32], y: &[f32]) -> [Vec<u32>; 5] {
        [
            x.iter().map(|&a| gelu(a).to_bits()).collect(),
            x.iter()
                .zip(y)
                .map(|(&a, &g)| gelu_backward(a, g).to_bits())
                .collect(),
            x.iter().map(|&a| exp(a).to_bits()).collect(),
            x.iter()
                .zip(y)
                .map(|(&a, &b)| (a * b + a / b).to_bits())
                .collect(),
            x.iter()
                .zip(y)
                .map(|(&a, &b)| (a.abs().sqrt() - b).max(a).to_bits())
                .collect(),
        ]
    }

    #[test]
    fn every_copy_gives_the_same_bits_as_the_baseline() {
        let x = inputs();
        let y: Vec<f32> = x.iter().rev().map(|v| v * 0.37 - 1.5).collect();
        let baseline = kernels(&x, &y);
        assert_eq!(
            super::run(
                #[inline(always)]
                || kernels(&x, &y)
            ),
            baseline,
            "widest copy"
        );
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                let avx512 = unsafe {
                    super::x86::avx512(
                        #[inline(always)]
                        || kernels(&x, &y),
                    )
                };
                assert_eq!(avx512, baseline, "AVX-512 copy");
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA.
                let avx2 = unsafe {
                    super::x86::avx2(
                        #[inline(always)]
                        || kernels(&x, &y),
                    )
                };
                assert_eq!(avx2, baseline, "AVX2 copy");
            }
        }
    }
}
