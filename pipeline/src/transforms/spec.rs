//! The recipe's `[[views.transforms]]` entries: what each random transform is, its
//! defaults and its range checks.

use serde::Deserialize;

use super::blur;
use crate::recipe::check_range;

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

/// The most taps a blur kernel may have, given (`kernel_size`) or sized from sigma.
const MAX_BLUR_TAPS: u32 = 255;

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
                    && (k % 2 == 0 || *k > MAX_BLUR_TAPS)
                {
                    return Err((
                        "kernel_size",
                        format!("{k} must be odd and at most {MAX_BLUR_TAPS}"),
                    ));
                }
                // A kernel sized from sigma keeps the same bound: the blur's cost grows
                // with its taps, and past the image's side more taps only fold the
                // reflected image onto itself. The widest sigma drawn is the upper bound.
                let taps = blur::taps_for_sigma(sigma[1] as f32);
                if kernel_size.is_none() && taps > MAX_BLUR_TAPS as usize {
                    return Err((
                        "sigma",
                        format!(
                            "upper bound {} sizes a kernel of {taps} taps (2 ceil(3 sigma) + 1), \
                             over the {MAX_BLUR_TAPS} allowed: at most 127/3 = 42.33, or give \
                             `kernel_size`",
                            sigma[1]
                        ),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}
