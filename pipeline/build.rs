//! Build probe for the JPEG decoder (issue #16): the fastest one this machine can build.
//!
//! The `libjpeg-turbo` feature is on by default. `mozjpeg-sys` then builds libjpeg-turbo
//! from source; on x86 its SIMD kernels need `nasm`, and without them libjpeg-turbo is no
//! faster than the pure-Rust zune-jpeg. So this script asks the same question mozjpeg-sys
//! asks (`nasm -v` on the `PATH`; ARM builds its SIMD with the C compiler) and enables the
//! libjpeg-turbo path (`cfg(tessera_libjpeg_turbo)`) only when the answer is yes. When it
//! is no, the build goes on with zune-jpeg and prints why and how to get the fast path.
//! `TESSERA_JPEG=zune` at build time chooses zune-jpeg on purpose (benchmarks, tests of
//! the pure-Rust path). The choice is recorded in `TESSERA_JPEG_DECODER`, which
//! `tessera profile` prints ([`decode::jpeg_decoder`] in the crate).

use std::env;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tessera_libjpeg_turbo)");
    println!("cargo::rerun-if-env-changed=TESSERA_JPEG");
    println!("cargo::rerun-if-changed=build.rs");
    let decoder = choose();
    if decoder.starts_with("libjpeg-turbo") {
        println!("cargo::rustc-cfg=tessera_libjpeg_turbo");
    }
    println!("cargo::rustc-env=TESSERA_JPEG_DECODER={decoder}");
}

/// The decoder this build uses, as `tessera profile` names it.
fn choose() -> String {
    if env::var_os("CARGO_FEATURE_LIBJPEG_TURBO").is_none() {
        return "zune-jpeg (pure Rust; built without the libjpeg-turbo feature)".into();
    }
    if env::var("TESSERA_JPEG").is_ok_and(|v| v == "zune") {
        return "zune-jpeg (pure Rust; TESSERA_JPEG=zune at build time)".into();
    }
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    match arch.as_str() {
        "x86_64" | "x86" => match nasm_version() {
            Some(version) => format!("libjpeg-turbo (SIMD, {version})"),
            None => {
                println!(
                    "cargo::warning=nasm not found: JPEGs will be decoded by the pure-Rust \
                     zune-jpeg, which needs more CPU per image than libjpeg-turbo and \
                     cannot decode just a crop (docs/PERFORMANCE.md). For the fast path install nasm \
                     (`apt-get install nasm`, `brew install nasm`), then \
                     `cargo clean -p mozjpeg-sys -p tessera-pipeline` and rebuild."
                );
                "zune-jpeg (pure Rust; nasm was not found at build time)".into()
            }
        },
        "aarch64" | "arm" => "libjpeg-turbo (SIMD, NEON)".into(),
        other => {
            println!(
                "cargo::warning=libjpeg-turbo has no SIMD kernels for {other}: JPEGs will be \
                 decoded by the pure-Rust zune-jpeg"
            );
            format!("zune-jpeg (pure Rust; no libjpeg-turbo SIMD for {other})")
        }
    }
}

/// `nasm -v`'s first line when a usable nasm (2.x or later) is on the `PATH`, as
/// mozjpeg-sys checks it.
fn nasm_version() -> Option<String> {
    let out = Command::new("nasm").arg("-v").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (out.status.success() && !line.contains("NASM version 0.")).then(|| {
        line.split(" compiled")
            .next()
            .unwrap_or(line)
            .replace("NASM version", "nasm")
    })
}
