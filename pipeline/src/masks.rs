//! Patch masks for masked-image modelling, generated on CPU per sample.
//!
//! A [`MaskSpec`] (from a view's `[views.mask]` in the recipe) compiles, with the view's
//! size, into a [`MaskGenerator`] that writes one sample's mask into caller-provided
//! slices of a [`crate::batch::MaskBatch`]. Polarity everywhere: **1 = masked** (hidden
//! from the encoder / to be predicted), 0 = visible. Patches are numbered row-major on the
//! patch grid of the view.
//!
//! Three kinds, each following its paper's official code:
//! - [`MaskSpec::Random`]: MAE's per-sample random masking (`models_mae.py`,
//!   `random_masking`): exactly `len_keep = int(L * (1 - ratio))` visible patches.
//! - [`MaskSpec::Block`]: BEiT's blockwise `MaskingGenerator` (`beit/masking_generator.py`)
//!   as iBOT uses it (`ibot/loader.py`, `ImageFolderMask`): rectangles of random area and
//!   aspect added until the target count is reached.
//! - [`MaskSpec::Simmim`]: SimMIM's `MaskGenerator` (`simmim/data/data_simmim.py`): a random
//!   set of coarse `mask_patch_size` cells, upsampled to the model's patch grid.
//!
//! Generation allocates nothing: it writes into the slices it is given.

use rand::Rng;
use serde::{Deserialize, Deserializer};

use crate::recipe::check_range;

/// A mask ratio, or a list of them of which one is picked uniformly per sample (iBOT's
/// `--pred_ratio 0 0.3`).
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(f64),
        Many(Vec<f64>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(x) => vec![x],
        OneOrMany::Many(v) => v,
    })
}

fn default_aspect() -> [f64; 2] {
    [0.3, 1.0 / 0.3]
}
fn default_max_attempts() -> u32 {
    10
}

/// How a view is masked; the `kind` key selects the variant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MaskSpec {
    /// MAE random masking.
    Random {
        /// Fraction of patches masked, in [0, 1). MAE: 0.75.
        ratio: f64,
        /// Patch side in pixels; the view size must be a multiple. MAE ViT-B: 16.
        patch_size: u32,
    },
    /// BEiT/iBOT blockwise masking.
    Block {
        /// Target fraction of patches masked, in [0, 1), or a list to pick from per sample
        /// (iBOT ViT-B: `[0.0, 0.3]`, so half the images are unmasked).
        #[serde(deserialize_with = "one_or_many")]
        ratio: Vec<f64>,
        /// Half-width of the uniform jitter of each ratio (iBOT `pred_ratio_var`), same
        /// length as `ratio`. Default 0 (BEiT: fixed count).
        #[serde(default, deserialize_with = "one_or_many")]
        ratio_var: Vec<f64>,
        /// Patch side in pixels; the view size must be a multiple.
        patch_size: u32,
        /// Smallest block area, in patches. Default: iBOT's `(min(H, W) // 3) ** 2` (16 on
        /// a 14x14 grid, BEiT's `min_num_patches`).
        #[serde(default)]
        min_num_patches: Option<u32>,
        /// Range of block aspect ratios (height / width), sampled in log space. Default
        /// `[0.3, 1/0.3]` (BEiT, iBOT).
        #[serde(default = "default_aspect")]
        aspect: [f64; 2],
        /// Tries to place one block before giving up. Default 10 (BEiT).
        #[serde(default = "default_max_attempts")]
        max_attempts: u32,
    },
    /// SimMIM coarse random masking.
    Simmim {
        /// Fraction of coarse cells masked (rounded up). SimMIM: 0.6.
        ratio: f64,
        /// Side of a masked cell in pixels. SimMIM: 32.
        mask_patch_size: u32,
        /// The model's patch side in pixels (the granularity of the mask output):
        /// 4 for Swin, 16 for ViT.
        model_patch_size: u32,
    },
}

