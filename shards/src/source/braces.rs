//! Brace expansion of shard patterns: `{a,b}` lists and `{000..146}` numeric ranges,
//! nested and repeated, expanded left to right (the leftmost brace varies slowest).
//!
//! A pattern is parsed once into pieces and its names are then written one at a time into
//! a single buffer, so the work is proportional to the names produced, not to the number
//! of braces times their length (re-expanding `prefix + alternative + suffix` strings, as
//! this module first did, let a fuzzed pattern of many one-value ranges run for minutes).
//! A [`Budget`] shared by every pattern of one spec bounds how many names, and how many
//! bytes of names, a spec may produce: a typo like `{0..99999999}`, or a few hundred bytes
//! of lists repeated across `::` parts, is an error rather than an out-of-memory kill.

use std::fmt::Write as _;

use crate::ShardError;

/// Most names one spec may expand to, across all its patterns. Four million is four times
/// the shard count of a petabyte in 1 GB shards; the limit exists so that a typo is an
/// error, and the names of one spec (about 60 bytes each as paths) stay far below a GiB.
const MAX_NAMES: usize = 4_000_000;

/// Most bytes of names one spec may expand to. The count alone let long patterns of
/// several lists (`{,,,…}{,,,…}…`, each name hundreds of bytes) build gigabytes of names
/// before the count was reached: found by fuzzing `shard_pattern`.
const MAX_BYTES: usize = 256 << 20;

/// Most braces one pattern may hold. Real patterns have a handful; the bound keeps the
/// depth-first walk's recursion (two frames a piece) far from the stack's end, so a
/// pathological line of a list file is an error, not a stack overflow.
const MAX_BRACES: usize = 1024;

/// What is left of one spec's expansion limits; shared by all of its `::` parts and
/// `@list` lines so that many parts cannot multiply the limit.
#[derive(Debug)]
pub(crate) struct Budget {
    names: usize,
    bytes: usize,
}

impl Budget {
    pub(crate) fn new() -> Self {
        Self {
            names: MAX_NAMES,
            bytes: MAX_BYTES,
        }
    }

    /// Charges one produced name, or says which limit it would pass.
    fn spend(&mut self, name: &str) -> Result<(), String> {
        if self.names == 0 {
            return Err(format!(
                "expands to more than {MAX_NAMES} names (with the rest of the spec)"
            ));
        }
        if name.len() > self.bytes {
            return Err(format!(
                "expands to more than {} MiB of names (with the rest of the spec)",
                MAX_BYTES >> 20
            ));
        }
        self.names -= 1;
        self.bytes -= name.len();
        Ok(())
    }
}

/// Expand `pattern`'s braces into a list of names (one budget of its own).
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, ShardError> {
    let mut names = Vec::new();
    for_each_name(pattern, &mut Budget::new(), &mut |name| {
        names.push(name.to_string());
        Ok(())
    })?;
    Ok(names)
}

/// Calls `each` with every name `pattern` expands to, in order, charging `budget`.
pub(crate) fn for_each_name(
    pattern: &str,
    budget: &mut Budget,
    each: &mut dyn FnMut(&str) -> Result<(), ShardError>,
) -> Result<(), ShardError> {
    if pattern.matches('{').count() > MAX_BRACES {
        return Err(bad_pattern(
            pattern,
            format!("has more than {MAX_BRACES} braces"),
        ));
    }
    let pieces = parse(pattern).map_err(|reason| bad_pattern(pattern, reason))?;
    let mut walk = Walk {
        pattern,
        name: String::new(),
        budget,
        each,
    };
    walk.names(&mut vec![&pieces])
}

fn bad_pattern(pattern: &str, reason: String) -> ShardError {
    ShardError::BadPattern {
        pattern: pattern.to_string(),
        reason,
    }
}

