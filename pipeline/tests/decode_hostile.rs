//! Every file of `shared/testdata/hostile/files` is handled as its manifest expects:
//! decoded upright to sane RGB, or refused with a typed error; never a panic.
//! Reference means and sizes were measured with Pillow 11 (`Image.open(f).convert("RGB")`,
//! `ImageOps.exif_transpose` for the EXIF files).

use std::path::PathBuf;

use tessera_pipeline::decode::{DecodeError, Decoder, RgbImage, SourceFormat};
use tessera_pipeline::transforms::CropBox;

fn hostile(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/hostile/files")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn decode(name: &str) -> Result<RgbImage, DecodeError> {
    let mut out = RgbImage::default();
    Decoder::default()
        .decode(&hostile(name), &mut out)
        .map(|_| out)
}

fn mean(image: &RgbImage) -> [f64; 3] {
    let mut sum = [0f64; 3];
    for px in image.data.chunks_exact(3) {
        for c in 0..3 {
            sum[c] += f64::from(px[c]);
        }
    }
    let n = (image.width as f64 * image.height as f64).max(1.0);
    sum.map(|s| s / n)
}

fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| f64::from(x.abs_diff(y)))
        .sum::<f64>()
        / a.data.len() as f64
}

#[test]
fn every_manifest_file_decodes_or_fails_cleanly() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/hostile");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("manifest.json")).unwrap()).unwrap();
    let mut decoder = Decoder::default();
    let mut out = RgbImage::default();
    let files = manifest["files"].as_array().unwrap();
    assert!(files.len() >= 40);
    for entry in files {
        let name = entry["file"].as_str().unwrap();
        let expect = entry["expect"].as_str().unwrap();
        let bytes = std::fs::read(root.join("files").join(name)).unwrap();
        let result = decoder.decode(&bytes, &mut out);
        let must_decode = expect.starts_with("decode") && !expect.contains("clean");
        match &result {
            Ok(_) => {
                assert!(out.width > 0 && out.height > 0, "{name}: empty output");
                assert_eq!(
                    out.data.len(),
                    out.width as usize * out.height as usize * 3,
                    "{name}"
                );
            }
            Err(e) => {
                assert!(
                    !must_decode,
                    "{name} must decode ({expect}) but: {e} [{}]",
                    e.reason()
                );
                assert!(
                    [
                        "empty",
                        "unknown_format",
                        "unsupported",
                        "too_many_pixels",
                        "corrupt"
                    ]
                    .contains(&e.reason()),
                    "{name}: {}",
                    e.reason()
                );
                assert_eq!(
                    (out.width, out.height),
                    (0, 0),
                    "{name}: output not cleared"
                );
            }
        }
    }
}

#[test]
fn damaged_and_fake_files_give_typed_errors() {
    assert_eq!(decode("zero_bytes.jpg").unwrap_err().reason(), "empty");
    assert_eq!(
        decode("not_an_image.jpg").unwrap_err().reason(),
        "unknown_format"
    );
    assert_eq!(
        decode("truncated_headers.jpg").unwrap_err().reason(),
        "corrupt"
    );
    // The arithmetic-coded JPEG: zune-jpeg has no arithmetic decoder; refused, not a panic.
    // libjpeg-turbo decodes it, to the same picture as the Huffman-coded reference.
    if tessera_pipeline::decode::uses_libjpeg_turbo() {
        let diff = mean_abs_diff(
            &decode("arithmetic.jpg").unwrap(),
            &decode("baseline_ref.jpg").unwrap(),
        );
        // cjpeg re-encoded the photo at its default quality 75: 2.7 levels apart.
        assert!(diff < 4.0, "arithmetic.jpg vs baseline_ref.jpg: {diff}");
    } else {
        let err = decode("arithmetic.jpg").unwrap_err();
        assert_eq!(err.reason(), "unsupported", "{err}");
    }
    // Truncated at 50%: refused by default; the lenient decoder fills the rest with grey.
    assert_eq!(
        decode("truncated_50pct.jpg").unwrap_err().reason(),
        "corrupt"
    );
    let mut out = RgbImage::default();
    Decoder::default()
        .with_lenient_jpeg(true)
        .decode(&hostile("truncated_50pct.jpg"), &mut out)
        .unwrap();
    assert_eq!((out.width, out.height), (500, 375));
}

#[test]
fn bombs_are_refused_from_the_header() {
    let err = decode("bomb_jpeg_65500x65500.jpg").unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooManyPixels {
                width: 65500,
                height: 65500,
                ..
            }
        ),
        "{err}"
    );
    let err = decode("bomb_real_12000x9000.jpg").unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::TooManyPixels {
                width: 12000,
                height: 9000,
                ..
            }
        ),
        "{err}"
    );
    // With a higher limit the real one decodes (flat grey).
    let mut out = RgbImage::default();
    Decoder::new(120_000_000)
        .decode(&hostile("bomb_real_12000x9000.jpg"), &mut out)
        .unwrap();
    assert_eq!((out.width, out.height), (12000, 9000));
    // A small limit refuses an ordinary photo before allocating.
    let err = Decoder::new(1000)
        .decode(&hostile("baseline_ref.jpg"), &mut out)
        .unwrap_err();
    assert_eq!(err.reason(), "too_many_pixels");
    let err = Decoder::new(1000)
        .decode(&hostile("rgba.png"), &mut out)
        .unwrap_err();
    assert_eq!(err.reason(), "too_many_pixels");
}

