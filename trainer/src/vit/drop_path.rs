//! Stochastic depth (Huang et al. 2016; timm `DropPath`), with draws a resumed run repeats.
//!
//! timm drops each block's two residual branches (attention, MLP) per sample: with
//! `keep_prob = 1 - rate_i` a branch is kept with that probability and then divided by
//! `keep_prob`, and `rate_i` rises linearly over the blocks, `linspace(0, drop_path_rate,
//! depth)`. burn's device RNG is global state that no checkpoint holds, so the draws are made
//! here on the host instead: uniform numbers from a ChaCha8 stream keyed by the run's seed,
//! the optimiser step and a per-call stream index (micro-batch, crop group), so that the same
//! `(seed, step, stream)` always gives the same draws and `--resume` stays exact. A draw
//! `u < keep_prob` keeps the branch. Only the keep decisions are uploaded, as `[n, 1, 1]`
//! scales, one per branch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Per-sample uniform draws for every residual branch of a ViT, for one forward pass.
///
/// # Shapes
/// `depth` blocks x 2 branches (attention, MLP) x `batch` samples.
#[derive(Debug, Clone, PartialEq)]
pub struct DropPath {
    /// Uniforms in `[0, 1)`, row-major `[depth, 2, batch]`.
    uniforms: Vec<f32>,
    depth: usize,
    batch: usize,
}

/// Domain tag mixed into the key, so these streams differ from any other use of the seed.
const DOMAIN: u64 = u64::from_le_bytes(*b"droppath");

impl DropPath {
    /// The draws of `(seed, step, stream)` for a ViT of `depth` blocks and a batch of `batch`
    /// images. `stream` tells apart the forward passes of one step (micro-batch, crop group,
    /// network).
    pub fn draw(seed: u64, step: u64, stream: u64, depth: usize, batch: usize) -> Self {
        let mut key = [0u8; 32];
        for (i, word) in [seed, step, stream, DOMAIN].into_iter().enumerate() {
            key[i * 8..(i + 1) * 8].copy_from_slice(&word.to_le_bytes());
        }
        let mut rng = ChaCha8Rng::from_seed(key);
        let uniforms = (0..depth * 2 * batch)
            .map(|_| rng.random::<f32>())
            .collect();
        Self {
            uniforms,
            depth,
            batch,
        }
    }

    /// Blocks the draws cover.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Samples the draws cover.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// timm's drop rate of block `block` of `depth`: `linspace(0, rate, depth)[block]`.
    pub fn block_rate(rate: f64, depth: usize, block: usize) -> f64 {
        if depth <= 1 {
            0.0
        } else {
            rate * block as f64 / (depth - 1) as f64
        }
    }

    /// The per-sample scales of one branch (`0` = attention, `1` = MLP) of `block` at drop
    /// rate `rate`: `1 / keep_prob` where the draw is below `keep_prob`, else 0; all ones
    /// when `rate` is 0 (timm returns the branch unchanged).
    pub fn scales(&self, block: usize, branch: usize, rate: f64) -> Vec<f32> {
        if rate <= 0.0 {
            return vec![1.0; self.batch];
        }
        let keep = 1.0 - rate;
        let start = (block * 2 + branch) * self.batch;
        self.uniforms[start..start + self.batch]
            .iter()
            .map(|&u| {
                if f64::from(u) < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect()
    }
}
