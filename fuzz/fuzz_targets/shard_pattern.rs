//! Shard specs: brace expansion (`{000..146}`, `{a,b}`, nested), `::` joins, globs and
//! `@list` files. The spec and one list file come from the input; both are resolved in a
//! scratch directory holding a few shards, so nothing outside it is read. Contract: no
//! panic, bounded time and memory (typos like `{0..99999999999}` are errors), and every
//! resolved path exists or the error names the missing ones.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tessera_shards::ShardError;
use tessera_shards::source::{expand_braces, resolve};

#[derive(Debug, Arbitrary)]
struct Input {
    spec: String,
    list: String,
}

/// The scratch directory, made the working directory once: `a-000.tar` .. `a-003.tar`,
/// `b.tar.zst`, and `list.txt` (rewritten per input).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tessera_fuzz::scratch_dir().keep();
        for name in [
            "a-000.tar",
            "a-001.tar",
            "a-002.tar",
            "a-003.tar",
            "b.tar.zst",
        ] {
            std::fs::write(dir.join(name), b"").expect("write");
        }
        std::env::set_current_dir(&dir).expect("chdir");
        dir
    })
}

/// Inputs with a path separator could reach outside the scratch directory (absolute
/// paths, `../`, a glob of the whole tree): not tried, they would test the file system.
fn confined(text: &str) -> bool {
    !text.contains(['/', '\\'])
}

fuzz_target!(|input: Input| {
    // Brace expansion alone, on the raw spec (pure: no file system).
    if let Ok(names) = expand_braces(&input.spec) {
        assert!(!names.is_empty(), "expansion of {:?} is empty", input.spec);
        assert!(names.len() <= 4_000_000);
    }
    if !confined(&input.spec) || !confined(&input.list) {
        return;
    }
    let dir = scratch();
    std::fs::write(dir.join("list.txt"), &input.list).expect("write list");
    match resolve(&input.spec) {
        Ok(paths) => {
            for path in paths {
                assert!(
                    dir.join(&path).exists(),
                    "{} does not exist",
                    path.display()
                );
            }
        }
        Err(ShardError::Missing { paths }) => assert!(!paths.is_empty()),
        Err(_) => {}
    }
});