#[test]
fn exif_orientations_match_the_upright_reference() {
    let reference = decode("exif_upright_ref.jpg").unwrap();
    assert_eq!((reference.width, reference.height), (480, 320));
    for (name, orientation) in [
        ("exif_orientation_2.jpg", 2),
        ("exif_orientation_3.jpg", 3),
        ("exif_orientation_6.jpg", 6),
        ("exif_orientation_8.jpg", 8),
    ] {
        let mut out = RgbImage::default();
        let info = Decoder::default().decode(&hostile(name), &mut out).unwrap();
        assert_eq!(info.orientation, orientation, "{name}");
        // Pillow measures 0.52 (2, 3) and 0.89 (6, 8) levels: JPEG re-encoding noise.
        let diff = mean_abs_diff(&out, &reference);
        assert!(diff < 1.5, "{name}: mean abs diff {diff}");
    }
    let tagged = decode("exif_exiftool_orient6.jpg").unwrap();
    assert_eq!((tagged.width, tagged.height), (375, 500));
}

#[test]
fn progressive_transcode_is_pixel_identical() {
    assert_eq!(
        decode("progressive_jpegtran.jpg").unwrap(),
        decode("baseline_ref.jpg").unwrap()
    );
}

#[test]
fn colour_layouts_convert_like_pillow() {
    // (file, Pillow's RGB mean, tolerance in levels)
    let cases: [(&str, [f64; 3], f64); 9] = [
        ("rgb16.png", [32.55, 47.61, 29.45], 0.6),
        ("palette.png", [110.17, 132.37, 71.9], 0.6),
        ("rgba.png", [158.59, 85.8, 51.49], 0.6),
        ("gray_alpha.png", [118.57, 118.57, 118.57], 0.6),
        ("static.gif", [32.53, 47.63, 29.48], 0.6),
        ("lossy.webp", [32.46, 47.77, 29.31], 1.0),
        ("interlaced_adam7.png", [32.55, 47.61, 29.45], 0.6),
        ("png_named_jpg.jpg", [152.24, 148.04, 115.42], 0.6),
        // Adobe-inverted CMYK: Pillow's CMYK->RGB gives this mean; a non-inverting
        // conversion would give roughly 255 minus it.
        ("cmyk_imagemagick.jpg", [32.58, 47.35, 29.48], 4.0),
    ];
    for (name, expected, tol) in cases {
        let image = decode(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let m = mean(&image);
        for c in 0..3 {
            assert!(
                (m[c] - expected[c]).abs() < tol,
                "{name}: mean {m:?} vs Pillow {expected:?}"
            );
        }
    }
    let grey = decode("gray_cjpeg.jpg").unwrap();
    assert!(
        grey.data
            .chunks_exact(3)
            .all(|p| p[0] == p[1] && p[1] == p[2])
    );
    assert!((mean(&grey)[0] - 41.04).abs() < 0.6);
}

#[test]
fn sizes_and_formats_are_reported() {
    let mut out = RgbImage::default();
    let mut decoder = Decoder::default();
    let info = decoder
        .decode(&hostile("png_named_jpg.jpg"), &mut out)
        .unwrap();
    assert_eq!(info.format, SourceFormat::Png);
    for (name, w, h) in [
        ("odd_dims_333x251.jpg", 333, 251),
        ("tiny_1x1.jpg", 1, 1),
        ("tiny_16x12.jpg", 16, 12),
        ("extreme_aspect_2000x20.jpg", 2000, 20),
        ("large_6000x4000.jpg", 6000, 4000),
        ("missing_eoi.jpg", 500, 375),
        ("trailing_garbage.jpg", 500, 375),
        ("big_comment.jpg", 500, 375),
    ] {
        decoder
            .decode(&hostile(name), &mut out)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((out.width, out.height), (w, h), "{name}");
    }
}

/// `decode_for_crop` gives the crop's pixels exactly as a full decode has them (with
/// libjpeg-turbo only the crop's rows and MCU columns are decoded; without it the whole
/// image is), for every chroma layout, progressive and restart-marker files, odd sizes
/// and EXIF-rotated ones (decoded whole, then rotated).
#[test]
fn crop_decodes_equal_the_same_crop_of_a_full_decode() {
    let mut decoder = Decoder::default();
    for name in [
        "baseline_ref.jpg",
        "progressive_cjpeg_q90.jpg",
        "restart_markers.jpg",
        "sampling_444.jpg",
        "sampling_422.jpg",
        "gray_cjpeg.jpg",
        "odd_dims_333x251.jpg",
        "exif_orientation_6.jpg",
        "cmyk_imagemagick.jpg",
        "rgba.png",
    ] {
        let bytes = hostile(name);
        let mut full = RgbImage::default();
        decoder.decode(&bytes, &mut full).unwrap();
        for (left, top, width, height) in [(0, 0, 7, 5), (17, 9, 100, 61), (33, 40, 150, 200)] {
            let (left, top) = (left.min(full.width - 1), top.min(full.height - 1));
            let width = width.min(full.width - left);
            let height = height.min(full.height - top);
            let drawn = CropBox {
                top: f64::from(top),
                left: f64::from(left),
                height: f64::from(height),
                width: f64::from(width),
            };
            let mut sizes = None;
            let mut part = RgbImage::default();
            let (info, crop) = decoder
                .decode_for_crop(&bytes, &mut part, 1000, &mut |w, h| {
                    sizes = Some((w, h));
                    drawn
                })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                sizes,
                Some((full.width, full.height)),
                "{name}: upright size"
            );
            assert_eq!(
                info.scale_denominator, 1,
                "{name}: views larger than the crop never scale"
            );
            assert_eq!((crop.width, crop.height), (drawn.width, drawn.height));
            for y in 0..height {
                for x in 0..width {
                    assert_eq!(
                        part.pixel(crop.left as u32 + x, crop.top as u32 + y),
                        full.pixel(left + x, top + y),
                        "{name}: crop {drawn:?} pixel ({x}, {y})"
                    );
                }
            }
        }
    }
}

