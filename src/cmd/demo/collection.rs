//! A small procedural image collection for `tessera demo`: nothing to download.
//!
//! Six classes of synthetic pictures, each a different kind of structure for a masked
//! autoencoder to learn (flat discs, oriented stripes, checkerboards, smooth gradients,
//! concentric rings, value noise), with random colours, sizes (64..=128 px a side, not
//! square), positions and a little pixel noise. Every image is a pure function of
//! `(seed, index)`, so two demos with the same seed shard the same bytes. Files are written
//! as real JPEG (and one in eight as PNG) into `<dir>/<class>/<index>.<ext>`, the layout
//! `tessera shard` reads labels from.

use std::path::{Path, PathBuf};

use anyhow::Context;
use image::{ImageFormat, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The classes, in label order.
pub const CLASSES: &[&str] = &[
    "checkers",
    "discs",
    "gradients",
    "noise",
    "rings",
    "stripes",
];

/// What was written.
#[derive(Debug)]
pub struct Collection {
    /// Root directory (one subdirectory per class).
    pub dir: PathBuf,
    /// Images written.
    pub images: usize,
    /// Bytes written.
    pub bytes: u64,
}

/// Write `count` images (classes in turn) under `dir`.
pub fn generate(dir: &Path, count: usize, seed: u64) -> anyhow::Result<Collection> {
    for class in CLASSES {
        let sub = dir.join(class);
        std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
    }
    let mut bytes = 0u64;
    let mut encoded = Vec::new();
    for index in 0..count {
        let class = index % CLASSES.len();
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let img = draw(class, &mut rng);
        let (format, ext) = if index % 8 == 7 {
            (ImageFormat::Png, "png")
        } else {
            (ImageFormat::Jpeg, "jpg")
        };
        encoded.clear();
        img.write_to(&mut std::io::Cursor::new(&mut encoded), format)
            .with_context(|| format!("encoding image {index} as {ext}"))?;
        let path = dir.join(CLASSES[class]).join(format!("{index:05}.{ext}"));
        std::fs::write(&path, &encoded).with_context(|| format!("writing {}", path.display()))?;
        bytes += encoded.len() as u64;
    }
    Ok(Collection {
        dir: dir.to_path_buf(),
        images: count,
        bytes,
    })
}

fn random_colour(rng: &mut impl Rng) -> [f32; 3] {
    [
        rng.random::<f32>(),
        rng.random::<f32>(),
        rng.random::<f32>(),
    ]
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    std::array::from_fn(|c| a[c] + (b[c] - a[c]) * t)
}

/// One picture of class `class`.
fn draw(class: usize, rng: &mut ChaCha8Rng) -> RgbImage {
    let (w, h) = (rng.random_range(64..=128u32), rng.random_range(64..=128u32));
    let (a, b) = (random_colour(rng), random_colour(rng));
    let angle = rng.random_range(0.0..std::f32::consts::PI);
    let (ca, sa) = (angle.cos(), angle.sin());
    let period = rng.random_range(6.0..24.0f32);
    let (cx, cy) = (
        rng.random_range(0.2..0.8) * w as f32,
        rng.random_range(0.2..0.8) * h as f32,
    );
    let discs: Vec<(f32, f32, f32, [f32; 3])> = (0..rng.random_range(2..6))
        .map(|_| {
            let r = rng.random_range(6.0..(w.min(h) as f32 / 3.0));
            (
                rng.random_range(0.0..w as f32),
                rng.random_range(0.0..h as f32),
                r,
                random_colour(rng),
            )
        })
        .collect();
    // Value noise: a coarse random lattice, bilinearly interpolated.
    let cells = rng.random_range(3..8usize);
    let lattice: Vec<f32> = (0..(cells + 1) * (cells + 1))
        .map(|_| rng.random::<f32>())
        .collect();
    let noise_amp = 0.04f32;
    let mut img = RgbImage::new(w, h);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32, y as f32);
            let u = fx * ca + fy * sa; // coordinate along the pattern's direction
            let v = -fx * sa + fy * ca;
            let colour = match CLASSES[class] {
                "checkers" => {
                    let parity =
                        ((u / period).floor() as i64 + (v / period).floor() as i64).rem_euclid(2);
                    if parity == 0 { a } else { b }
                }
                "discs" => discs
                    .iter()
                    .rev()
                    .find(|(dx, dy, r, _)| (fx - dx).powi(2) + (fy - dy).powi(2) <= r * r)
                    .map(|d| d.3)
                    .unwrap_or(a),
                "gradients" => mix(a, b, (u / (w.max(h) as f32 * 1.5)).clamp(0.0, 1.0)),
                "noise" => {
                    let gx = fx / w as f32 * cells as f32;
                    let gy = fy / h as f32 * cells as f32;
                    let (ix, iy) = ((gx as usize).min(cells - 1), (gy as usize).min(cells - 1));
                    let (tx, ty) = (gx - ix as f32, gy - iy as f32);
                    let at = |i: usize, j: usize| lattice[j * (cells + 1) + i];
                    let top = at(ix, iy) + (at(ix + 1, iy) - at(ix, iy)) * tx;
                    let bottom = at(ix, iy + 1) + (at(ix + 1, iy + 1) - at(ix, iy + 1)) * tx;
                    mix(a, b, top + (bottom - top) * ty)
                }
                "rings" => {
                    let r = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
                    mix(a, b, 0.5 + 0.5 * (r / period * std::f32::consts::TAU).sin())
                }
                _ => mix(a, b, 0.5 + 0.5 * (u / period * std::f32::consts::TAU).sin()), // stripes
            };
            let px: [u8; 3] = std::array::from_fn(|c| {
                let n = (rng.random::<f32>() - 0.5) * 2.0 * noise_amp;
                ((colour[c] + n).clamp(0.0, 1.0) * 255.0).round() as u8
            });
            img.put_pixel(x, y, Rgb(px));
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_decodable() {
        let dir = tempfile::tempdir().unwrap();
        let a = generate(&dir.path().join("a"), 12, 7).unwrap();
        let b = generate(&dir.path().join("b"), 12, 7).unwrap();
        assert_eq!((a.images, a.bytes), (b.images, b.bytes));
        for (i, class) in (0..12).map(|i| (i, CLASSES[i % CLASSES.len()])) {
            let ext = if i % 8 == 7 { "png" } else { "jpg" };
            let name = format!("{i:05}.{ext}");
            let bytes_a = std::fs::read(dir.path().join("a").join(class).join(&name)).unwrap();
            let bytes_b = std::fs::read(dir.path().join("b").join(class).join(&name)).unwrap();
            assert_eq!(bytes_a, bytes_b);
            let img = image::load_from_memory(&bytes_a).unwrap();
            assert!((64..=128).contains(&img.width()) && (64..=128).contains(&img.height()));
        }
    }
}
