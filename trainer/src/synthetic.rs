//! Synthetic batches: the recipe's batch shape and masks with noise pixels, no shards, no
//! decode. `tessera train --synthetic` uses them to measure the device alone (the upper
//! bound the real pipeline is compared with), and tests use them to train without data.
//!
//! Pixels come from one block of random bytes made at start, each sample read at an offset
//! given by its position in the stream, so a sample costs one memcpy on the uploader
//! thread, not a random-number generator pass. Masks are drawn by the pipeline's own
//! [`MaskGenerator`] from an RNG seeded by the sample's position, so they are exactly the
//! kind of masks a real run gets.
//!
//! Sample `i` of the stream is a function of `(seed, i)` alone. In a data-parallel run the
//! global batch of step `k` is samples `k·W·B .. (k+1)·W·B`, and rank `r` makes the `r`-th
//! slice of it: `W` ranks with batch `B` see exactly the batches one process with batch
//! `W·B` sees (what the data-parallel tests compare).

use std::convert::Infallible;
use std::sync::Arc;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_pipeline::batch::{MaskBatch, ViewBatch};
use tessera_pipeline::masks::MaskGenerator;
use tessera_pipeline::pool::{BufferHook, BufferPool};
use tessera_pipeline::{Batch, PipelineState, Recipe};

use crate::feeder::BatchSource;

/// Endless batches shaped like a recipe's.
#[derive(Debug)]
pub struct SyntheticSource {
    views: Vec<SyntheticView>,
    batch_size: usize,
    noise: Vec<u8>,
    seed: u64,
    state: PipelineState,
}

#[derive(Debug)]
struct SyntheticView {
    side: usize,
    pool: BufferPool,
    mask: Option<MaskGenerator>,
}

impl SyntheticSource {
    /// Batches of `recipe.data.batch_size` with every view of `recipe` (masks included),
    /// continuing from `resume` (only the sample count matters), seeded by `seed`. Its
    /// buffers are prepared by `hook` like the loader's (page-locked on CUDA).
    pub fn new(
        recipe: &Recipe,
        seed: u64,
        resume: Option<PipelineState>,
        hook: Option<Arc<dyn BufferHook>>,
    ) -> Self {
        Self::for_rank(recipe, seed, resume, hook, 0, 1)
    }