/// A large crop of a large photo bound for a small view is decoded at a reduced DCT scale
/// with libjpeg-turbo (the box shrinks with it), and at full size without.
#[test]
fn large_crops_use_dct_scaling_with_libjpeg_turbo() {
    let bytes = hostile("large_6000x4000.jpg");
    let drawn = CropBox {
        top: 1000.0,
        left: 1500.0,
        height: 2000.0,
        width: 3000.0,
    };
    let mut out = RgbImage::default();
    let (info, crop) = Decoder::default()
        .decode_for_crop(&bytes, &mut out, 224, &mut |_, _| drawn)
        .unwrap();
    if tessera_pipeline::decode::uses_libjpeg_turbo() {
        // 2000 / 8 = 250 >= 224: the smallest scale that keeps the view's detail.
        assert_eq!(info.scale_denominator, 8);
        assert_eq!((crop.width, crop.height), (375.0, 250.0));
        assert!(out.width >= 375 && out.width < 375 + 16 && out.height == 250);
    } else {
        assert_eq!(info.scale_denominator, 1);
        assert_eq!(crop, drawn);
        assert_eq!((out.width, out.height), (6000, 4000));
    }
    assert!(crop.left + crop.width <= f64::from(out.width));
    assert!(crop.top + crop.height <= f64::from(out.height));
}

#[test]
fn zune_jpeg_on_request_decodes_whole_images_like_the_default_decoder() {
    let bytes = hostile("baseline_ref.jpg");
    let mut default = RgbImage::default();
    Decoder::default().decode(&bytes, &mut default).unwrap();
    let mut zune = Decoder::default().with_zune_jpeg(true);
    let mut out = RgbImage::default();
    zune.decode(&bytes, &mut out).unwrap();
    // The two decoders' IDCT and chroma upsampling differ by a level here and there.
    let diff = mean_abs_diff(&out, &default);
    assert!(diff < 1.0, "mean abs diff {diff}");

    // zune-jpeg decodes the whole image and draws the crop on it, at full scale.
    let drawn = CropBox {
        top: 10.0,
        left: 20.0,
        height: 100.0,
        width: 120.0,
    };
    let (info, crop) = zune
        .decode_for_crop(&bytes, &mut out, 16, &mut |_, _| drawn)
        .unwrap();
    assert_eq!(info.scale_denominator, 1);
    assert_eq!(crop, drawn);
    assert_eq!((out.width, out.height), (default.width, default.height));
}

/// `TESSERA_JPEG=zune` at run time (scripts/test.sh's second run of these binaries) makes
/// every default decoder zune-jpeg: the arithmetic-coded JPEG, which only libjpeg-turbo
/// decodes, is refused. Without the variable the test runs itself again with it set, so a
/// switch that stopped working fails here, not by a second run quietly using libjpeg-turbo.
#[test]
fn tessera_jpeg_zune_at_run_time_switches_every_default_decoder() {
    const NAME: &str = "tessera_jpeg_zune_at_run_time_switches_every_default_decoder";
    if std::env::var("TESSERA_JPEG").as_deref() == Ok("zune") {
        assert!(!tessera_pipeline::decode::uses_libjpeg_turbo());
        assert!(tessera_pipeline::decode::jpeg_decoder().starts_with("zune-jpeg"));
        let err = decode("arithmetic.jpg").unwrap_err();
        assert_eq!(err.reason(), "unsupported", "{err}");
        return;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--quiet"])
        .env("TESSERA_JPEG", "zune")
        .status()
        .unwrap();
    assert!(status.success(), "the run with TESSERA_JPEG=zune failed");
}
