//! The input list: directories walked recursively and list files, in one deterministic
//! sorted order, with optional labels, cut into `--part I/N`.
//!
//! Order is the contract everything else rests on: sample keys, shard boundaries, which
//! copy of a duplicate is kept, and resuming after a kill all follow from it. Inputs keep
//! the order of the command line; within one input, paths sort by their bytes. A seeded
//! shuffle ([`InputSet::shuffle`]) replaces that order with one permutation of the whole
//! list, as deterministic: the same seed gives the same shards.
//! Hidden entries (names starting with `.`) are skipped and symlinked directories are not
//! followed (no cycles); a directory that cannot be read becomes an `unreadable` input, so
//! it is reported like any other bad input instead of stopping the run.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use super::error::BuildError;
use super::reject::{Reject, RejectReason};

/// One thing named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    /// A directory, walked recursively; sources are paths relative to it.
    Dir(PathBuf),
    /// A text file with one path a line (`#` comments and blank lines skipped); relative
    /// lines are relative to the list file's directory; the source is the line as written.
    List(PathBuf),
    /// A single image file; its source is its file name.
    File(PathBuf),
    /// A list of image URLs to download (`.txt`, `.csv`, `.tsv`, `.jsonl`; see
    /// [`super::url_list`]); sources are the URLs.
    Urls(PathBuf),
}

impl InputSpec {
    /// `Dir` or `File` by what `path` is on disk (`.txt`/`.lst` files are lists).
    pub fn classify(path: &Path) -> Result<InputSpec, BuildError> {
        let meta = fs::metadata(path).map_err(|source| BuildError::Input {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            return Ok(InputSpec::Dir(path.to_path_buf()));
        }
        let ext = path.extension().map(|e| e.to_ascii_lowercase());
        if ext.as_deref().is_some_and(|e| e == "txt" || e == "lst") {
            return Ok(InputSpec::List(path.to_path_buf()));
        }
        Ok(InputSpec::File(path.to_path_buf()))
    }
}

/// Where labels come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LabelSource {
    /// No labels; samples have no `.cls`.
    #[default]
    None,
    /// ImageFolder: the first folder under the input root is the class (for list files,
    /// the file's parent folder). Class names sort to 0..N-1.
    Folders,
    /// A CSV of `path,label` (path as the sample's source or as given in a list). Labels
    /// that are all integers are used as they are; otherwise names sort to 0..N-1.
    Csv(PathBuf),
}

/// A label as resolved for one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// Labels were not requested.
    NotRequested,
    /// The class index.
    Class(u32),
    /// Labels were requested and this input has none (it is rejected as `unlabelled`).
    Missing,
}

/// One input file in the sorted list.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Where to read it.
    pub path: PathBuf,
    /// Its path relative to its input root (what the manifest and `.json` report).
    pub source: String,
    /// Index of the [`InputSpec`] it came from.
    pub root: usize,
    /// Its label.
    pub label: Label,
    /// Set when the walk already knows it is unusable (an unreadable directory).
    pub problem: Option<Reject>,
    /// For an entry of a URL list (`path` and `source` are then the URL): its caption and
    /// other columns.
    pub row: Option<std::sync::Arc<super::url_list::UrlRow>>,
}

/// The sorted inputs and, when labels are names, the class table (index → name).
#[derive(Debug, Clone)]
pub struct InputSet {
    /// Every input, in order.
    pub files: Vec<InputFile>,
    /// Class names by index, when labels are names (folders or a CSV of names).
    pub classes: Option<Vec<String>>,
}

impl InputSet {
    /// Put the inputs in an order drawn from `seed` (every input kept, labels with them).
    ///
    /// Sorted order puts an ImageFolder's classes one after the other, so each shard holds
    /// one class or a few, and a reader's shuffle buffer mixes only what is within its reach.
    /// The permutation is of the whole list, before `--part` cuts it, so the parts of a job
    /// array stay disjoint and cover everything.
    pub fn shuffle(&mut self, seed: u64) {
        use rand::SeedableRng;
        use rand::seq::SliceRandom;
        self.files
            .shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }
}

/// One part of a job array: `index` in `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// This part, 0-based.
    pub index: u32,
    /// How many parts the job has.
    pub count: u32,
}

impl Part {
    /// The whole job as one part.
    pub const WHOLE: Part = Part { index: 0, count: 1 };

    /// The contiguous range of `0..total` this part owns. Ranges of all parts are
    /// disjoint, cover everything and differ in length by at most one.
    pub fn range(self, total: usize) -> std::ops::Range<usize> {
        let (i, n) = (self.index as usize, self.count.max(1) as usize);
        (total * i / n)..(total * (i + 1) / n)
    }
}

impl std::str::FromStr for Part {
    type Err = String;

