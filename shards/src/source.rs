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

use std::path::{Path, PathBuf};

use crate::ShardError;

/// Most expansions one brace pattern may produce (a typo like `{0..99999999}` should be
/// an error, not an out-of-memory).
const MAX_EXPANSIONS: usize = 10_000_000;

/// Most bytes of names one brace pattern may produce. The count limit alone let a long
/// pattern with several lists (`{,,,…}{,,,…}…`, each name hundreds of bytes) build
/// gigabytes of names before the count was reached: found by fuzzing `shard_pattern`.
/// 256 MiB is 10 million names of 26 bytes, or a million of 268.
const MAX_EXPANSION_BYTES: usize = 256 << 20;

/// How deep `@list` files may include other `@list` files.
const MAX_LIST_DEPTH: usize = 8;

/// Resolve a shard spec (see the module docs) to an ordered list of existing paths (and
/// URLs of existing remote shards).
pub fn resolve(spec: &str) -> Result<Vec<PathBuf>, ShardError> {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    resolve_into(spec, None, 0, &mut out, &mut missing)?;
    if !missing.is_empty() {
        return Err(ShardError::Missing { paths: missing });
    }
    Ok(out)
}

fn resolve_into(
    spec: &str,
    base: Option<&Path>,
    depth: usize,
    out: &mut Vec<PathBuf>,
    missing: &mut Vec<PathBuf>,
) -> Result<(), ShardError> {
    for part in spec.split("::").map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(list) = part.strip_prefix('@') {
            let list = relative_to(base, list);
            if depth >= MAX_LIST_DEPTH {
                return Err(ShardError::BadPattern {
                    pattern: part.to_string(),
                    reason: format!("list files nested more than {MAX_LIST_DEPTH} deep"),
                });
            }
            let text =
                std::fs::read_to_string(&list).map_err(|e| ShardError::io(list.display(), e))?;
            let dir = list.parent().map(Path::to_path_buf).unwrap_or_default();
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                resolve_into(line, Some(&dir), depth + 1, out, missing)?;
            }
            continue;
        }
        if crate::remote::is_url(part) {
            crate::remote::list::resolve_part(part, out, missing)?;
            continue;
        }
        for item in expand_braces(part)? {
            let path = relative_to(base, &item);
            if item.contains(['*', '?', '[']) {
                let pattern = path.to_string_lossy().into_owned();
                let mut matches = glob::glob(&pattern)
                    .map_err(|e| ShardError::BadPattern {
                        pattern: pattern.clone(),
                        reason: e.to_string(),
                    })?
                    .map(|m| {
                        m.map_err(|e| ShardError::io(e.path().display().to_string(), e.into()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if matches.is_empty() {
                    return Err(ShardError::NoMatch { pattern });
                }
                matches.sort();
                out.extend(matches);
            } else if path.exists() {
                out.push(path);
            } else {
                missing.push(path);
            }
        }
    }
    Ok(())
}

fn relative_to(base: Option<&Path>, path: &str) -> PathBuf {
    match base {
        Some(dir) if Path::new(path).is_relative() => dir.join(path),
        _ => PathBuf::from(path),
    }
}

/// Expand braces: `{a,b}` lists and `{000..146}` numeric ranges, left to right.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, ShardError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    expand_into(pattern, pattern, &mut out, &mut bytes)?;
    Ok(out)
}

/// Expands `s` (a part of `whole`) onto `out`; `bytes` counts the bytes of names pushed.
fn expand_into(
    whole: &str,
    s: &str,
    out: &mut Vec<String>,
    bytes: &mut usize,
) -> Result<(), ShardError> {
    let bad = |reason: String| ShardError::BadPattern {
        pattern: whole.to_string(),
        reason,
    };
    let Some(open) = s.find('{') else {
        if s.contains('}') {
            return Err(bad("`}` without `{`".into()));
        }
        *bytes += s.len();
        if *bytes > MAX_EXPANSION_BYTES {
            return Err(bad(format!(
                "expands to more than {} MiB of names",
                MAX_EXPANSION_BYTES >> 20
            )));
        }
        out.push(s.to_string());
        return Ok(());
    };
    let mut depth = 0usize;
    let mut close = None;
    let mut commas = Vec::new();
    for (i, c) in s[open..].char_indices().map(|(i, c)| (i + open, c)) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = Some(i);
                    break;
                }
            }
            ',' if depth == 1 => commas.push(i),
            _ => {}
        }
    }
    let close = close.ok_or_else(|| bad("`{` without `}`".into()))?;
    let (prefix, body, suffix) = (&s[..open], &s[open + 1..close], &s[close + 1..]);
    if prefix.contains('}') {
        return Err(bad("`}` without `{`".into()));
    }
    let alternatives: Vec<String> = if commas.is_empty() {
        range(body).map_err(bad)?
    } else {
        let mut alts = Vec::with_capacity(commas.len() + 1);
        let mut start = open + 1;
        for &c in commas.iter().chain(std::iter::once(&close)) {
            alts.push(s[start..c].to_string());
            start = c + 1;
        }
        alts
    };
    for alt in alternatives {
        expand_into(whole, &format!("{prefix}{alt}{suffix}"), out, bytes)?;
        if out.len() > MAX_EXPANSIONS {
            return Err(bad(format!("expands to more than {MAX_EXPANSIONS} names")));
        }
    }
    Ok(())
}

