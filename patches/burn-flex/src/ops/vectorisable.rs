//! f32 `exp` and exact GELU written so that the loops around them vectorise.
//!
//! `exp`, `gelu` and `gelu_backward` called libm's `expf` and `erff` once per element:
//! calls that no loop around them can vectorise (`erff` alone was about 6% of a one-thread
//! ViT training step, `expf` 2-3%: the attention softmax and the GELU backward). Here each
//! element is straight-line arithmetic (no calls, no branches, only selects), so the
//! element loops of `unary_op` and `binary_op` vectorise:
//!
//! - `exp`: `x = n ln 2 + r` with `n` rounded by adding `1.5 · 2^23`, `e^r` by the Cephes
//!   `expf` polynomial, `2^n` written into exponent bits (in two factors, so that results
//!   in the subnormal range round once). Relative error under 2^-23 above the subnormal range.
//! - erf is Abramowitz & Stegun 7.1.26 (absolute error at most 1.5e-7), the formula
//!   PyTorch's vectorised CPU kernels use for `erf` and for exact GELU. It is evaluated in
//!   its complementary form, `Φ(-|x|) = 0.5 · t·P(t) · e^(-x²/2)`, so the negative tail is
//!   not computed as `1 + erf` with its cancellation; the backward shares that one `exp`
//!   with the normal density.
//!
//! f64 keeps libm.

/// `1 / sqrt(2 pi)`, the normal density's constant.
const INV_SQRT_2PI: f32 = 0.398_942_28;

/// Abramowitz & Stegun 7.1.26: `erfc(z) ≈ t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^(-z²)`
/// with `t = 1 / (1 + p z)`, z >= 0.
const AS_P: f32 = 0.327_591_1;
const AS_A1: f32 = 0.254_829_592;
const AS_A2: f32 = -0.284_496_736;
const AS_A3: f32 = 1.421_413_741;
const AS_A4: f32 = -1.453_152_027;
const AS_A5: f32 = 1.061_405_429;

/// Above `ln(f32::MAX)`, `e^x` is infinite.
const EXP_HIGHEST: f32 = 88.722_84;
/// Below `ln(2^-150)`, `e^x` rounds to zero.
const EXP_LOWEST: f32 = -103.972_08;

/// `1.5 · 2^23`: adding it to a float of magnitude under `2^22` rounds it to an integer
/// that sits in the low bits of the sum's mantissa.
const ROUNDING_MAGIC: f32 = 12_582_912.0;

/// `ln 2` split so that `n · LN2_HI` is exact for the `n` that occur (|n| <= 150).
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `2^n` for `-126 <= n <= 127`, by its bits.
#[inline(always)]
fn pow2(n: i32) -> f32 {
    f32::from_bits((n.wrapping_add(127) as u32) << 23)
}

/// `e^x` in f32: a relative error under 2^-23 down to the smallest normal number, and
/// rounded once below it; `inf` above `ln(f32::MAX)`, 0 below `ln(2^-150)`, NaN for NaN.
#[inline(always)]
pub(crate) fn exp(input: f32) -> f32 {
    // Selects, not `min`/`max`: NaN stays NaN (and poisons the polynomial).
    let x = if input < EXP_LOWEST {
        EXP_LOWEST
    } else {
        input
    };
    let x = if x > EXP_HIGHEST { EXP_HIGHEST } else { x };
    // x = n ln 2 + r, |r| <= ln 2 / 2, n = round(x / ln 2) in [-150, 128].
    let shifted = x * core::f32::consts::LOG2_E + ROUNDING_MAGIC;
    let n = shifted - ROUNDING_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let exp_r = p * r * r + r + 1.0;
    // n is the difference of the two sums' bit patterns; 2^n as two normal factors.
    let n = shifted.to_bits().wrapping_sub(ROUNDING_MAGIC.to_bits()) as i32;
    let half = n >> 1;
    let exp_x = exp_r * pow2(half) * pow2(n.wrapping_sub(half));
    if input > EXP_HIGHEST {
        f32::INFINITY
    } else if input < EXP_LOWEST {
        0.0
    } else {
        exp_x
    }
}

