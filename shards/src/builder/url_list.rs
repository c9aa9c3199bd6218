//! URL lists as build inputs (`tessera shard --urls FILE`), img2dataset's input formats.
//!
//! - `.txt` (or any other extension): one URL a line; blank lines and `#` comments
//!   skipped.
//! - `.csv` / `.tsv`: a header row; the URL column is `url` (or the first column whose
//!   name contains `url`), the caption column `caption` (or `text`, `alt`); every other
//!   column is kept in the sample's `.json` under `columns`.
//! - `.jsonl`: one object a line, the same column names.
//! - `.parquet`: the same column names (LAION's and img2dataset's metadata files); the other
//!   columns keep their types in the `.json` (numbers stay numbers); rows without a URL are
//!   skipped. Read row group by row group with the `parquet` crate's row reader.
//!
//! URLs keep their list order (no sorting), so `--part I/N` slices the list as given.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::error::BuildError;
use super::inputs::{InputFile, Label};

/// What a URL list says about one URL besides the URL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UrlRow {
    /// The caption, written as the sample's `.txt` and in its `.json`.
    pub caption: Option<String>,
    /// The other columns, kept in the sample's `.json`.
    pub columns: Map<String, Value>,
}

fn bad(list: &Path, line: usize, reason: impl Into<String>) -> BuildError {
    BuildError::UrlList {
        path: list.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// Read the URL list `list` (input number `root`) into `files`.
pub fn read(list: &Path, root: usize, files: &mut Vec<InputFile>) -> Result<(), BuildError> {
    let input_error = |source| BuildError::Input {
        path: list.to_path_buf(),
        source,
    };
    let ext = list
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut push = |url: String, row: UrlRow| {
        files.push(InputFile {
            path: url.clone().into(),
            source: url,
            root,
            label: Label::NotRequested,
            problem: None,
            row: Some(Arc::new(row)),
        });
    };
    if ext == "parquet" {
        let file = std::fs::File::open(list).map_err(input_error)?;
        return read_parquet(list, file, &mut push);
    }
    let text = std::fs::read_to_string(list).map_err(input_error)?;
    match ext.as_str() {
        "csv" | "tsv" => {
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(if ext == "tsv" { b'\t' } else { b',' })
                .flexible(true)
                .from_reader(text.as_bytes());
            let header: Vec<String> = reader
                .headers()
                .map_err(|e| bad(list, 1, e.to_string()))?
                .iter()
                .map(str::to_string)
                .collect();
            let (url_col, caption_col) = columns(&header).ok_or_else(|| {
                bad(
                    list,
                    1,
                    format!("no URL column among {header:?} (name one `url`)"),
                )
            })?;
            for (i, record) in reader.records().enumerate() {
                let record = record.map_err(|e| bad(list, i + 2, e.to_string()))?;
                let mut row = UrlRow::default();
                let mut url = String::new();
                for (k, value) in record.iter().enumerate() {
                    match k {
                        k if k == url_col => url = value.trim().to_string(),
                        k if Some(k) == caption_col => row.caption = Some(value.to_string()),
                        _ => {
                            let name = header.get(k).cloned().unwrap_or_else(|| k.to_string());
                            row.columns.insert(name, Value::String(value.to_string()));
                        }
                    }
                }
                if !url.is_empty() {
                    push(url, row);
                }
            }
        }
        "jsonl" | "json" => {
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let Value::Object(mut object) = serde_json::from_str::<Value>(line)
                    .map_err(|e| bad(list, i + 1, e.to_string()))?
                else {
                    return Err(bad(list, i + 1, "not a JSON object"));
                };
                let keys: Vec<String> = object.keys().cloned().collect();
                let (url_col, caption_col) =
                    columns(&keys).ok_or_else(|| bad(list, i + 1, "no `url` field"))?;
                let url = match object.remove(&keys[url_col]) {
                    Some(Value::String(url)) => url,
                    _ => return Err(bad(list, i + 1, "the URL is not a string")),
                };
                let caption = caption_col.and_then(|c| match object.remove(&keys[c]) {
                    Some(Value::String(text)) => Some(text),
                    Some(other) => Some(other.to_string()),
                    None => None,
                });
                push(
                    url,
                    UrlRow {
                        caption,
                        columns: object,
                    },
                );
            }
        }
        _ => {
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    push(line.to_string(), UrlRow::default());
                }
            }
        }
    }
    Ok(())
}

