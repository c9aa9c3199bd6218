//! `tessera attention`: the last layer's class-token attention of a ViT checkpoint, one
//! heat-map per head beside the image, as the DINO paper's figure (and its
//! `visualize_attention.py`).
//!
//! The image is centre-cropped to a square and resized (Catmull-Rom) to the model's training
//! size (or `--size`, any multiple of the patch: the position table is resampled), normalised
//! like training, and run through the encoder. For each head the row of the class token over
//! the patches is scaled to its maximum, coloured (black → purple → orange → yellow) and
//! upsampled with nearest neighbours to the image's size. A CNN checkpoint is refused: it has
//! no attention. One JSON object goes to stdout.

use std::path::PathBuf;

use anyhow::{Context, bail};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use image::{Rgb, RgbImage, imageops};
use tessera_trainer::backbone::Backbone;
use tessera_trainer::feeder::{IMAGENET_MEAN, IMAGENET_STD};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A checkpoint directory (`RUN/checkpoints/step-…`) or a run directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The image to look at (any format the `image` crate decodes).
    #[arg(long)]
    pub image: PathBuf,
    /// The PNG to write: the image, then one heat-map per head, left to right.
    #[arg(long)]
    pub out: PathBuf,
    /// `student` (default) or `teacher` (the momentum teacher, which DINO evaluates).
    #[arg(long, default_value = "student")]
    pub which: tessera_trainer::eval::Which,
    /// Side in pixels the image is resized to. Default: the checkpoint's training size.
    #[arg(long)]
    pub size: Option<u32>,
    /// Magnification of the whole figure (nearest neighbour), for small images. Default 1.
    #[arg(long, default_value_t = 1)]
    pub zoom: u32,
}

/// Anchors of the heat-map colours, from 0 to 1 (close to matplotlib's `inferno`).
const COLOURS: [[f32; 3]; 5] = [
    [0.0, 0.0, 4.0],
    [87.0, 16.0, 110.0],
    [188.0, 55.0, 84.0],
    [249.0, 142.0, 9.0],
    [252.0, 255.0, 164.0],
];

pub fn run(args: Args) -> anyhow::Result<()> {
    type AB = Autodiff<Flex>;
    let device = Default::default();
    let encoder = tessera_trainer::eval::load_encoder::<AB>(&args.checkpoint, args.which, &device)
        .with_context(|| format!("loading {}", args.checkpoint.display()))?;
    let Backbone::Vit(vit) = encoder.backbone else {
        bail!(
            "{} holds a convolutional network ({:?}); attention maps need a ViT checkpoint",
            encoder.checkpoint.display(),
            encoder.config
        );
    };
    let patch = vit.patch_embed.patch_size as u32;
    let side = args.size.unwrap_or(encoder.img_size as u32);
    if side < patch || !side.is_multiple_of(patch) {
        bail!("--size {side} is not a positive multiple of the patch size {patch}");
    }
    if args.zoom == 0 {
        bail!("--zoom must be at least 1");
    }
    let image = image::open(&args.image)
        .with_context(|| format!("reading {}", args.image.display()))?
        .to_rgb8();
    let image = square(&image, side);

    // [1, 3, side, side], normalised as in training.
    let s = side as usize;
    let mut pixels = vec![0f32; 3 * s * s];
    for (x, y, p) in image.enumerate_pixels() {
        for c in 0..3 {
            let v = f32::from(p[c]) / 255.0;
            pixels[c * s * s + y as usize * s + x as usize] =
                (v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    let input = Tensor::<Flex, 4>::from_data(TensorData::new(pixels, [1, 3, s, s]), &device);
    let attention = vit.last_attention(input); // [1, heads, 1 + l, 1 + l]
    let [_, heads, tokens, _] = attention.dims();
    let grid = s / patch as usize;
    let cls = attention
        .narrow(2, 0, 1)
        .narrow(3, 1, tokens - 1)
        .reshape([heads, grid * grid]); // [heads, l]
    let values = cls
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading the attention back: {e:?}"))?;

    let mut figure = RgbImage::new(side * (1 + heads as u32), side);
    imageops::replace(&mut figure, &image, 0, 0);
    for (h, row) in values.chunks_exact(grid * grid).enumerate() {
        let max = row.iter().copied().fold(f32::MIN_POSITIVE, f32::max);
        let x0 = side * (1 + h as u32);
        for y in 0..side {
            for x in 0..side {
                let cell = (y / patch) as usize * grid + (x / patch) as usize;
                figure.put_pixel(x0 + x, y, colour(row[cell] / max));
            }
        }
    }
    let figure = if args.zoom > 1 {
        imageops::resize(
            &figure,
            figure.width() * args.zoom,
            figure.height() * args.zoom,
            imageops::FilterType::Nearest,
        )
    } else {
        figure
    };
    tessera_trainer::pictures::save_png(&figure, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({heads} heads, {grid}x{grid} patches) from {} (step {})",
        args.out.display(),
        encoder.checkpoint.display(),
        encoder.step
    );
    let json = serde_json::json!({
        "checkpoint": encoder.checkpoint,
        "step": encoder.step,
        "output": args.out,
        "heads": heads,
        "grid": grid,
        "width": figure.width(),
        "height": figure.height(),
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}

/// The centred largest square of `image`, resized to `side x side`.
fn square(image: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let edge = w.min(h);
    let crop = imageops::crop_imm(image, (w - edge) / 2, (h - edge) / 2, edge, edge).to_image();
    imageops::resize(&crop, side, side, imageops::FilterType::CatmullRom)
}

/// The heat-map colour of `t` in `[0, 1]`, interpolated between [`COLOURS`].
fn colour(t: f32) -> Rgb<u8> {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = t * (COLOURS.len() - 1) as f32;
    let i = (pos.floor() as usize).min(COLOURS.len() - 2);
    let f = pos - i as f32;
    let (a, b) = (COLOURS[i], COLOURS[i + 1]);
    Rgb(std::array::from_fn(|c| {
        (a[c] + (b[c] - a[c]) * f).round() as u8
    }))
}