/// The standard normal CDF `Φ(x)` and density `φ(x)`.
#[inline(always)]
fn normal_cdf_and_pdf(x: f32) -> (f32, f32) {
    let z = x.abs() * core::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + AS_P * z);
    let poly = ((((AS_A5 * t + AS_A4) * t + AS_A3) * t + AS_A2) * t + AS_A1) * t;
    let gauss = exp(-0.5 * x * x);
    // Φ(-|x|) = erfc(|x| / sqrt 2) / 2
    let lower_tail = 0.5 * poly * gauss;
    let cdf = if x < 0.0 {
        lower_tail
    } else {
        1.0 - lower_tail
    };
    (cdf, INV_SQRT_2PI * gauss)
}

/// `gelu(x) = x Φ(x)`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    x * normal_cdf_and_pdf(x).0
}

/// The gradient of `gelu` at `x` times the incoming gradient: `g (Φ(x) + x φ(x))`.
#[inline(always)]
pub(crate) fn gelu_backward(x: f32, grad: f32) -> f32 {
    let (cdf, pdf) = normal_cdf_and_pdf(x);
    grad * (cdf + x * pdf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Φ(x)` in f64 from libm's erfc (accurate in both tails).
    fn cdf_f64(x: f64) -> f64 {
        0.5 * libm::erfc(-x / core::f64::consts::SQRT_2)
    }

    fn pdf_f64(x: f64) -> f64 {
        (-0.5 * x * x).exp() / (2.0 * core::f64::consts::PI).sqrt()
    }

    /// Every 1/1024 from -16 to 16, then a few points beyond.
    fn grid() -> impl Iterator<Item = f32> {
        (-16 * 1024..=16 * 1024).map(|i| i as f32 / 1024.0).chain([
            -1e4,
            -200.0,
            -40.0,
            40.0,
            200.0,
            1e4,
            f32::MIN_POSITIVE,
            -1e-30,
        ])
    }

    #[test]
    fn exp_is_within_f32_epsilon_over_the_normal_range_and_rounds_subnormals_once() {
        let mut worst = 0.0_f64;
        for i in -104 * 2048..=89 * 2048 {
            let x = i as f32 / 2048.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            if want > f32::MAX as f64 {
                assert_eq!(got, f64::INFINITY, "e^{x}");
            } else if want >= f32::MIN_POSITIVE as f64 {
                worst = worst.max(((got - want) / want).abs());
            } else {
                // Subnormal: within one subnormal step (2^-149) of the exact value.
                assert!(
                    (got - want).abs() <= 1.5e-45,
                    "e^{x} = {got:e}, want {want:e}"
                );
            }
        }
        assert!(
            worst < f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1e30), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(88.8), f32::INFINITY);
        assert!(exp(88.72).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn cdf_is_within_abramowitz_stegun_error_in_absolute_terms() {
        for x in grid() {
            let (cdf, pdf) = normal_cdf_and_pdf(x);
            let want = cdf_f64(x as f64);
            // A&S bounds erf by 1.5e-7, Φ by half of that; evaluating t and the polynomial
            // in f32 adds up to about as much again (worst on this grid: 2.4e-7).
            assert!(
                (cdf as f64 - want).abs() < 2.5e-7,
                "Φ({x}) = {cdf}, want {want}"
            );
            let want_pdf = pdf_f64(x as f64);
            // A few ulp, plus the rounding of -x²/2 in f32 (relative error |x²/2| ulp).
            let ulps = 4.0 + 0.5 * (x as f64).powi(2);
            assert!(
                (pdf as f64 - want_pdf).abs() <= ulps * f32::EPSILON as f64 * want_pdf + 1e-37,
                "φ({x}) = {pdf}, want {want_pdf}"
            );
        }
    }

    /// Within 2.5e-7 · max(1, |x|) of the exact values (worst on this grid: 1.5e-7 for gelu,
    /// 1.9e-7 for its gradient). PyTorch 2.15's CPU `gelu` is off by up to 3.1e-7 on it.
    #[test]
    fn gelu_and_its_gradient_match_the_exact_formula() {
        for x in grid() {
            let xd = x as f64;
            let scale = xd.abs().max(1.0);
            let want = xd * cdf_f64(xd);
            let got = gelu(x) as f64;
            assert!(
                (got - want).abs() < 2.5e-7 * scale,
                "gelu({x}) = {got}, want {want}"
            );
            let want_grad = 0.75 * (cdf_f64(xd) + xd * pdf_f64(xd));
            let got_grad = gelu_backward(x, 0.75) as f64;
            assert!(
                (got_grad - want_grad).abs() < 2.5e-7 * scale,
                "gelu'({x}) * 0.75 = {got_grad}, want {want_grad}"
            );
        }
    }

    #[test]
    fn gelu_keeps_signs_and_special_values() {
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu_backward(0.0, 1.0), 0.5);
        assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
        assert_eq!(gelu(1e30), 1e30);
        assert!(gelu(-3.0) < 0.0 && gelu(-3.0) > -0.005);
        // Far in the lower tail the output is a (signed) zero, as with libm.
        assert_eq!(gelu(-1e30), 0.0);
        assert_eq!(gelu_backward(-1e30, 1.0), 0.0);
        assert!(gelu(f32::NAN).is_nan());
        assert!(gelu_backward(f32::NAN, 1.0).is_nan());
        assert!(gelu_backward(1.0, f32::NAN).is_nan());
    }

    /// `Flex::gelu` and `Flex::gelu_backward` give exactly the scalar functions above on
    /// every path of `unary_op`/`binary_op`: in place, shared (kept for the backward, so
    /// allocating), transposed and broadcast.
    #[test]
    fn the_ops_use_these_functions_on_every_path() {
        use alloc::vec::Vec;
        use burn_backend::TensorData;
        use burn_backend::ops::{ActivationOps, FloatTensorOps};

        use crate::{Flex, FlexTensor};

        let values: Vec<f32> = (0..6 * 35).map(|i| (i as f32 - 100.0) / 17.0).collect();
        let tensor = || FlexTensor::from_data(TensorData::new(values.clone(), [6, 35]));
        let read = |t: FlexTensor| -> Vec<f32> { t.into_data().to_vec().unwrap() };
        let want: Vec<f32> = values.iter().map(|&x| gelu(x)).collect();

        assert_eq!(read(Flex::gelu(tensor())), want, "in place");
        let shared = tensor();
        let kept = shared.clone();
        assert_eq!(read(Flex::gelu(shared)), want, "allocating");
        drop(kept);
        let transposed = Flex::float_swap_dims(tensor(), 0, 1);
        let want_t: Vec<f32> = (0..35)
            .flat_map(|j| (0..6).map(move |i| i * 35 + j))
            .map(|k| gelu(values[k]))
            .collect();
        assert_eq!(read(Flex::gelu(transposed)), want_t, "transposed");

        let grads: Vec<f32> = (0..6 * 35).map(|i| (i % 7) as f32 - 3.0).collect();
        let grad = FlexTensor::from_data(TensorData::new(grads.clone(), [6, 35]));
        let want_g: Vec<f32> = values
            .iter()
            .zip(&grads)
            .map(|(&x, &g)| gelu_backward(x, g))
            .collect();
        assert_eq!(
            read(Flex::gelu_backward(tensor(), grad)),
            want_g,
            "backward"
        );
        let row = FlexTensor::from_data(TensorData::new(grads[..35].to_vec(), [1, 35]));
        let want_b: Vec<f32> = values
            .iter()
            .enumerate()
            .map(|(k, &x)| gelu_backward(x, grads[k % 35]))
            .collect();
        assert_eq!(
            read(Flex::gelu_backward(tensor(), row)),
            want_b,
            "broadcast gradient"
        );
    }
}
