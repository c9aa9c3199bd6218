//! Every image decode path on arbitrary bytes, with the pixel limit on: the format is
//! sniffed from the bytes (JPEG, PNG, WebP, GIF), EXIF orientation applied. JPEG goes
//! through both decoders: libjpeg-turbo where nasm is installed (its crop-aware and
//! DCT-scaled decode is what [`Decoder::decode_for_crop`] exercises), and the pure-Rust
//! zune-jpeg ([`Decoder::with_zune_jpeg`]; the only one when built without libjpeg-turbo).
//! libjpeg-turbo's C code is not compiled with AddressSanitizer, so a memory error inside
//! it shows only when it crashes.
//!
//! Contract: no panic escapes (a decoder's own panic is caught and becomes
//! `DecodeError::Panicked`, which libFuzzer still reports, so decoder bugs surface too),
//! no hang, no allocation past the limit; a decoded image is exactly
//! `width * height * 3` bytes within the limit, and the crop lies inside it; a failed
//! decode leaves the output empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use tessera_pipeline::decode::{Decoder, RgbImage};
use tessera_pipeline::transforms::crop::random_resized_crop_box;

/// 16 Mpixel: the limit's check is the same code at any value; the default (89.5 Mpixel)
/// would let each "huge" header cost a 268 MB allocation and slow the fuzzer 100-fold.
const MAX_PIXELS: u64 = 1 << 24;

fn check(out: &RgbImage) {
    assert_eq!(
        out.data.len(),
        out.width as usize * out.height as usize * 3,
        "{}x{}",
        out.width,
        out.height
    );
    assert!(u64::from(out.width) * u64::from(out.height) <= MAX_PIXELS);
}

fuzz_target!(|data: &[u8]| {
    for zune in [false, true] {
        run(data, zune);
    }
});

/// A full decode, a view-aware one, and a lenient one, with one of the JPEG decoders.
fn run(data: &[u8], zune: bool) {
    let mut decoder = Decoder::new(MAX_PIXELS).with_zune_jpeg(zune);
    let mut out = RgbImage::default();
    match decoder.decode(data, &mut out) {
        Ok(_) => check(&out),
        Err(_) => assert_eq!((out.width, out.height, out.data.len()), (0, 0, 0)),
    }

    // The view-aware decode, with a RandomResizedCrop drawn as a recipe would.
    let size = [16u32, 64, 224][data.len() % 3];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(data.len() as u64);
    let mut draw =
        |w: u32, h: u32| random_resized_crop_box(&mut rng, w, h, [0.08, 1.0], [0.75, 4.0 / 3.0]);
    match decoder.decode_for_crop(data, &mut out, size, &mut draw) {
        Ok((_, crop)) => {
            check(&out);
            let eps = 1e-6;
            assert!(crop.top >= -eps && crop.left >= -eps, "{crop:?}");
            assert!(crop.height > 0.0 && crop.width > 0.0, "{crop:?}");
            assert!(
                crop.top + crop.height <= f64::from(out.height) + eps,
                "{crop:?} in {}x{}",
                out.width,
                out.height
            );
            assert!(
                crop.left + crop.width <= f64::from(out.width) + eps,
                "{crop:?} in {}x{}",
                out.width,
                out.height
            );
        }
        Err(_) => assert_eq!((out.width, out.height, out.data.len()), (0, 0, 0)),
    }

    // Lenient mode (truncated JPEGs filled with grey) takes other branches.
    let mut lenient = Decoder::new(MAX_PIXELS)
        .with_zune_jpeg(zune)
        .with_lenient_jpeg(true);
    if lenient.decode(data, &mut out).is_ok() {
        check(&out);
    }
}