/// `"000..146"` → `["000", "001", ..., "146"]` (descending when start > end).
fn range(body: &str) -> Result<Vec<String>, String> {
    let (a, b) = body.split_once("..").ok_or_else(|| {
        format!("`{{{body}}}` is neither a list `{{a,b}}` nor a range `{{0..9}}`")
    })?;
    let parse = |t: &str| {
        t.parse::<i64>()
            .map_err(|_| format!("`{t}` in `{{{body}}}` is not an integer"))
    };
    let (start, end) = (parse(a)?, parse(b)?);
    let padded = |t: &str| {
        let digits = t.trim_start_matches('-');
        digits.len() > 1 && digits.starts_with('0')
    };
    let width = if padded(a) || padded(b) {
        a.len().max(b.len())
    } else {
        0
    };
    // Saturating: `{-9223372036854775808..9223372036854775807}` has 2^64 values, one more
    // than u64 holds (a plain `+ 1` overflowed: a panic, or in release an empty range).
    let count = start.abs_diff(end).saturating_add(1);
    if count > MAX_EXPANSIONS as u64 {
        return Err(format!(
            "range `{{{body}}}` has {count} values (limit {MAX_EXPANSIONS})"
        ));
    }
    let step: i64 = if start <= end { 1 } else { -1 };
    Ok((0..count as i64)
        .map(|i| format!("{:0width$}", start + i * step))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_ranges_keeping_padding() {
        assert_eq!(
            expand_braces("t-{000..002}.tar").unwrap(),
            ["t-000.tar", "t-001.tar", "t-002.tar"]
        );
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(expand_braces("{09..11}").unwrap(), ["09", "10", "11"]);
        assert_eq!(expand_braces("{2..0}").unwrap(), ["2", "1", "0"]);
        assert_eq!(expand_braces("x-{000000..000146}.tar").unwrap().len(), 147);
        assert_eq!(
            expand_braces("x-{000000..000146}.tar").unwrap()[146],
            "x-000146.tar"
        );
    }

    #[test]
    fn expands_lists_nested_and_repeated() {
        assert_eq!(
            expand_braces("{a,b}/{0..1}").unwrap(),
            ["a/0", "a/1", "b/0", "b/1"]
        );
        assert_eq!(
            expand_braces("s{x,y{1..2}}z").unwrap(),
            ["sxz", "sy1z", "sy2z"]
        );
        assert_eq!(expand_braces("{a,}b").unwrap(), ["ab", "b"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
    }

    #[test]
    fn rejects_bad_braces() {
        for p in ["a{0..", "a}b", "{abc}", "{1..x}", "{0..99999999999}"] {
            assert!(
                matches!(expand_braces(p), Err(ShardError::BadPattern { .. })),
                "{p}"
            );
        }
    }

    /// Issue 14 (fuzzing `shard_pattern`): the widest i64 range overflowed its count,
    /// panicking (debug) or expanding to nothing (release) instead of being refused.
    #[test]
    fn widest_range_is_refused_not_overflowed() {
        for p in [
            "{-9223372036854775808..9223372036854775807}",
            "{9223372036854775807..-9223372036854775808}",
        ] {
            let err = expand_braces(p).unwrap_err();
            assert!(err.to_string().contains("values (limit"), "{err}");
        }
    }

    /// Issue 14 (fuzzing `shard_pattern`, one hour in): a 488-byte pattern of several long
    /// lists ran the fuzzer out of memory (2 GiB) before the count limit; refused by bytes.
    #[test]
    fn a_pattern_of_many_long_names_is_refused_by_its_bytes() {
        let long = "x".repeat(300);
        let list = format!("{{{}}}", vec![long.as_str(); 40].join(","));
        let pattern = format!("{list}{list}{list}{list}"); // 40^4 = 2.56 M names of 1.2 kB
        let err = expand_braces(&pattern).unwrap_err();
        assert!(err.to_string().contains("MiB of names"), "{err}");
        // Far under both limits, it still expands.
        assert_eq!(expand_braces(&format!("{list}{list}")).unwrap().len(), 1600);
    }

    #[test]
    fn rejects_unknown_url_schemes() {
        assert!(matches!(
            resolve("ftp://x/a.tar"),
            Err(ShardError::UnsupportedUrl { .. })
        ));
    }
}
