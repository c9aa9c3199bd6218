//! A recipe's per-sample work: find the image field, decode it, make every view into its
//! batch slot, draw the masks, read the label.

use tessera_shards::Sample;

use super::assemble::MaskSlot;
use super::work::{Reject, SampleWork};
use crate::decode::{Decoder, RgbImage};
use crate::masks::{MaskGenerator, MaskSpec};
use crate::recipe::Recipe;
use crate::rng::SampleRng;
use crate::transforms::{TransformScratch, ViewTransform};

/// The compiled views and masks of a [`Recipe`].
#[derive(Debug, Clone)]
pub struct RecipeWork {
    image_fields: Vec<String>,
    label_field: Option<String>,
    max_pixels: u64,
    /// Concrete views in batch order.
    views: Vec<ViewTransform>,
    /// Per concrete view: its mask generator and whether it has MAE keep/restore indices.
    masks: Vec<Option<(MaskGenerator, bool)>>,
    /// The largest view side: what a scaled decode may aim for.
    largest_view: u32,
}

/// One worker's reusable buffers.
#[derive(Debug)]
pub struct RecipeScratch {
    decoder: Decoder,
    image: RgbImage,
    transform: TransformScratch,
}

impl RecipeWork {
    /// Compile `recipe` (already validated by [`Recipe::load`]).
    pub fn new(recipe: &Recipe) -> Self {
        let instances = recipe.view_instances();
        let views: Vec<ViewTransform> = instances
            .iter()
            .map(|v| ViewTransform::new(&recipe.views[v.spec]))
            .collect();
        let masks = instances
            .iter()
            .map(|v| {
                let spec = &recipe.views[v.spec];
                spec.mask.as_ref().map(|m| {
                    (
                        MaskGenerator::new(m, spec.size),
                        matches!(m, MaskSpec::Random { .. }),
                    )
                })
            })
            .collect();
        RecipeWork {
            image_fields: recipe.data.image_fields.clone(),
            label_field: recipe.data.label_field.clone(),
            max_pixels: recipe.data.max_pixels,
            largest_view: views.iter().map(|v| v.size()).max().unwrap_or(0),
            views,
            masks,
        }
    }

    /// The decoded image of the last sample decoded with `scratch` (for previews).
    pub fn decoded<'a>(&self, scratch: &'a RecipeScratch) -> &'a RgbImage {
        &scratch.image
    }
}

impl SampleWork for RecipeWork {
    type Scratch = RecipeScratch;

    fn scratch(&self) -> RecipeScratch {
        RecipeScratch {
            decoder: Decoder::new(self.max_pixels),
            image: RgbImage::default(),
            transform: TransformScratch::new(),
        }
    }

    fn view_shapes(&self) -> Vec<(usize, usize)> {
        self.views
            .iter()
            .map(|v| (v.size() as usize, v.size() as usize))
            .collect()
    }

    fn mask_shapes(&self) -> Vec<Option<(usize, usize, bool)>> {
        self.masks
            .iter()
            .map(|m| {
                m.as_ref()
                    .map(|(g, idx)| (g.num_patches(), g.num_keep(), *idx))
            })
            .collect()
    }

    fn decode(&self, sample: &Sample, scratch: &mut RecipeScratch) -> Result<(), Reject> {
        let Some(bytes) = self.image_fields.iter().find_map(|f| sample.field(f)) else {
            return Err(Reject {
                reason: "missing_image",
                detail: format!(
                    "no image field (looked for {:?}; the sample has {:?})",
                    self.image_fields,
                    sample
                        .fields()
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                ),
            });
        };
        let target = Some((self.largest_view, self.largest_view));
        match scratch.decoder.decode(bytes, &mut scratch.image, target) {
            Ok(_) if scratch.image.width == 0 || scratch.image.height == 0 => Err(Reject {
                reason: "empty",
                detail: "image decoded to zero pixels".into(),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(Reject {
                reason: e.reason(),
                detail: e.to_string(),
            }),
        }
    }

    fn render(
        &self,
        scratch: &mut RecipeScratch,
        rng: &mut SampleRng,
        views: &mut [&mut [u8]],
        masks: &mut [Option<MaskSlot<'_>>],
    ) {
        // Draw order (see `crate::rng`): views in batch order, then masks in view order.
        for (view, out) in self.views.iter().zip(views.iter_mut()) {
            if let Err(e) = view.apply(&scratch.image, rng, &mut scratch.transform, out) {
                // Unreachable for a decoded (non-empty) image and a slot of the right size.
                tracing::error!("view transform failed ({e}); slot left black");
                out.fill(0);
            }
        }
        for (generator, slot) in self.masks.iter().zip(masks.iter_mut()) {
            if let (Some((generator, _)), Some(slot)) = (generator, slot) {
                generator.generate(rng, slot.mask, slot.ids_keep, slot.ids_restore);
            }
        }
    }

    fn label(&self, sample: &Sample) -> i64 {
        self.label_field
            .as_deref()
            .and_then(|f| sample.field(f))
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(-1)
    }
}
