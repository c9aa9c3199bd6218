//! Image transforms with torchvision's semantics, compiled per view.
//!
//! A recipe's [`ViewSpec`] compiles into a [`ViewTransform`]: a crop (RandomResizedCrop,
//! or Resize + CenterCrop) resized straight into the caller's output slot (a slice of the
//! pooled batch buffer), followed by the view's [`TransformSpec`]s in order, each applied
//! with its probability, in place on that slot. Intermediate buffers (the resizer's,
//! ColorJitter's float copy, the blur's) live in a per-worker [`TransformScratch`], so a
//! worker allocates nothing per sample once warm.
//!
//! Random draws follow torchvision's order: for each transform, first the coin `U < p`,
//! then its parameters. All randomness comes from the sample's RNG ([`crate::rng`]).
//!
//! Parts: [`crop`] (geometry, flips), [`color`] (jitter, greyscale, solarize), [`blur`],
//! and [`device`]: the draws a view leaves to the training device when the recipe says
//! `[augment] on_device = true` ([`ViewTransform::apply_deferred`]).
//! Not here: normalisation (the trainer does it on device; batches carry u8).

pub mod blur;
pub mod color;
pub mod crop;
pub mod device;
#[cfg(test)]
mod reference;
mod spec;

use fast_image_resize::Resizer;
use rand::Rng;

use crate::decode::RgbImage;
use crate::recipe::{CropKind, Interpolation, ViewSpec};
pub use color::ColorJitter;
pub use crop::CropBox;
pub use device::{DeviceDraws, DeviceStep, MAX_DEVICE_STEPS};
pub use spec::TransformSpec;