impl MaskSpec {
    /// Check ranges and that the grids divide `view_size`; `Err((field, problem))`.
    pub(crate) fn validate(&self, view_size: u32) -> Result<(), (&'static str, String)> {
        let fraction = |field: &'static str, r: f64| {
            if (0.0..1.0).contains(&r) {
                Ok(())
            } else {
                Err((field, format!("{r} must be in [0, 1)")))
            }
        };
        let divides = |field: &'static str, patch: u32| {
            if patch == 0 || !view_size.is_multiple_of(patch) {
                Err((
                    field,
                    format!("{patch} must be a positive divisor of the view size {view_size}"),
                ))
            } else {
                Ok(())
            }
        };
        match self {
            MaskSpec::Random { ratio, patch_size } => {
                fraction("ratio", *ratio)?;
                divides("patch_size", *patch_size)
            }
            MaskSpec::Block {
                ratio,
                ratio_var,
                patch_size,
                aspect,
                max_attempts,
                ..
            } => {
                divides("patch_size", *patch_size)?;
                if ratio.is_empty() {
                    return Err(("ratio", "give a ratio or a non-empty list".to_string()));
                }
                if !ratio_var.is_empty() && ratio_var.len() != ratio.len() {
                    return Err((
                        "ratio_var",
                        format!(
                            "has {} entries but ratio has {}; give one per ratio",
                            ratio_var.len(),
                            ratio.len()
                        ),
                    ));
                }
                for (i, r) in ratio.iter().enumerate() {
                    fraction("ratio", *r)?;
                    let var = ratio_var.get(i).copied().unwrap_or(0.0);
                    if var < 0.0 || var > *r || r + var >= 1.0 {
                        return Err((
                            "ratio_var",
                            format!(
                                "{var} must satisfy 0 <= var <= ratio ({r}) and ratio + var < 1"
                            ),
                        ));
                    }
                }
                check_range(aspect[0], aspect[1]).map_err(|p| ("aspect", p))?;
                if aspect[0] <= 0.0 {
                    return Err((
                        "aspect",
                        format!("lower bound {} must be positive", aspect[0]),
                    ));
                }
                if *max_attempts == 0 {
                    return Err(("max_attempts", "must be at least 1".to_string()));
                }
                Ok(())
            }
            MaskSpec::Simmim {
                ratio,
                mask_patch_size,
                model_patch_size,
            } => {
                fraction("ratio", *ratio)?;
                divides("mask_patch_size", *mask_patch_size)?;
                divides("model_patch_size", *model_patch_size)?;
                if mask_patch_size % model_patch_size != 0 {
                    return Err((
                        "mask_patch_size",
                        format!(
                            "{mask_patch_size} must be a multiple of model_patch_size {model_patch_size}"
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A [`MaskSpec`] bound to a view size: knows its grid and writes masks.
#[derive(Debug, Clone)]
pub struct MaskGenerator {
    spec: MaskSpec,
    /// Patches per side of the output grid.
    side: usize,
}

impl MaskGenerator {
    /// Bind `spec` to a view of `view_size` pixels (validated by the recipe).
    pub fn new(spec: &MaskSpec, view_size: u32) -> Self {
        let patch = match spec {
            MaskSpec::Random { patch_size, .. } | MaskSpec::Block { patch_size, .. } => *patch_size,
            MaskSpec::Simmim {
                model_patch_size, ..
            } => *model_patch_size,
        };
        MaskGenerator {
            spec: spec.clone(),
            side: (view_size / patch.max(1)) as usize,
        }
    }

    /// Patches per sample (`side * side`): the length of one sample's `mask`.
    pub fn num_patches(&self) -> usize {
        self.side * self.side
    }

    /// Patches per side of the (square) patch grid.
    pub fn grid_side(&self) -> usize {
        self.side
    }

    /// Visible patches per sample for MAE masks (`int(L * (1 - ratio))`, as MAE's
    /// `len_keep`); 0 for the other kinds, which have no keep/restore indices.
    pub fn num_keep(&self) -> usize {
        match self.spec {
            MaskSpec::Random { ratio, .. } => (self.num_patches() as f64 * (1.0 - ratio)) as usize,
            _ => 0,
        }
    }

    /// Write one sample's mask.
    ///
    /// `mask` has [`num_patches`](Self::num_patches) entries (1 = masked). For MAE masks
    /// `ids_keep` has [`num_keep`](Self::num_keep) entries: the visible patches in
    /// **ascending** order; `ids_restore` has `num_patches`: for each patch its position in
    /// the sequence `ids_keep ++ (masked patches, ascending)`, i.e. `argsort(ids_shuffle)`
    /// with `ids_shuffle` that sequence, so the trainer un-shuffles with a gather exactly
    /// like `models_mae.py`. MAE keeps visible tokens in noise order; ascending order is the
    /// same set, and a ViT encoder (position embeddings added before masking) is
    /// indifferent to the order. For other kinds pass empty `ids_keep`/`ids_restore`.
    ///
    /// # Panics
    /// If a slice has the wrong length (a caller bug, not bad input).
    pub fn generate<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        mask: &mut [u8],
        ids_keep: &mut [u32],
        ids_restore: &mut [u32],
    ) {
        let n = self.num_patches();
        assert_eq!(mask.len(), n, "mask slice length");
        match &self.spec {
            MaskSpec::Random { .. } => {
                let keep = self.num_keep();
                assert_eq!(ids_keep.len(), keep, "ids_keep slice length");
                assert_eq!(ids_restore.len(), n, "ids_restore slice length");
                choose_exactly(rng, mask, n - keep);
                let (mut kept, mut masked) = (0u32, keep as u32);
                for (i, &m) in mask.iter().enumerate() {
                    if m == 0 {
                        ids_keep[kept as usize] = i as u32;
                        ids_restore[i] = kept;
                        kept += 1;
                    } else {
                        ids_restore[i] = masked;
                        masked += 1;
                    }
                }
            }
            MaskSpec::Block {
                ratio,
                ratio_var,
                min_num_patches,
                aspect,
                max_attempts,
                ..
            } => {
                let pick = rng.random_range(0..ratio.len());
                let var = ratio_var.get(pick).copied().unwrap_or(0.0);
                let r = if var > 0.0 {
                    uniform(rng, ratio[pick] - var, ratio[pick] + var)
                } else {
                    ratio[pick]
                };
                let min_area = min_num_patches
                    .map_or_else(|| ((self.side / 3) * (self.side / 3)) as f64, f64::from);
                block_mask(
                    rng,
                    mask,
                    self.side,
                    r * n as f64,
                    min_area,
                    *aspect,
                    *max_attempts,
                );
            }
            MaskSpec::Simmim {
                ratio,
                mask_patch_size,
                model_patch_size,
            } => {
                let scale = (mask_patch_size / model_patch_size) as usize;
                let coarse = self.side / scale;
                let cells = coarse * coarse;
                let count = ((cells as f64 * ratio).ceil() as usize).min(cells);
                // Draw the coarse mask into the first `cells` entries, then upsample in place
                // from the end backwards (each fine row reads only coarse entries not yet
                // overwritten, since fine index >= coarse index).
                choose_exactly(rng, &mut mask[..cells], count);
                for fine in (0..n).rev() {
                    let (y, x) = (fine / self.side, fine % self.side);
                    mask[fine] = mask[(y / scale) * coarse + x / scale];
                }
            }
        }
    }
}

/// Set exactly `count` of `out`'s entries to 1 (the rest 0), every subset equally likely
/// (Knuth's selection sampling, Algorithm S: no scratch memory).
fn choose_exactly<R: Rng + ?Sized>(rng: &mut R, out: &mut [u8], count: usize) {
    let mut needed = count;
    let total = out.len();
    for (i, slot) in out.iter_mut().enumerate() {
        let remaining = total - i;
        let take = needed > 0 && rng.random_range(0..remaining) < needed;
        *slot = u8::from(take);
        needed -= usize::from(take);
    }
}

/// Python's `random.uniform(a, b)`: `a + (b - a) * U[0, 1)`, valid for `a > b` too.
fn uniform<R: Rng + ?Sized>(rng: &mut R, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.random::<f64>()
}

/// BEiT's `MaskingGenerator.__call__` with iBOT's float target: add blocks until at least
/// `target` patches are masked or a block cannot be placed in `max_attempts` tries.
fn block_mask<R: Rng + ?Sized>(
    rng: &mut R,
    mask: &mut [u8],
    side: usize,
    target: f64,
    min_area: f64,
    aspect: [f64; 2],
    max_attempts: u32,
) {
    mask.fill(0);
    let (log_lo, log_hi) = (aspect[0].ln(), aspect[1].ln());
    let mut count = 0usize;
    while (count as f64) < target {
        let max_patches = target - count as f64;
        let mut delta = 0usize;
        for _ in 0..max_attempts {
            let area = uniform(rng, min_area, max_patches);
            let aspect_ratio = uniform(rng, log_lo, log_hi).exp();
            let h = (area * aspect_ratio).sqrt().round_ties_even() as usize;
            let w = (area / aspect_ratio).sqrt().round_ties_even() as usize;
            if w < side && h < side {
                let top = rng.random_range(0..=side - h);
                let left = rng.random_range(0..=side - w);
                let already: usize = (top..top + h)
                    .map(|y| {
                        mask[y * side + left..y * side + left + w]
                            .iter()
                            .map(|&m| usize::from(m))
                            .sum::<usize>()
                    })
                    .sum();
                let new = h * w - already;
                if new > 0 && new as f64 <= max_patches {
                    for y in top..top + h {
                        for m in &mut mask[y * side + left..y * side + left + w] {
                            if *m == 0 {
                                *m = 1;
                                delta += 1;
                            }
                        }
                    }
                }
            }
            if delta > 0 {
                break;
            }
        }
        if delta == 0 {
            break;
        }
        count += delta;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::sample_rng;

    fn mae(ratio: f64) -> MaskGenerator {
        MaskGenerator::new(
            &MaskSpec::Random {
                ratio,
                patch_size: 16,
            },
            224,
        )
    }

    #[test]
    fn mae_masks_exactly_and_indices_restore_the_order() {
        let generator = mae(0.75);
        assert_eq!((generator.num_patches(), generator.num_keep()), (196, 49));
        let (mut mask, mut keep, mut restore) = (vec![0u8; 196], vec![0u32; 49], vec![0u32; 196]);
        for id in 0..50 {
            generator.generate(
                &mut sample_rng(0, 0, id),
                &mut mask,
                &mut keep,
                &mut restore,
            );
            assert_eq!(mask.iter().filter(|&&m| m == 1).count(), 147);
            assert!(keep.windows(2).all(|w| w[0] < w[1]), "ids_keep ascending");
            assert!(keep.iter().all(|&i| mask[i as usize] == 0));
            // ids_shuffle = keep ++ masked; gathering it with ids_restore gives 0..L back,
            // and the MAE mask construction (zeros for the first len_keep, gathered with
            // ids_restore) reproduces `mask`.
            let shuffle: Vec<u32> = keep
                .iter()
                .copied()
                .chain((0..196u32).filter(|&i| mask[i as usize] == 1))
                .collect();
            for (i, &r) in restore.iter().enumerate() {
                assert_eq!(shuffle[r as usize], i as u32);
                assert_eq!(u8::from(r as usize >= 49), mask[i]);
            }
        }
    }

    #[test]
    fn mae_masks_differ_between_samples_and_cover_all_patches() {
        let generator = mae(0.75);
        let (mut mask, mut keep, mut restore) = (vec![0u8; 196], vec![0u32; 49], vec![0u32; 196]);
        let mut hits = vec![0u32; 196];
        for id in 0..2000 {
            generator.generate(
                &mut sample_rng(3, 1, id),
                &mut mask,
                &mut keep,
                &mut restore,
            );
            for (h, &m) in hits.iter_mut().zip(&mask) {
                *h += u32::from(m);
            }
        }
        // Each patch is masked with probability 0.75: 1500 of 2000, sd ~19.
        assert!(hits.iter().all(|&h| (1400..1600).contains(&h)), "{hits:?}");
    }

    #[test]
    fn block_masks_hit_the_ratio_and_are_blocky() {
        let spec = MaskSpec::Block {
            ratio: vec![0.4],
            ratio_var: vec![],
            patch_size: 16,
            min_num_patches: Some(16),
            aspect: default_aspect(),
            max_attempts: 10,
        };
        let generator = MaskGenerator::new(&spec, 224);
        let mut mask = vec![0u8; 196];
        let (mut total, mut runs) = (0usize, 0usize);
        let draws = 500;
        for id in 0..draws {
            generator.generate(&mut sample_rng(0, 0, id), &mut mask, &mut [], &mut []);
            let masked = mask.iter().filter(|&&m| m == 1).count();
            // BEiT stops at or above the target (78.4) unless placement fails.
            assert!((40..=196).contains(&masked), "{masked}");
            total += masked;
            // Count horizontal runs of masked patches: blocks give few long runs.
            runs += mask
                .chunks(14)
                .map(|row| {
                    row.windows(2).filter(|w| w[0] == 0 && w[1] == 1).count()
                        + usize::from(row[0] == 1)
                })
                .sum::<usize>();
        }
        let mean = total as f64 / draws as f64;
        assert!((75.0..90.0).contains(&mean), "mean masked {mean}");
        // Random masking of 78 patches would give ~31 runs per mask; blocks give far fewer.
        assert!(
            (runs as f64 / draws as f64) < 20.0,
            "runs {}",
            runs as f64 / draws as f64
        );
    }

    #[test]
    fn block_ratio_choice_leaves_some_samples_unmasked() {
        let spec = MaskSpec::Block {
            ratio: vec![0.0, 0.3],
            ratio_var: vec![0.0, 0.2],
            patch_size: 16,
            min_num_patches: None,
            aspect: default_aspect(),
            max_attempts: 10,
        };
        let generator = MaskGenerator::new(&spec, 224);
        let mut mask = vec![0u8; 196];
        let empty = (0..400)
            .filter(|&id| {
                generator.generate(&mut sample_rng(0, 0, id), &mut mask, &mut [], &mut []);
                mask.iter().all(|&m| m == 0)
            })
            .count();
        assert!((150..250).contains(&empty), "{empty} of 400 unmasked");
    }

    #[test]
    fn simmim_masks_whole_coarse_cells() {
        let spec = MaskSpec::Simmim {
            ratio: 0.6,
            mask_patch_size: 32,
            model_patch_size: 4,
        };
        let generator = MaskGenerator::new(&spec, 192);
        assert_eq!(generator.grid_side(), 48);
        let mut mask = vec![0u8; 48 * 48];
        for id in 0..20 {
            generator.generate(&mut sample_rng(0, 0, id), &mut mask, &mut [], &mut []);
            // 36 cells of 8x8 model patches; ceil(36 * 0.6) = 22 masked.
            assert_eq!(mask.iter().filter(|&&m| m == 1).count(), 22 * 64);
            for y in 0..48 {
                for x in 0..48 {
                    let corner = mask[(y / 8 * 8) * 48 + x / 8 * 8];
                    assert_eq!(mask[y * 48 + x], corner, "cell not uniform at ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn validation_names_the_field() {
        let spec = MaskSpec::Random {
            ratio: 0.75,
            patch_size: 15,
        };
        assert_eq!(spec.validate(224).unwrap_err().0, "patch_size");
        let spec = MaskSpec::Simmim {
            ratio: 0.6,
            mask_patch_size: 32,
            model_patch_size: 12,
        };
        assert!(spec.validate(192).is_err());
        let spec = MaskSpec::Random {
            ratio: 1.0,
            patch_size: 16,
        };
        assert_eq!(spec.validate(224).unwrap_err().0, "ratio");
    }
}