    /// `I/N` with `0 <= I < N`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let parse = || -> Option<Part> {
            let (i, n) = spec.split_once('/')?;
            let part = Part {
                index: i.trim().parse().ok()?,
                count: n.trim().parse().ok()?,
            };
            (part.count > 0 && part.index < part.count).then_some(part)
        };
        parse().ok_or_else(|| format!("expected I/N with 0 <= I < N (e.g. 0/4), got `{spec}`"))
    }
}

/// Walk and read every input, sort, and resolve labels. The directory `exclude` (the
/// output directory, canonicalised) is never walked, so `tessera shard . --out shards`
/// does not take its own shards as inputs on a rerun.
pub fn collect(
    specs: &[InputSpec],
    labels: &LabelSource,
    exclude: Option<&Path>,
) -> Result<InputSet, BuildError> {
    let mut files = Vec::new();
    for (root, spec) in specs.iter().enumerate() {
        let start = files.len();
        match spec {
            InputSpec::Dir(dir) => {
                let walk = Walk {
                    root_dir: dir,
                    root,
                    exclude,
                };
                walk.dir(dir, &mut files);
            }
            InputSpec::List(list) => read_list(list, root, &mut files)?,
            InputSpec::Urls(list) => {
                // URL lists keep their order (`--part` slices the list as given).
                super::url_list::read(list, root, &mut files)?;
                continue;
            }
            InputSpec::File(path) => {
                let source = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                files.push(input(path.clone(), source, root));
            }
        }
        files[start..].sort_by(|a, b| a.path.as_os_str().cmp(b.path.as_os_str()));
    }
    let classes = match labels {
        LabelSource::None => None,
        LabelSource::Folders => Some(label_by_folder(specs, &mut files)),
        LabelSource::Csv(csv) => label_by_csv(csv, &mut files)?,
    };
    Ok(InputSet { files, classes })
}

fn input(path: PathBuf, source: String, root: usize) -> InputFile {
    InputFile {
        path,
        source,
        root,
        label: Label::NotRequested,
        problem: None,
        row: None,
    }
}

/// One input directory being walked.
struct Walk<'a> {
    root_dir: &'a Path,
    root: usize,
    exclude: Option<&'a Path>,
}

impl Walk<'_> {
    fn dir(&self, dir: &Path, files: &mut Vec<InputFile>) {
        let root = self.root;
        let relative = |path: &Path| {
            path.strip_prefix(self.root_dir)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned()
        };
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) => {
                let mut bad = input(dir.to_path_buf(), relative(dir), root);
                bad.problem = Some(Reject::new(
                    RejectReason::Unreadable,
                    format!("cannot list directory: {err}"),
                ));
                files.push(bad);
                return;
            }
        };
        let mut names: Vec<(OsString, PathBuf)> = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => names.push((entry.file_name(), entry.path())),
                Err(err) => {
                    let mut bad = input(dir.to_path_buf(), relative(dir), root);
                    bad.problem = Some(Reject::new(
                        RejectReason::Unreadable,
                        format!("cannot list directory: {err}"),
                    ));
                    files.push(bad);
                    return;
                }
            }
        }
        names.sort();
        for (name, path) in names {
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            match fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    let excluded = self
                        .exclude
                        .is_some_and(|ex| fs::canonicalize(&path).is_ok_and(|c| c == ex));
                    if is_link {
                        tracing::warn!(path = %path.display(), "not following symlinked directory");
                    } else if !excluded {
                        self.dir(&path, files);
                    }
                }
                // A dangling link or a file we may not stat: reading it will say what is wrong.
                _ => files.push(input(path.clone(), relative(&path), root)),
            }
        }
    }
}

fn read_list(list: &Path, root: usize, files: &mut Vec<InputFile>) -> Result<(), BuildError> {
    let text = fs::read_to_string(list).map_err(|source| BuildError::Input {
        path: list.to_path_buf(),
        source,
    })?;
    let base = list.parent().unwrap_or(Path::new("."));
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || !seen.insert(line) {
            continue;
        }
        files.push(input(base.join(line), line.to_string(), root));
    }
    Ok(())
}

