//! Shard lists: from one user-given spec to an ordered list of shard paths.
//!
//! A spec is one or more parts joined by `::` (the WebDataset convention); the shards of
//! all parts are concatenated in order. Each part is:
//! - `@FILE`: a list file, one spec per line (so a line may itself be a glob or range);
//!   blank lines and lines starting with `#` are ignored; relative entries are relative to
//!   the list file's directory;
//! - otherwise a path pattern, first brace-expanded — numeric ranges keep the zero padding
//!   (`train-{000000..000146}.tar`, padding taken from the wider bound when either bound has
//!   a leading zero), lists `{a,b,c}`, nested and repeated braces expand left to right —
//!   then, for each expansion containing `*`, `?` or `[`, globbed (matches sorted
//!   by path). A glob that matches nothing is [`ShardError::NoMatch`].
//!
//! The order is deterministic: spec order, expansion order, sorted glob matches. Paths
//! named explicitly (plain or from a range or list) that do not exist are collected into
//! one [`ShardError::Missing`] naming them all.
//!
//! A part starting with `s3://`, `gs://`, `az://` or `http(s)://` names remote shards: the
//! same braces apply, globs are matched against a listing of the store, and explicit
//! names are checked to exist (see [`crate::remote::list`]). A remote shard is carried as
//! a path whose text is its URL ([`crate::remote::url_of`]). Other schemes are
//! [`ShardError::UnsupportedUrl`].

mod braces;

use std::path::{Path, PathBuf};

pub use braces::expand_braces;
pub(crate) use braces::{Budget, for_each_name};

use crate::ShardError;

/// How deep `@list` files may include other `@list` files.
const MAX_LIST_DEPTH: usize = 8;

/// Resolve a shard spec (see the module docs) to an ordered list of existing paths (and
/// URLs of existing remote shards).
pub fn resolve(spec: &str) -> Result<Vec<PathBuf>, ShardError> {
    let mut shards = Shards {
        budget: Budget::new(),
        found: Vec::new(),
        missing: Vec::new(),
    };
    shards.add(spec, None, 0)?;
    if !shards.missing.is_empty() {
        return Err(ShardError::Missing {
            paths: shards.missing,
        });
    }
    Ok(shards.found)
}

/// The shards of one spec so far; one brace-expansion budget covers all of its parts and
/// list files.
struct Shards {
    budget: Budget,
    found: Vec<PathBuf>,
    missing: Vec<PathBuf>,
}

impl Shards {
    /// Adds the shards of `spec`, whose relative paths are relative to `base`, read at
    /// `@list` nesting `depth`.
    fn add(&mut self, spec: &str, base: Option<&Path>, depth: usize) -> Result<(), ShardError> {
        for part in spec.split("::").map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(list) = part.strip_prefix('@') {
                self.add_list(part, &relative_to(base, list), depth)?;
            } else if crate::remote::is_url(part) {
                crate::remote::list::resolve_part(
                    part,
                    &mut self.budget,
                    &mut self.found,
                    &mut self.missing,
                )?;
            } else {
                let (found, missing) = (&mut self.found, &mut self.missing);
                for_each_name(part, &mut self.budget, &mut |item| {
                    add_local(item, base, found, missing)
                })?;
            }
        }
        Ok(())
    }

    /// Adds every spec line of the list file `list` (named `part` in its spec).
    fn add_list(&mut self, part: &str, list: &Path, depth: usize) -> Result<(), ShardError> {
        if depth >= MAX_LIST_DEPTH {
            return Err(ShardError::BadPattern {
                pattern: part.to_string(),
                reason: format!("list files nested more than {MAX_LIST_DEPTH} deep"),
            });
        }
        let text = std::fs::read_to_string(list).map_err(|e| ShardError::io(list.display(), e))?;
        let dir = list.parent().map(Path::to_path_buf).unwrap_or_default();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            self.add(line, Some(&dir), depth + 1)?;
        }
        Ok(())
    }
}

/// One expanded local name (relative to `base`): a glob's sorted matches (at least one),
/// or the path itself, found or missing.
fn add_local(
    item: &str,
    base: Option<&Path>,
    found: &mut Vec<PathBuf>,
    missing: &mut Vec<PathBuf>,
) -> Result<(), ShardError> {
    let path = relative_to(base, item);
    if !item.contains(['*', '?', '[']) {
        if path.exists() {
            found.push(path);
        } else {
            missing.push(path);
        }
        return Ok(());
    }
    let pattern = path.to_string_lossy();
    let mut matches = glob::glob(&pattern)
        .map_err(|e| ShardError::BadPattern {
            pattern: pattern.to_string(),
            reason: e.to_string(),
        })?
        .map(|m| m.map_err(|e| ShardError::io(e.path().display().to_string(), e.into())))
        .collect::<Result<Vec<_>, _>>()?;
    if matches.is_empty() {
        return Err(ShardError::NoMatch {
            pattern: pattern.into_owned(),
        });
    }
    matches.sort();
    found.extend(matches);
    Ok(())
}

fn relative_to(base: Option<&Path>, path: &str) -> PathBuf {
    match base {
        Some(dir) if Path::new(path).is_relative() => dir.join(path),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 (fuzzing `shard_pattern`, input `oom-79e1…`): each `::` part had limits of
    /// its own, so a spec of several parts, each of lists just under the limits, ran the
    /// fuzzer out of memory. One budget now covers the whole spec.
    #[test]
    fn the_parts_of_a_spec_share_one_expansion_limit() {
        let part = "/nonexistent-tessera/{0..2500000}.tar";
        assert!(matches!(
            resolve(part),
            Err(ShardError::Missing { paths }) if paths.len() == 2_500_001
        ));
        let err = resolve(&format!("{part}::{part}")).unwrap_err();
        assert!(
            err.to_string()
                .contains("names (with the rest of the spec)"),
            "{err}"
        );
    }

    #[test]
    fn rejects_unknown_url_schemes() {
        assert!(matches!(
            resolve("ftp://x/a.tar"),
            Err(ShardError::UnsupportedUrl { .. })
        ));
    }
}
