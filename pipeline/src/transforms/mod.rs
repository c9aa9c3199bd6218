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
//! Parts: [`crop`] (geometry, flips), [`color`] (jitter, greyscale, solarize), [`blur`].
//! Not here: normalisation (the trainer does it on device; batches carry u8).

pub mod blur;
pub mod color;
pub mod crop;

use fast_image_resize::Resizer;
use rand::Rng;
use serde::Deserialize;

use crate::decode::RgbImage;
use crate::recipe::{CropKind, Interpolation, ViewSpec, check_range};
pub use color::ColorJitter;
pub use crop::CropBox;

fn half() -> f64 {
    0.5
}
fn one() -> f64 {
    1.0
}
fn grey_p() -> f64 {
    0.1
}
fn default_sigma() -> [f64; 2] {
    [0.1, 2.0]
}
fn default_threshold() -> u8 {
    128
}

/// One random transform of a view, as written in a recipe (`op` selects the variant).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformSpec {
    /// torchvision `RandomHorizontalFlip(p)`.
    HorizontalFlip {
        /// Probability of flipping. Default 0.5.
        #[serde(default = "half")]
        p: f64,
    },
    /// `RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`.
    ColorJitter {
        /// Probability of applying the jitter at all. Default 1.
        #[serde(default = "one")]
        p: f64,
        /// Brightness strength: factor uniform in `[max(0, 1 - b), 1 + b]`. Default 0 (off).
        #[serde(default)]
        brightness: f64,
        /// Contrast strength, as brightness. Default 0 (off).
        #[serde(default)]
        contrast: f64,
        /// Saturation strength, as brightness. Default 0 (off).
        #[serde(default)]
        saturation: f64,
        /// Hue strength in [0, 0.5]: shift uniform in `[-h, h]` turns. Default 0 (off).
        #[serde(default)]
        hue: f64,
    },
    /// torchvision `RandomGrayscale(p)`: 601 luma into all three channels.
    Grayscale {
        /// Probability. Default 0.1 (torchvision's default).
        #[serde(default = "grey_p")]
        p: f64,
    },
    /// Gaussian blur with sigma uniform in `sigma` (see [`blur`] for the kernel).
    GaussianBlur {
        /// Probability. Default 1.
        #[serde(default = "one")]
        p: f64,
        /// Range of the standard deviation in pixels. Default `[0.1, 2.0]`.
        #[serde(default = "default_sigma")]
        sigma: [f64; 2],
        /// Odd kernel size in pixels (SimCLR, BYOL: 23 for 224). Default: `2 ceil(3
        /// sigma) + 1` from the drawn sigma (DINO's PIL blur has no fixed size).
        #[serde(default)]
        kernel_size: Option<u32>,
    },
    /// PIL `ImageOps.solarize`: values `>= threshold` become `255 - value`.
    Solarize {
        /// Probability. Default 1 (give it explicitly; DINO/BYOL use 0.2).
        #[serde(default = "one")]
        p: f64,
        /// Threshold in u8 levels. Default 128.
        #[serde(default = "default_threshold")]
        threshold: u8,
    },
}

impl TransformSpec {
    /// Range checks; `Err((field, problem))`.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let p = match self {
            TransformSpec::HorizontalFlip { p }
            | TransformSpec::ColorJitter { p, .. }
            | TransformSpec::Grayscale { p }
            | TransformSpec::GaussianBlur { p, .. }
            | TransformSpec::Solarize { p, .. } => *p,
        };
        if !(0.0..=1.0).contains(&p) {
            return Err(("p", format!("{p} is not a probability in [0, 1]")));
        }
        match self {
            TransformSpec::ColorJitter {
                brightness,
                contrast,
                saturation,
                hue,
                ..
            } => {
                for (name, v) in [
                    ("brightness", brightness),
                    ("contrast", contrast),
                    ("saturation", saturation),
                ] {
                    if !(v.is_finite() && *v >= 0.0) {
                        return Err((name, format!("{v} must be a non-negative strength")));
                    }
                }
                if !(0.0..=0.5).contains(hue) {
                    return Err((
                        "hue",
                        format!("{hue} must be in [0, 0.5] (turns of the colour wheel)"),
                    ));
                }
            }
            TransformSpec::GaussianBlur {
                sigma, kernel_size, ..
            } => {
                check_range(sigma[0], sigma[1]).map_err(|p| ("sigma", p))?;
                if sigma[0] <= 0.0 {
                    return Err((
                        "sigma",
                        format!("lower bound {} must be positive", sigma[0]),
                    ));
                }
                if let Some(k) = kernel_size
                    && (k % 2 == 0 || *k > 255)
                {
                    return Err(("kernel_size", format!("{k} must be odd and at most 255")));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

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
        if out.len() != self.output_len() {
            return Err(TransformError::SlotSize {
                expected: self.output_len(),
                got: out.len(),
            });
        }
        if image.width == 0 || image.height == 0 {
            return Err(TransformError::EmptyImage {
                width: image.width,
                height: image.height,
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
        )?;
        let side = self.size as usize;
        let mut flipped = false;
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
                    if coin(rng, *p) {
                        let jitter = ColorJitter {
                            brightness: *brightness,
                            contrast: *contrast,
                            saturation: *saturation,
                            hue: *hue,
                        };
                        let draw = jitter.draw(rng);
                        color::apply_jitter(&draw, out, &mut scratch.float_pixels);
                    }
                }
                TransformSpec::Grayscale { p } => {
                    if coin(rng, *p) {
                        color::grayscale(out);
                    }
                }
                TransformSpec::GaussianBlur {
                    p,
                    sigma,
                    kernel_size,
                } => {
                    if coin(rng, *p) {
                        let s = crop::uniform(rng, sigma[0], sigma[1]) as f32;
                        blur::gaussian_blur(
                            out,
                            side,
                            s,
                            *kernel_size,
                            &mut scratch.float_pixels,
                            &mut scratch.kernel,
                        );
                    }
                }
                TransformSpec::Solarize { p, threshold } => {
                    if coin(rng, *p) {
                        color::solarize(out, *threshold);
                    }
                }
            }
        }
        Ok(ViewRecord { crop, flipped })
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