/// Why a view could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The decoded image has no pixels.
    #[error("cannot crop an empty {width}x{height} image")]
    EmptyImage {
        /// Width of the input.
        width: u32,
        /// Height of the input.
        height: u32,
    },
    /// The output slot has the wrong length (a caller bug).
    #[error("output slot holds {got} bytes, the view needs {expected}")]
    SlotSize {
        /// `size * size * 3`.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// The image buffer does not match its declared size (a caller bug).
    #[error("image buffer does not match its size")]
    Buffer(#[from] fast_image_resize::ImageBufferError),
    /// The crop box does not lie inside the image.
    #[error("crop box outside the image")]
    CropBox(#[from] fast_image_resize::CropBoxError),
    /// fast_image_resize refused the crop.
    #[error("resize failed")]
    Resize(#[from] fast_image_resize::ResizeError),
}

/// Per-worker scratch reused across samples: the resizer and intermediate buffers.
#[derive(Debug, Default)]
pub struct TransformScratch {
    resizer: Resizer,
    float_pixels: Vec<f32>,
    kernel: Vec<f32>,
    /// One row of the view, for the horizontal flip.
    flip_row: Vec<u8>,
}

impl TransformScratch {
    /// Empty scratch; buffers grow to the largest view on first use.
    pub fn new() -> Self {
        TransformScratch::default()
    }
}

/// What was drawn for one view (for previews, logs and tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewRecord {
    /// The crop box in decoded-image pixels.
    pub crop: CropBox,
    /// Whether a horizontal flip was applied.
    pub flipped: bool,
}

/// A [`ViewSpec`] ready to apply: crop, resize and the transform chain.
#[derive(Debug, Clone)]
pub struct ViewTransform {
    size: u32,
    crop: CropKind,
    scale: [f64; 2],
    ratio: [f64; 2],
    resize: u32,
    interpolation: Interpolation,
    transforms: Vec<TransformSpec>,
}

impl ViewTransform {
    /// Compile a (validated) view spec.
    pub fn new(spec: &ViewSpec) -> Self {
        ViewTransform {
            size: spec.size,
            crop: spec.crop,
            scale: spec.scale(),
            ratio: spec.ratio(),
            resize: spec.resize(),
            interpolation: spec.interpolation,
            transforms: spec.transforms.clone(),
        }
    }

    /// Output side in pixels.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Bytes of one output: `size * size * 3`.
    pub fn output_len(&self) -> usize {
        self.size as usize * self.size as usize * 3
    }

    /// Make one view of `image` into `out` (`size x size x 3` u8, HWC).
    pub fn apply<R: Rng + ?Sized>(
        &self,
        image: &RgbImage,
        rng: &mut R,
        scratch: &mut TransformScratch,
        out: &mut [u8],
    ) -> Result<ViewRecord, TransformError> {
        if image.width == 0 || image.height == 0 {
            return Err(TransformError::EmptyImage {
                width: image.width,
                height: image.height,
            });
        }
        let crop = self.draw_crop(rng, image.width, image.height);
        self.apply_with_crop(image, crop, rng, scratch, out)
    }

    /// Whether the crop is cut out before resizing (RandomResizedCrop), so that only the
    /// crop's pixels matter and a decoder may decode just those.
    pub fn crops_first(&self) -> bool {
        self.crop == CropKind::RandomResized
    }

    /// The view's crop box for a `width x height` image: the first draws [`apply`] makes.
    ///
    /// [`apply`]: ViewTransform::apply
    pub fn draw_crop<R: Rng + ?Sized>(&self, rng: &mut R, width: u32, height: u32) -> CropBox {
        match self.crop {
            CropKind::RandomResized => {
                crop::random_resized_crop_box(rng, width, height, self.scale, self.ratio)
            }
            CropKind::Center => crop::center_crop_box(width, height, self.resize, self.size),
        }
    }

    /// [`apply`] with the crop already drawn (by [`draw_crop`], located in `image`):
    /// the resize and the transform chain, which make the remaining draws.
    ///
    /// [`apply`]: ViewTransform::apply
    /// [`draw_crop`]: ViewTransform::draw_crop
    pub fn apply_with_crop<R: Rng + ?Sized>(
        &self,
        image: &RgbImage,
        crop: CropBox,
        rng: &mut R,
        scratch: &mut TransformScratch,
        out: &mut [u8],
    ) -> Result<ViewRecord, TransformError> {
        if image.width == 0 || image.height == 0 {
            return Err(TransformError::EmptyImage {
                width: image.width,
                height: image.height,
            });
        }
        self.resize_into(image, crop, scratch, out)?;
        let flipped = self.chain(rng, scratch, out, None);
        Ok(ViewRecord { crop, flipped })
    }

    /// [`apply_with_crop`] for device augmentation: the crop, the resize and the flips are
    /// applied; every other transform makes its draws exactly as there and records them in
    /// `draws` (in transform order, [`DeviceStep::Skip`] where its coin said no) instead
    /// of changing the pixels. See [`device`].
    ///
    /// [`apply_with_crop`]: ViewTransform::apply_with_crop
    pub fn apply_deferred<R: Rng + ?Sized>(
        &self,
        image: &RgbImage,
        crop: Option<CropBox>,
        rng: &mut R,
        scratch: &mut TransformScratch,
        out: &mut [u8],
        draws: &mut DeviceDraws,
    ) -> Result<ViewRecord, TransformError> {
        if image.width == 0 || image.height == 0 {
            return Err(TransformError::EmptyImage {
                width: image.width,
                height: image.height,
            });
        }
        let crop = crop.unwrap_or_else(|| self.draw_crop(rng, image.width, image.height));
        self.resize_into(image, crop, scratch, out)?;
        let flipped = self.chain(rng, scratch, out, Some(draws));
        Ok(ViewRecord { crop, flipped })
    }

    /// The crop and resize of [`apply_with_crop`](ViewTransform::apply_with_crop).
    fn resize_into(
        &self,
        image: &RgbImage,
        crop: CropBox,
        scratch: &mut TransformScratch,
        out: &mut [u8],
    ) -> Result<(), TransformError> {
        if out.len() != self.output_len() {
            return Err(TransformError::SlotSize {
                expected: self.output_len(),
                got: out.len(),
            });
        }
        let edges = match self.crop {
            CropKind::RandomResized => crop::Edges::OfCrop,
            CropKind::Center => crop::Edges::OfSource,
        };
        crop::crop_resize(
            &mut scratch.resizer,
            image,
            crop,
            edges,
            self.size,
            self.interpolation,
            out,
        )
    }

    /// The transform chain on the resized view, making every draw in order. With `defer`,
    /// only flips touch the pixels and the other steps are recorded there. Returns whether
    /// the view was flipped.
    fn chain<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        scratch: &mut TransformScratch,
        out: &mut [u8],
        mut defer: Option<&mut DeviceDraws>,
    ) -> bool {
        let side = self.size as usize;
        let mut flipped = false;
        let mut step = 0;
        // The recipe check keeps a view's non-flip transforms within `MAX_DEVICE_STEPS`.
        let mut record = |defer: &mut Option<&mut DeviceDraws>, drawn: DeviceStep| match defer {
            Some(draws) => {
                if let Some(slot) = draws.get_mut(step) {
                    *slot = drawn;
                }
                step += 1;
                true
            }
            None => false,
        };
        if let Some(draws) = defer.as_deref_mut() {
            draws.fill(DeviceStep::Skip);
        }
        for transform in &self.transforms {
            match transform {
                TransformSpec::HorizontalFlip { p } => {
                    if coin(rng, *p) {
                        crop::flip_horizontal(out, side, &mut scratch.flip_row);
                        flipped = true;
                    }
                }
                TransformSpec::ColorJitter {
                    p,
                    brightness,
                    contrast,
                    saturation,
                    hue,
                } => {
                    let draw = coin(rng, *p).then(|| {
                        ColorJitter {
                            brightness: *brightness,
                            contrast: *contrast,
                            saturation: *saturation,
                            hue: *hue,
                        }
                        .draw(rng)
                    });
                    let drawn = draw.map_or(DeviceStep::Skip, DeviceStep::Jitter);
                    if !record(&mut defer, drawn)
                        && let Some(draw) = draw
                    {
                        color::apply_jitter(&draw, out, &mut scratch.float_pixels);
                    }
                }
                TransformSpec::Grayscale { p } => {
                    let on = coin(rng, *p);
                    let drawn = if on {
                        DeviceStep::Grayscale
                    } else {
                        DeviceStep::Skip
                    };
                    if !record(&mut defer, drawn) && on {
                        color::grayscale(out);
                    }
                }
                TransformSpec::GaussianBlur {
                    p,
                    sigma,
                    kernel_size,
                } => {
                    let sigma =
                        coin(rng, *p).then(|| crop::uniform(rng, sigma[0], sigma[1]) as f32);
                    let drawn = sigma.map_or(DeviceStep::Skip, |sigma| DeviceStep::GaussianBlur {
                        sigma,
                        kernel_size: *kernel_size,
                    });
                    if !record(&mut defer, drawn)
                        && let Some(sigma) = sigma
                    {
                        blur::gaussian_blur(
                            out,
                            side,
                            sigma,
                            *kernel_size,
                            &mut scratch.float_pixels,
                            &mut scratch.kernel,
                        );
                    }
                }
                TransformSpec::Solarize { p, threshold } => {
                    let on = coin(rng, *p);
                    let drawn = if on {
                        DeviceStep::Solarize {
                            threshold: *threshold,
                        }
                    } else {
                        DeviceStep::Skip
                    };
                    if !record(&mut defer, drawn) && on {
                        color::solarize(out, *threshold);
                    }
                }
            }
        }
        flipped
    }
}

/// torchvision `F.resized_crop(img, top, left, height, width, [size, size])`: cut `crop`
/// from `image` and resize it to `size x size` into `out` (`size * size * 3` bytes). The
/// crop is made first, so the filter clamps at the crop's edges as torchvision's does;
/// fractional box coordinates are truncated to whole pixels.
pub fn resized_crop(
    image: &RgbImage,
    crop: CropBox,
    size: u32,
    interpolation: Interpolation,
    scratch: &mut TransformScratch,
    out: &mut [u8],
) -> Result<(), TransformError> {
    let expected = size as usize * size as usize * 3;
    if out.len() != expected {
        return Err(TransformError::SlotSize {
            expected,
            got: out.len(),
        });
    }
    if image.width == 0 || image.height == 0 {
        return Err(TransformError::EmptyImage {
            width: image.width,
            height: image.height,
        });
    }
    let crop = CropBox {
        top: crop.top.floor(),
        left: crop.left.floor(),
        height: crop.height.floor().max(1.0),
        width: crop.width.floor().max(1.0),
    };
    crop::crop_resize(
        &mut scratch.resizer,
        image,
        crop,
        crop::Edges::OfCrop,
        size,
        interpolation,
        out,
    )
}

/// `U[0, 1) < p`, as torchvision's `torch.rand(1) < p` (p = 1 always, p = 0 never).
fn coin<R: Rng + ?Sized>(rng: &mut R, p: f64) -> bool {
    rng.random::<f64>() < p
}
