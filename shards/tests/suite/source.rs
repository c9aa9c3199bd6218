//! Shard list specs: paths, globs, brace ranges and lists, `::` joins, `@list` files.

use std::fs;
use std::path::PathBuf;

use tessera_shards::ShardError;
use tessera_shards::source::resolve;

fn setup() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..12)
        .map(|i| dir.path().join(format!("train-{i:06}.tar")))
        .collect();
    for p in &paths {
        fs::write(p, b"").unwrap();
    }
    fs::create_dir(dir.path().join("val")).unwrap();
    fs::write(dir.path().join("val/v-0.tar"), b"").unwrap();
    (dir, paths)
}

#[test]
fn plain_paths_globs_and_ranges() {
    let (dir, paths) = setup();
    let d = dir.path().display();
    assert_eq!(
        resolve(&paths[3].display().to_string()).unwrap(),
        [paths[3].clone()]
    );
    assert_eq!(resolve(&format!("{d}/train-*.tar")).unwrap(), paths);
    assert_eq!(
        resolve(&format!("{d}/train-{{000002..000004}}.tar")).unwrap(),
        paths[2..5]
    );
    assert_eq!(
        resolve(&format!("{d}/train-00000{{1,0}}.tar")).unwrap(),
        [paths[1].clone(), paths[0].clone()]
    );
    let joined = resolve(&format!("{d}/val/*.tar::{d}/train-{{000000..000001}}.tar")).unwrap();
    assert_eq!(
        joined,
        [
            dir.path().join("val/v-0.tar"),
            paths[0].clone(),
            paths[1].clone()
        ]
    );
}

#[test]
fn list_files_are_relative_to_themselves() {
    let (dir, paths) = setup();
    let list = dir.path().join("val/shards.txt");
    fs::write(
        &list,
        format!(
            "# training shards\n\n../train-000011.tar\n  ../train-00000{{0..1}}.tar\n{}\n",
            dir.path().join("val/v-0.tar").display()
        ),
    )
    .unwrap();
    let got = resolve(&format!("@{}", list.display())).unwrap();
    assert_eq!(
        got,
        [
            dir.path().join("val/../train-000011.tar"),
            dir.path().join("val/../train-000000.tar"),
            dir.path().join("val/../train-000001.tar"),
            dir.path().join("val/v-0.tar")
        ]
    );
    assert_eq!(
        fs::canonicalize(&got[0]).unwrap(),
        fs::canonicalize(&paths[11]).unwrap()
    );
}

#[test]
fn missing_paths_are_named() {
    let (dir, _) = setup();
    let d = dir.path().display();
    match resolve(&format!("{d}/train-{{000010..000013}}.tar")) {
        Err(ShardError::Missing { paths }) => {
            assert_eq!(
                paths,
                [
                    dir.path().join("train-000012.tar"),
                    dir.path().join("train-000013.tar")
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        resolve(&format!("{d}/nothing-*.tar")),
        Err(ShardError::NoMatch { .. })
    ));
    assert!(matches!(
        resolve(&format!("@{d}/no-list.txt")),
        Err(ShardError::Io { .. })
    ));
}
