//! A recipe's per-sample work: find the image field, decode it, make every view into its
//! batch slot, draw the masks, read the label.

use tessera_shards::Sample;

use super::slot::SlotGrant;
use super::work::{Reject, SampleWork};
use crate::decode::{Decoder, RgbImage};
use crate::masks::{MaskGenerator, MaskSpec};
use crate::recipe::Recipe;
use crate::rng::SampleRng;
use crate::transforms::{CropBox, DeviceDraws, TransformScratch, ViewTransform};

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
    /// The recipe has one view and it crops before resizing: its crop is drawn at decode
    /// time, so the decoder may decode just that part ([`Decoder::decode_for_crop`]).
    crop_aware: bool,
    /// `[augment] on_device`: render crops and flips, record the other draws.
    on_device: bool,
}

/// One worker's reusable buffers.
#[derive(Debug)]
pub struct RecipeScratch {
    decoder: Decoder,
    image: RgbImage,
    transform: TransformScratch,
    /// The single view's crop in `image`, when the decode drew it (`crop_aware`).
    crop: Option<CropBox>,
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
            crop_aware: views.len() == 1 && views[0].crops_first(),
            on_device: recipe.augment.on_device,
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
            crop: None,
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

    fn device_augment(&self) -> bool {
        self.on_device
    }

    fn decode(
        &self,
        sample: &Sample,
        rng: &mut SampleRng,
        scratch: &mut RecipeScratch,
    ) -> Result<(), Reject> {
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
        let decoded = if self.crop_aware {
            let view = &self.views[0];
            let mut draw = |width, height| view.draw_crop(rng, width, height);
            scratch
                .decoder
                .decode_for_crop(bytes, &mut scratch.image, view.size(), &mut draw)
                .map(|(_, crop)| scratch.crop = Some(crop))
        } else {
            scratch.crop = None;
            scratch
                .decoder
                .decode(bytes, &mut scratch.image)
                .map(|_| ())
        };
        match decoded {
            Ok(()) if scratch.image.width == 0 || scratch.image.height == 0 => Err(Reject {
                reason: "empty",
                detail: "image decoded to zero pixels".into(),
            }),
            Ok(()) => Ok(()),
            Err(e) => Err(Reject {
                reason: e.reason(),
                detail: e.to_string(),
            }),
        }
    }

    fn render(&self, scratch: &mut RecipeScratch, rng: &mut SampleRng, slot: &mut SlotGrant) {
        // Draw order (see `crate::rng`): views in batch order, then masks in view order.
        for (index, view) in self.views.iter().enumerate() {
            let image = &scratch.image;
            let crop = scratch.crop.take();
            let made = if self.on_device {
                let mut draws = DeviceDraws::default();
                let made = view.apply_deferred(
                    image,
                    crop,
                    rng,
                    &mut scratch.transform,
                    slot.view(index),
                    &mut draws,
                );
                if let Some(slot_draws) = slot.device_draws(index) {
                    *slot_draws = draws;
                }
                made
            } else {
                let out = slot.view(index);
                match crop {
                    Some(crop) => {
                        view.apply_with_crop(image, crop, rng, &mut scratch.transform, out)
                    }
                    None => view.apply(image, rng, &mut scratch.transform, out),
                }
            };
            if let Err(e) = made {
                // Unreachable for a decoded (non-empty) image and a slot of the right size.
                tracing::error!("view transform failed ({e}); slot left black");
                slot.view(index).fill(0);
            }
        }
        for (index, generator) in self.masks.iter().enumerate() {
            if let (Some((generator, _)), Some(mask)) = (generator, slot.mask(index)) {
                generator.generate(rng, mask.mask, mask.ids_keep, mask.ids_restore);
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
