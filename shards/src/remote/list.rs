//! Remote shard patterns: globs by listing, explicit names by `HEAD`.
//!
//! A remote part of a shard spec is brace-expanded like a local one; each expansion with
//! `*`, `?` or `[` in its key is matched against a listing of the store under the
//! directory before its first wildcard (matches sorted by key; none is
//! [`ShardError::NoMatch`]), and the other expansions are checked with concurrent `HEAD`
//! requests so that a missing shard, a missing bucket or wrong credentials are reported
//! up front, naming the object, instead of in the middle of a run. HTTP servers cannot be
//! listed: name HTTP shards with ranges or lists.

use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use super::store::{self, ObjectUrl};
use crate::ShardError;
use crate::source::{Budget, for_each_name};

/// Resolve one remote part of a shard spec, appending found shards to `out` and missing
/// explicit ones to `missing` (see the module docs); its braces are charged to `budget`.
pub(crate) fn resolve_part(
    part: &str,
    budget: &mut Budget,
    out: &mut Vec<PathBuf>,
    missing: &mut Vec<PathBuf>,
) -> Result<(), ShardError> {
    let mut items = Vec::new();
    for_each_name(part, budget, &mut |item| {
        items.push(item.to_string());
        Ok(())
    })?;
    let mut explicit: Vec<(usize, String)> = Vec::new();
    let mut found: Vec<Option<Vec<String>>> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let after_scheme = item.split_once("://").map_or("", |(_, rest)| rest);
        if after_scheme.contains(['*', '?', '[']) {
            found.push(Some(glob(item)?));
        } else {
            found.push(None);
            explicit.push((i, item.clone()));
        }
    }
    let checked = head_all(&explicit)?;
    // A `HEAD` has no body to say *why* nothing is there: one listing tells a missing
    // bucket from missing objects.
    if let Some((_, url)) = explicit
        .iter()
        .zip(&checked)
        .find(|(_, ok)| !**ok)
        .map(|(e, _)| e)
        && !url.starts_with("http")
    {
        check_bucket(url)?;
    }
    let mut checked = checked.into_iter();
    for (item, listed) in items.iter().zip(found) {
        match listed {
            Some(urls) => out.extend(urls.into_iter().map(PathBuf::from)),
            None => match checked.next() {
                Some(true) => out.push(PathBuf::from(item)),
                _ => missing.push(PathBuf::from(item)),
            },
        }
    }
    Ok(())
}

/// Does the bucket of `url` exist? A listing answers: it fails only for a missing bucket
/// (or missing rights), where a missing object lists fine.
fn check_bucket(url: &str) -> Result<(), ShardError> {
    let object = ObjectUrl::parse(url)?;
    let listed = store::block_on(async {
        store::retrying(&object, "listing the bucket", || {
            object.store.list_with_delimiter(None)
        })
        .await
    });
    match listed {
        Ok(_) => Ok(()),
        Err(ShardError::Remote {
            url,
            action,
            attempts,
            source,
            ..
        }) if matches!(*source, object_store::Error::NotFound { .. }) => {
            let bucket = url
                .split_once("://")
                .map_or("", |(_, rest)| rest.split('/').next().unwrap_or_default());
            Err(ShardError::Remote {
                hint: format!("bucket `{bucket}` does not exist"),
                url,
                action,
                attempts,
                source,
            })
        }
        Err(e) => Err(e),
    }
}

/// `HEAD` every URL (concurrently, in order): `true` where it exists.
fn head_all(urls: &[(usize, String)]) -> Result<Vec<bool>, ShardError> {
    if urls.is_empty() {
        return Ok(Vec::new());
    }
    let objects = urls
        .iter()
        .map(|(_, url)| ObjectUrl::parse(url))
        .collect::<Result<Vec<_>, _>>()?;
    let concurrency = super::options().concurrency.max(1);
    store::block_on(async {
        futures::stream::iter(objects.into_iter().map(|object| async move {
            match store::retrying(&object, "looking up", || object.store.head(&object.key)).await {
                Ok(_) => Ok(true),
                Err(ShardError::Remote {
                    ref source,
                    ref hint,
                    ..
                }) if matches!(**source, object_store::Error::NotFound { .. })
                    && !hint.contains("bucket") =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        }))
        .buffered(concurrency)
        .try_collect()
        .await
    })
}

/// The URLs of every object matching a remote glob, sorted by key.
fn glob(pattern_url: &str) -> Result<Vec<String>, ShardError> {
    let (scheme, _) = pattern_url.split_once("://").unwrap_or_default();
    if scheme.starts_with("http") {
        return Err(ShardError::BadPattern {
            pattern: pattern_url.to_string(),
            reason: "HTTP servers cannot be listed: name the shards with a range \
                     (`train-{000000..000099}.tar`) or a list file"
                .into(),
        });
    }
    let wildcard = pattern_url
        .find(['*', '?', '['])
        .unwrap_or(pattern_url.len());
    // The listing prefix is whole path segments: the directory before the wildcard.
    let dir_end = pattern_url[..wildcard].rfind('/').unwrap_or(0);
    let dir_url = &pattern_url[..dir_end];
    let root = ObjectUrl::parse(&format!("{dir_url}/"))?;
    let after_scheme = &pattern_url[scheme.len() + 3..];
    let (bucket, key_pattern) = after_scheme.split_once('/').unwrap_or((after_scheme, ""));
    let bucket_url = format!("{scheme}://{bucket}");
    let matcher = glob::Pattern::new(key_pattern).map_err(|e| ShardError::BadPattern {
        pattern: pattern_url.to_string(),
        reason: e.to_string(),
    })?;
    let prefix = if root.key.as_ref().is_empty() {
        None
    } else {
        Some(root.key.clone())
    };
    let listing: Vec<ObjectPath> = store::block_on(async {
        store::retrying(&root, "listing", || {
            root.store
                .list(prefix.as_ref())
                .map_ok(|meta| meta.location)
                .try_collect::<Vec<_>>()
        })
        .await
    })?;
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::default()
    };
    let mut keys: Vec<String> = listing
        .into_iter()
        .map(|p| p.to_string())
        .filter(|key| matcher.matches_with(key, options))
        .collect();
    if keys.is_empty() {
        return Err(ShardError::NoMatch {
            pattern: pattern_url.to_string(),
        });
    }
    keys.sort();
    Ok(keys
        .into_iter()
        .map(|key| format!("{bucket_url}/{key}"))
        .collect())
}

/// The URLs of every object under the "directory" `dir_url` (`s3://b/p/.tessera-shard`),
/// sorted; none is an empty list, not an error.
pub fn list_prefix(dir_url: &str) -> Result<Vec<String>, ShardError> {
    let root = ObjectUrl::parse(&format!("{}/", dir_url.trim_end_matches('/')))?;
    let (scheme, rest) = dir_url.split_once("://").unwrap_or_default();
    let bucket = rest.split('/').next().unwrap_or_default();
    let prefix = (!root.key.as_ref().is_empty()).then(|| root.key.clone());
    let mut keys: Vec<String> = store::block_on(async {
        store::retrying(&root, "listing", || {
            root.store
                .list(prefix.as_ref())
                .map_ok(|meta| meta.location.to_string())
                .try_collect::<Vec<_>>()
        })
        .await
    })?;
    keys.sort();
    Ok(keys
        .into_iter()
        .map(|key| format!("{scheme}://{bucket}/{key}"))
        .collect())
}
