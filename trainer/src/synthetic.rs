//! Synthetic batches: the recipe's batch shape and masks with noise pixels, no shards, no
//! decode. `tessera train --synthetic` uses them to measure the device alone (the upper
//! bound the real pipeline is compared with), and tests use them to train without data.
//!
//! Pixels come from one block of random bytes made at start and read at a rotating
//! offset, so a batch costs one memcpy on the uploader thread, not a random-number
//! generator pass. Masks are drawn by the pipeline's own [`MaskGenerator`] from a seeded
//! RNG, so they are exactly the kind of masks a real run gets.

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
    offset: usize,
    rng: ChaCha8Rng,
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
        let largest = views.iter().map(|v| v.pool.buffer_len()).max().unwrap_or(0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut noise = vec![0u8; largest + 4096];
        rng.fill_bytes(&mut noise);
        let state = resume.unwrap_or(PipelineState {
            seed,
            epoch: 0,
            rank: 0,
            world_size: 1,
            samples_consumed: 0,
        });
        // Masks continue where the stream left off: re-seed from the position.
        let rng = ChaCha8Rng::seed_from_u64(
            seed ^ state.samples_consumed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        SyntheticSource {
            views,
            batch_size,
            noise,
            offset: 0,
            rng,
            state,
        }
    }

    fn make(&mut self) -> Batch {
        let n = self.batch_size;
        let mut views = Vec::with_capacity(self.views.len());
        let mut masks = Vec::with_capacity(self.views.len());
        for view in &self.views {
            let mut data = view.pool.take();
            let len = data.len();
            self.offset = (self.offset + 1031) % 4096;
            data.copy_from_slice(&self.noise[self.offset..self.offset + len]);
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
                    g.generate(
                        &mut self.rng,
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
                .map(|i| format!("synthetic/{}", self.state.samples_consumed + i as u64))
                .collect(),
            state: self.state,
            augment: None,
        }
    }
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
}
