//! What a view's CPU chain leaves to the training device (`[augment] on_device = true`).
//!
//! With device augmentation the workers still run the whole chain's random draws, in the
//! same order as [`super::ViewTransform::apply`] (so every later crop, coin and factor is
//! the same), but apply only the crop, the resize and the flips. Every other transform's
//! outcome is written into the sample's [`DeviceDraws`]: one [`DeviceStep`] per non-flip
//! transform of the view, in recipe order, [`DeviceStep::Skip`] where its coin said no.
//! Batches carry them ([`crate::batch::Batch::augment`]) and the trainer's feeder applies
//! them to the uploaded pixels with the formulas of [`super::color`] and [`super::blur`]:
//! the device's images equal the CPU's within rounding.
//!
//! Flips commute with every step left to the device (per-pixel colour maps, the image
//! mean, a symmetric blur with reflect padding), so applying them first changes nothing.

use super::color::JitterDraw;

/// The most non-flip transforms a view may have with device augmentation (the recipe
/// check refuses more): SimCLR, BYOL and DINO views have four.
pub const MAX_DEVICE_STEPS: usize = 6;

/// One transform of a view as drawn for one sample, for the device to apply.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum DeviceStep {
    /// Nothing to do: the transform's coin said no, or the view has no transform here.
    #[default]
    Skip,
    /// ColorJitter with these factors and order ([`super::color::apply_jitter`]); the
    /// result is rounded to u8 levels, as on the CPU.
    Jitter(JitterDraw),
    /// RandomGrayscale: PIL's fixed-point 601 luma into all three channels.
    Grayscale,
    /// Gaussian blur ([`super::blur::kernel`] gives the taps), rounded to u8 levels.
    GaussianBlur {
        /// The drawn standard deviation in pixels.
        sigma: f32,
        /// The recipe's kernel size (`None`: sized from sigma).
        kernel_size: Option<u32>,
    },
    /// PIL `ImageOps.solarize`: levels `>= threshold` become `255 - level`.
    Solarize {
        /// Threshold in u8 levels.
        threshold: u8,
    },
}

/// One sample's steps for one view, in the view's transform order (flips excluded).
pub type DeviceDraws = [DeviceStep; MAX_DEVICE_STEPS];