/// The rows of a Parquet URL list. `line` in its errors is the row number, from 1.
fn read_parquet(
    list: &Path,
    file: std::fs::File,
    push: &mut impl FnMut(String, UrlRow),
) -> Result<(), BuildError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;

    let reader = SerializedFileReader::new(file)
        .map_err(|e| bad(list, 0, format!("not a readable Parquet file: {e}")))?;
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let (url_col, caption_col) = columns(&names).ok_or_else(|| {
        bad(
            list,
            0,
            format!("no URL column among {names:?} (name one `url`)"),
        )
    })?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| bad(list, 0, e.to_string()))?;
    for (i, row) in rows.enumerate() {
        let row = row.map_err(|e| bad(list, i + 1, e.to_string()))?;
        let mut url = None;
        let mut out = UrlRow::default();
        for (k, (name, field)) in row.get_column_iter().enumerate() {
            match (k, field) {
                (k, Field::Str(text)) if k == url_col => url = Some(text.trim().to_string()),
                (k, Field::Null) if k == url_col => {}
                (k, other) if k == url_col => {
                    return Err(bad(
                        list,
                        i + 1,
                        format!("the URL is not a string: {other}"),
                    ));
                }
                (k, Field::Str(text)) if Some(k) == caption_col => {
                    out.caption = Some(text.clone());
                }
                (k, Field::Null) if Some(k) == caption_col => {}
                (k, other) if Some(k) == caption_col => out.caption = Some(other.to_string()),
                (_, other) => {
                    out.columns.insert(name.clone(), other.to_json_value());
                }
            }
        }
        if let Some(url) = url.filter(|u| !u.is_empty()) {
            push(url, out);
        }
    }
    Ok(())
}

/// The URL column and the caption column (if any) among `names`.
fn columns(names: &[String]) -> Option<(usize, Option<usize>)> {
    let find = |pred: &dyn Fn(&str) -> bool| names.iter().position(|n| pred(&n.to_lowercase()));
    let url = find(&|n| n == "url").or_else(|| find(&|n| n.contains("url")))?;
    let caption = find(&|n| n == "caption")
        .or_else(|| find(&|n| n == "text"))
        .or_else(|| find(&|n| n == "alt"));
    Some((url, caption))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Vec<(String, UrlRow)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let mut files = Vec::new();
        read(&path, 0, &mut files).unwrap();
        files
            .into_iter()
            .map(|f| (f.source, (*f.row.unwrap()).clone()))
            .collect()
    }

    #[test]
    fn reads_txt_csv_tsv_and_jsonl() {
        let txt = parse("a.txt", "# list\nhttp://h/1.jpg\n\nhttp://h/2.jpg\n");
        assert_eq!(txt.len(), 2);
        assert_eq!(txt[1].0, "http://h/2.jpg");

        let csv = parse(
            "a.csv",
            "url,caption,width\nhttp://h/1.jpg,\"a cat, sitting\",640\n",
        );
        assert_eq!(csv[0].0, "http://h/1.jpg");
        assert_eq!(csv[0].1.caption.as_deref(), Some("a cat, sitting"));
        assert_eq!(csv[0].1.columns["width"], "640");

        let tsv = parse("a.tsv", "TEXT\tURL\nhello\thttp://h/2.jpg\n");
        assert_eq!(tsv[0].0, "http://h/2.jpg");
        assert_eq!(tsv[0].1.caption.as_deref(), Some("hello"));

        let jsonl = parse(
            "a.jsonl",
            "{\"url\":\"http://h/3.jpg\",\"caption\":\"x\",\"id\":7}\n",
        );
        assert_eq!(jsonl[0].0, "http://h/3.jpg");
        assert_eq!(jsonl[0].1.columns["id"], 7);
    }

    #[test]
    fn a_broken_parquet_list_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("urls.parquet");
        std::fs::write(&path, "url\nhttp://h/1.jpg\n").unwrap();
        let err = read(&path, 0, &mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains("urls.parquet"), "{err}");
        assert!(err.contains("not a readable Parquet file"), "{err}");
    }
}