fn label_by_folder(specs: &[InputSpec], files: &mut [InputFile]) -> Vec<String> {
    let class_of = |file: &InputFile| -> Option<String> {
        match specs.get(file.root) {
            Some(InputSpec::Dir(_)) => {
                let mut parts = Path::new(&file.source).components();
                let first = parts.next()?;
                parts.next()?; // a file directly in the root has no class folder
                Some(first.as_os_str().to_string_lossy().into_owned())
            }
            Some(InputSpec::List(_)) => Some(
                Path::new(&file.source)
                    .parent()?
                    .file_name()?
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => file
                .path
                .parent()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
        }
    };
    let names: Vec<Option<String>> = files.iter().map(class_of).collect();
    let classes: Vec<String> = names
        .iter()
        .flatten()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for (file, name) in files.iter_mut().zip(names) {
        file.label = match name.and_then(|n| classes.binary_search(&n).ok()) {
            Some(index) => Label::Class(index as u32),
            None => Label::Missing,
        };
    }
    classes
}

fn label_by_csv(csv: &Path, files: &mut [InputFile]) -> Result<Option<Vec<String>>, BuildError> {
    let text = fs::read_to_string(csv).map_err(|source| BuildError::Input {
        path: csv.to_path_buf(),
        source,
    })?;
    let mut table: HashMap<String, String> = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || (number == 0 && line.eq_ignore_ascii_case("path,label"))
        {
            continue;
        }
        let Some((path, label)) = line.rsplit_once(',') else {
            return Err(BuildError::LabelsCsv {
                path: csv.to_path_buf(),
                line: number + 1,
                reason: "expected `path,label`".into(),
            });
        };
        let (path, label) = (
            path.trim().trim_matches('"'),
            label.trim().trim_matches('"'),
        );
        if label.is_empty() {
            return Err(BuildError::LabelsCsv {
                path: csv.to_path_buf(),
                line: number + 1,
                reason: "empty label".into(),
            });
        }
        table.insert(path.to_string(), label.to_string());
    }
    let numeric = table.values().all(|l| l.parse::<u32>().is_ok());
    let classes: Option<Vec<String>> = (!numeric).then(|| {
        table
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    });
    for file in files.iter_mut() {
        let label = table
            .get(&file.source)
            .or_else(|| table.get(&*file.path.to_string_lossy()));
        file.label = match (label, &classes) {
            (None, _) => Label::Missing,
            (Some(l), None) => l.parse().map_or(Label::Missing, Label::Class),
            (Some(l), Some(classes)) => classes
                .binary_search(l)
                .map_or(Label::Missing, |i| Label::Class(i as u32)),
        };
    }
    Ok(classes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_disjoint_and_cover_everything() {
        for total in [0, 1, 7, 100, 101] {
            for count in 1..6 {
                let mut covered = Vec::new();
                for index in 0..count {
                    covered.extend(Part { index, count }.range(total));
                }
                assert_eq!(covered, (0..total).collect::<Vec<_>>());
            }
        }
        assert!("3/3".parse::<Part>().is_err());
        assert_eq!("1/4".parse::<Part>(), Ok(Part { index: 1, count: 4 }));
    }

    #[test]
    fn shuffle_is_a_seeded_permutation_that_keeps_labels() {
        let dir = tempfile::tempdir().unwrap();
        for class in ["a", "b", "c", "d"] {
            for i in 0..25 {
                let path = dir.path().join(class).join(format!("{i:02}.jpg"));
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(path, b"x").unwrap();
            }
        }
        let sorted = collect(
            &[InputSpec::Dir(dir.path().to_path_buf())],
            &LabelSource::Folders,
            None,
        )
        .unwrap();
        let shuffled = |seed| {
            let mut set = sorted.clone();
            set.shuffle(seed);
            set.files
                .into_iter()
                .map(|f| (f.source, format!("{:?}", f.label)))
                .collect::<Vec<_>>()
        };
        let (first, again, other) = (shuffled(7), shuffled(7), shuffled(8));
        assert_eq!(first, again, "the same seed gives the same order");
        assert_ne!(first, other, "another seed gives another order");
        // A permutation: every input once, each with its own folder's label.
        let mut sorted_back = first.clone();
        sorted_back.sort();
        let mut expected: Vec<_> = sorted
            .files
            .iter()
            .map(|f| (f.source.clone(), format!("{:?}", f.label)))
            .collect();
        expected.sort();
        assert_eq!(sorted_back, expected);
        // Classes mixed: the first quarter (one class when sorted) holds several.
        let classes: BTreeSet<_> = first[..25].iter().map(|(_, l)| l.clone()).collect();
        assert!(
            classes.len() >= 3,
            "first 25 inputs hold classes {classes:?}"
        );
    }

    #[test]
    fn walks_sorted_with_folder_labels() {
        let dir = tempfile::tempdir().unwrap();
        for rel in [
            "out/shard-000000.tar",
            "dog/b.jpg",
            "cat/z.jpg",
            "cat/sub/a.jpg",
            "loose.jpg",
            ".hidden/x.jpg",
            "dog/.DS_Store",
        ] {
            let path = dir.path().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, b"x").unwrap();
        }
        let set = collect(
            &[InputSpec::Dir(dir.path().to_path_buf())],
            &LabelSource::Folders,
            Some(&dir.path().join("out").canonicalize().unwrap()),
        )
        .unwrap();
        let got: Vec<(&str, Label)> = set
            .files
            .iter()
            .map(|f| (f.source.as_str(), f.label))
            .collect();
        assert_eq!(
            got,
            [
                ("cat/sub/a.jpg", Label::Class(0)),
                ("cat/z.jpg", Label::Class(0)),
                ("dog/b.jpg", Label::Class(1)),
                ("loose.jpg", Label::Missing),
            ]
        );
        assert_eq!(
            set.classes,
            Some(vec!["cat".to_string(), "dog".to_string()])
        );
    }
}