    /// [`SyntheticSource::new`] for rank `rank` of `world_size`: this rank's slice of each
    /// global batch.
    pub fn for_rank(
        recipe: &Recipe,
        seed: u64,
        resume: Option<PipelineState>,
        hook: Option<Arc<dyn BufferHook>>,
        rank: u32,
        world_size: u32,
    ) -> Self {
        let batch_size = recipe.data.batch_size;
        let views: Vec<SyntheticView> = recipe
            .view_instances()
            .iter()
            .map(|instance| {
                let spec = &recipe.views[instance.spec];
                let side = spec.size as usize;
                SyntheticView {
                    side,
                    pool: BufferPool::with_hook(4, batch_size * side * side * 3, hook.clone()),
                    mask: spec.mask.as_ref().map(|m| MaskGenerator::new(m, spec.size)),
                }
            })
            .collect();
        let largest = views.iter().map(|v| v.side * v.side * 3).max().unwrap_or(0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut noise = vec![0u8; largest + NOISE_OFFSETS];
        rng.fill_bytes(&mut noise);
        let state = resume.unwrap_or(PipelineState {
            seed,
            epoch: 0,
            rank,
            world_size: world_size.max(1),
            samples_consumed: 0,
        });
        SyntheticSource {
            views,
            batch_size,
            noise,
            seed,
            state,
        }
    }

    /// Position in the whole stream (all ranks) of this rank's next batch's first sample.
    fn global_start(&self) -> u64 {
        let b = self.batch_size as u64;
        let world = u64::from(self.state.world_size.max(1));
        let batch = self.state.samples_consumed / b.max(1);
        (batch * world + u64::from(self.state.rank)) * b
    }

    fn make(&mut self) -> Batch {
        let n = self.batch_size;
        let first = self.global_start();
        let mut views = Vec::with_capacity(self.views.len());
        let mut masks = Vec::with_capacity(self.views.len());
        for (v, view) in self.views.iter().enumerate() {
            let mut data = view.pool.take();
            let per = view.side * view.side * 3;
            for (s, sample) in data.chunks_exact_mut(per).enumerate() {
                let at =
                    (mix(self.seed, first + s as u64, v as u64) % NOISE_OFFSETS as u64) as usize;
                sample.copy_from_slice(&self.noise[at..at + per]);
            }
            views.push(ViewBatch {
                data,
                len: n,
                height: view.side,
                width: view.side,
            });
            masks.push(view.mask.as_ref().map(|g| {
                let (l, k) = (g.num_patches(), g.num_keep());
                let mut m = MaskBatch {
                    len: n,
                    num_patches: l,
                    mask: vec![0; n * l],
                    ids_keep: vec![0; n * k],
                    ids_restore: vec![0; n * l],
                    num_keep: k,
                };
                for s in 0..n {
                    let mut rng =
                        ChaCha8Rng::seed_from_u64(mix(self.seed, first + s as u64, v as u64));
                    g.generate(
                        &mut rng,
                        &mut m.mask[s * l..(s + 1) * l],
                        &mut m.ids_keep[s * k..(s + 1) * k],
                        &mut m.ids_restore[s * l..(s + 1) * l],
                    );
                }
                m
            }));
        }
        self.state.samples_consumed += n as u64;
        Batch {
            views,
            masks,
            labels: vec![-1; n],
            keys: (0..n)
                .map(|i| format!("synthetic/{}", first + i as u64))
                .collect(),
            state: self.state,
            augment: None,
        }
    }
}

/// Distinct pixel offsets into the noise block.
const NOISE_OFFSETS: usize = 4096;

/// A 64-bit hash of (seed, sample position, view): SplitMix64's finaliser.
fn mix(seed: u64, position: u64, view: u64) -> u64 {
    let mut z = seed
        ^ position.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ view.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl BatchSource for SyntheticSource {
    type Error = Infallible;

    fn next_batch(&mut self) -> Option<Result<Batch, Infallible>> {
        Some(Ok(self.make()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_have_the_recipe_shape_and_valid_masks() {
        let recipe = Recipe::load("mae_vit_tiny_cifar").unwrap();
        let mut source = SyntheticSource::new(&recipe, 3, None, None);
        let batch = source.next_batch().unwrap().unwrap();
        let n = recipe.data.batch_size;
        assert_eq!((batch.views[0].len, batch.views[0].height), (n, 32));
        let m = batch.masks[0].as_ref().unwrap();
        assert_eq!((m.num_patches, m.num_keep), (64, 16));
        for s in 0..n {
            let masked: usize = m.mask[s * 64..(s + 1) * 64]
                .iter()
                .map(|&b| b as usize)
                .sum();
            assert_eq!(masked, 48);
        }
        assert_eq!(batch.state.samples_consumed, n as u64);
    }

    #[test]
    fn ranks_make_slices_of_the_global_batch() {
        let mut recipe = Recipe::load("mae_vit_tiny_cifar").unwrap();
        recipe.data.batch_size = 4;
        let mut whole = SyntheticSource::new(&recipe, 5, None, None);
        recipe.data.batch_size = 2;
        let mut ranks: Vec<_> = (0..2)
            .map(|r| SyntheticSource::for_rank(&recipe, 5, None, None, r, 2))
            .collect();
        for _ in 0..3 {
            let w = whole.next_batch().unwrap().unwrap();
            let parts: Vec<Batch> = ranks
                .iter_mut()
                .map(|s| s.next_batch().unwrap().unwrap())
                .collect();
            let joined: Vec<u8> = parts
                .iter()
                .flat_map(|b| b.views[0].data.to_vec())
                .collect();
            assert_eq!(w.views[0].data.to_vec(), joined);
            let masks: Vec<u8> = parts
                .iter()
                .flat_map(|b| b.masks[0].as_ref().unwrap().mask.clone())
                .collect();
            assert_eq!(w.masks[0].as_ref().unwrap().mask, masks);
            let keys: Vec<&str> = parts.iter().flat_map(|b| b.keys.iter()).collect();
            assert_eq!(w.keys.iter().collect::<Vec<_>>(), keys);
        }
    }
}