/// One part of a pattern.
#[derive(Debug)]
enum Piece<'a> {
    Text(&'a str),
    /// `{a,b,c}`: each alternative is a pattern of its own.
    List(Vec<Vec<Piece<'a>>>),
    Range(Range),
}

/// Splits `s` into pieces, checking that braces pair up.
fn parse(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("`}` without `{`".into());
        }
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let (mut depth, mut close, mut commas) = (0usize, None, Vec::new());
        for (i, c) in rest[open..].char_indices().map(|(i, c)| (open + i, c)) {
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
        let close = close.ok_or("`{` without `}`")?;
        if commas.is_empty() {
            pieces.push(Piece::Range(Range::parse(&rest[open + 1..close])?));
        } else {
            let mut alternatives = Vec::with_capacity(commas.len() + 1);
            let mut start = open + 1;
            for &end in commas.iter().chain([&close]) {
                alternatives.push(parse(&rest[start..end])?);
                start = end + 1;
            }
            pieces.push(Piece::List(alternatives));
        }
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// A numeric range `{start..end}`, descending when start > end, zero-padded to `width`.
#[derive(Debug)]
struct Range {
    start: i64,
    step: i64,
    count: u64,
    width: usize,
}

impl Range {
    /// `"000..146"`: padding is taken from the wider bound when either has a leading zero.
    fn parse(body: &str) -> Result<Self, String> {
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
        // Saturating: `{-9223372036854775808..9223372036854775807}` has 2^64 values, one
        // more than u64 holds (a plain `+ 1` overflowed: a panic, or in release an empty
        // range).
        let count = start.abs_diff(end).saturating_add(1);
        if count > MAX_NAMES as u64 {
            return Err(format!(
                "range `{{{body}}}` has {count} values (limit {MAX_NAMES})"
            ));
        }
        let step = if start <= end { 1 } else { -1 };
        Ok(Self {
            start,
            step,
            count,
            width,
        })
    }
}

/// Depth-first enumeration of `pattern`'s names into one buffer.
struct Walk<'s, 'b, 'e> {
    pattern: &'s str,
    name: String,
    budget: &'b mut Budget,
    each: &'e mut dyn FnMut(&str) -> Result<(), ShardError>,
}

impl Walk<'_, '_, '_> {
    /// Emits every name that `self.name` followed by the pieces on `todo` (innermost
    /// last) expands to. `todo` is as it was on return.
    fn names<'p>(&mut self, todo: &mut Vec<&'p [Piece<'p>]>) -> Result<(), ShardError> {
        let Some(top) = todo.pop() else {
            self.budget
                .spend(&self.name)
                .map_err(|reason| bad_pattern(self.pattern, reason))?;
            return (self.each)(&self.name);
        };
        let result = match top.split_first() {
            None => self.names(todo),
            Some((piece, rest)) => {
                todo.push(rest);
                let result = self.piece(piece, todo);
                todo.pop();
                result
            }
        };
        todo.push(top);
        result
    }

    /// Emits the names of one piece followed by `todo`.
    fn piece<'p>(
        &mut self,
        piece: &'p Piece<'p>,
        todo: &mut Vec<&'p [Piece<'p>]>,
    ) -> Result<(), ShardError> {
        let len = self.name.len();
        match piece {
            Piece::Text(text) => {
                self.name.push_str(text);
                self.names(todo)?;
            }
            Piece::List(alternatives) => {
                for alternative in alternatives {
                    todo.push(alternative);
                    let result = self.names(todo);
                    todo.pop();
                    result?;
                    self.name.truncate(len);
                }
            }
            Piece::Range(range) => {
                for i in 0..range.count as i64 {
                    let value = range.start + i * range.step;
                    let width = range.width;
                    // Writing to a String cannot fail.
                    let _ = write!(self.name, "{value:0width$}");
                    self.names(todo)?;
                    self.name.truncate(len);
                }
            }
        }
        self.name.truncate(len);
        Ok(())
    }
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
        assert_eq!(expand_braces("{-1..1}").unwrap(), ["-1", "0", "1"]);
        assert_eq!(expand_braces("x-{000000..000146}.tar").unwrap().len(), 147);
        assert_eq!(
            expand_braces("x-{000000..000146}.tar").unwrap()[146],
            "x-000146.tar"
        );
    }

    #[test]
    fn expands_lists_nested_and_repeated_left_to_right() {
        assert_eq!(
            expand_braces("{a,b}/{0..1}").unwrap(),
            ["a/0", "a/1", "b/0", "b/1"]
        );
        assert_eq!(
            expand_braces("s{x,y{1..2}}z").unwrap(),
            ["sxz", "sy1z", "sy2z"]
        );
        assert_eq!(
            expand_braces("{a,{b,c}d}-{0..1}").unwrap(),
            ["a-0", "a-1", "bd-0", "bd-1", "cd-0", "cd-1"]
        );
        assert_eq!(expand_braces("{a,}b").unwrap(), ["ab", "b"]);
        assert_eq!(expand_braces("{,}").unwrap(), ["", ""]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert_eq!(expand_braces("").unwrap(), [""]);
    }

    #[test]
    fn rejects_bad_braces() {
        for p in [
            "a{0..",
            "a}b",
            "{0..1}}",
            "{abc}",
            "{1..x}",
            "{a,{b}}",
            "{0..99999999999}",
        ] {
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

    /// Lists followed by many one-value ranges (the shape of the fuzzer's slow inputs,
    /// which the first expansion re-formatted at every brace) expand in order, up to the
    /// brace limit; one brace more is refused, not walked into a stack overflow.
    #[test]
    fn many_braces_expand_in_order_up_to_the_limit() {
        let lists = "{a,b}".repeat(12);
        let pattern = format!("{lists}{}", "{0..0}".repeat(MAX_BRACES - 12));
        let names = expand_braces(&pattern).unwrap();
        assert_eq!(names.len(), 1 << 12);
        assert_eq!(
            names[0],
            format!("{}{}", "a".repeat(12), "0".repeat(MAX_BRACES - 12))
        );
        assert!(names[1].starts_with("aaaaaaaaaaab0"), "{}", names[1]);
        let err = expand_braces(&format!("{pattern}{{0..0}}")).unwrap_err();
        assert!(err.to_string().contains("braces"), "{err}");
    }

    /// The budget is one per spec: two patterns under the limit each are refused together.
    #[test]
    fn one_budget_covers_every_pattern_of_a_spec() {
        let half = format!("{{0..{}}}", MAX_NAMES / 2 + 1);
        let mut budget = Budget::new();
        let mut count = 0usize;
        let mut each = |_: &str| {
            count += 1;
            Ok(())
        };
        for_each_name(&half, &mut budget, &mut each).unwrap();
        let err = for_each_name(&half, &mut budget, &mut each).unwrap_err();
        assert!(err.to_string().contains("names (with the rest"), "{err}");
        assert_eq!(count, MAX_NAMES);
    }
}
