//! Helpers shared by the benchmark examples.

use burn_backend::TensorData;
use burn_flex::FlexTensor;
use std::time::Instant;

/// A tensor of `dims` filled with pseudo-random values in [-1, 1) from `seed`.
pub fn tensor(dims: &[usize], seed: u64) -> FlexTensor {
    let n: usize = dims.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    FlexTensor::from_data(TensorData::new(values, dims.to_vec()))
}

/// Seconds of the fastest of `runs` runs of `f`, after one warm-up.
pub fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}
