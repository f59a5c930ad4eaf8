//! Text-classification files: JSON Lines (`{"text": ..., "label": ...}`) and CSV/TSV with a header.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::lines::{is_blank, lines, read_bytes};

/// One text-classification example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcExample {
    /// The input text (never empty or whitespace-only).
    pub text: String,
    /// The label name (never empty).
    pub label: String,
}

/// Reads a JSON Lines file with one `{"text": ..., "label": ...}` object per line.
///
/// Blank lines are skipped; other fields are ignored. `text` must be a non-blank string.
/// `label` must be a non-empty string, a JSON number or a boolean; numbers and booleans are taken
/// in their JSON spelling (`1` gives `"1"`, `1.5` gives `"1.5"`, `true` gives `"true"`), so
/// integer-labelled files work; `null`, arrays and objects are errors.
/// Errors (malformed JSON, a missing or mistyped field, empty text, non-UTF-8 bytes) name the
/// file and the 1-based line; a file with no examples is an error too.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<TcExample>> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    parse_jsonl(&bytes, path)
}

/// Like [`read_jsonl`], for file contents already in memory; `path` is only used in messages.
pub fn parse_jsonl(bytes: &[u8], path: &Path) -> Result<Vec<TcExample>> {
    if is_blank(bytes) {
        return Err(Error::file(path, "empty file"));
    }
    let mut out = Vec::new();
    for item in lines(bytes, path) {
        let (line_no, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| Error::parse(path, line_no, json_error(&e)))?;
        let Value::Object(obj) = value else {
            return Err(Error::parse(
                path,
                line_no,
                "expected a JSON object with \"text\" and \"label\"",
            ));
        };
        let text = match obj.get("text") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::parse(
                    path,
                    line_no,
                    format!("\"text\" must be a string, found {}", kind(other)),
                ))
            }
            None => return Err(Error::parse(path, line_no, "missing \"text\" field")),
        };
        check_text(&text, path, line_no)?;
        let label = match obj.get("label") {
            Some(Value::String(s)) => s.clone(),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
            Some(other) => {
                return Err(Error::parse(
                    path,
                    line_no,
                    format!(
                        "\"label\" must be a string, number or boolean, found {}",
                        kind(other)
                    ),
                ))
            }
            None => return Err(Error::parse(path, line_no, "missing \"label\" field")),
        };
        check_label(&label, path, line_no)?;
        out.push(TcExample { text, label });
    }
    if out.is_empty() {
        return Err(Error::file(path, "no examples"));
    }
    Ok(out)
}

/// Reads a delimited file (CSV with `b','`, TSV with `b'\t'`) whose first row names the columns,
/// taking the text and the label from the columns named `text_column` and `label_column`.
///
/// Fields follow the usual CSV quoting rules (`"a, b"` and `"say ""hi"""`), also for TSV.
/// Errors name the file and the 1-based line where the record starts: a row with a different
/// number of fields than the header, non-UTF-8 bytes, an empty text or label. An unknown column
/// name is an error listing the header; a file without a header or without rows is an error.
pub fn read_delimited(
    path: impl AsRef<Path>,
    delimiter: u8,
    text_column: &str,
    label_column: &str,
) -> Result<Vec<TcExample>> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    parse_delimited(&bytes, path, delimiter, text_column, label_column)
}

/// Like [`read_delimited`], for file contents already in memory; `path` is only used in messages.
pub fn parse_delimited(
    bytes: &[u8],
    path: &Path,
    delimiter: u8,
    text_column: &str,
    label_column: &str,
) -> Result<Vec<TcExample>> {
    if is_blank(bytes) {
        return Err(Error::file(path, "empty file"));
    }
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(path, bytes, e))?
        .iter()
        .map(|h| h.trim_start_matches('\u{feff}').to_string())
        .collect();
    let find = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| Error::UnknownColumn {
                path: path.to_path_buf(),
                column: name.to_string(),
                header: header.clone(),
            })
    };
    let text_idx = find(text_column)?;
    let label_idx = find(label_column)?;

    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_error(path, bytes, e)),
        }
        let line_no = record.position().map_or(0, |p| p.line() as usize);
        // Skip rows that are entirely empty (e.g. a trailing "\n\n").
        if record.iter().all(|f| f.is_empty()) && record.len() <= 1 {
            continue;
        }
        let text = record.get(text_idx).unwrap_or_default().to_string();
        check_text(&text, path, line_no)?;
        let label = record.get(label_idx).unwrap_or_default().to_string();
        check_label(&label, path, line_no)?;
        out.push(TcExample { text, label });
    }
    if out.is_empty() {
        return Err(Error::file(path, "no examples after the header row"));
    }
    Ok(out)
}

/// A `serde_json` error on one line, as `invalid JSON at column C: what` (every line is parsed
/// on its own, so serde's "line 1" would only confuse).
fn json_error(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let location = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&location) {
        Some(what) => format!("invalid JSON at column {}: {what}", e.column()),
        None => format!("invalid JSON: {full}"),
    }
}

/// True when the physical line starting at byte `start` holds an odd number of `"`: a quoted
/// field opened there runs on into the following lines.
fn opens_unclosed_quote(bytes: &[u8], start: usize) -> bool {
    let rest = bytes.get(start..).unwrap_or_default();
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    line.iter().filter(|&&b| b == b'"').count() % 2 == 1
}

/// Maps a `csv` error to ours, keeping the line number the `csv` crate reports; `bytes` is the
/// file, used to spot an unclosed quote behind a wrong field count.
fn csv_error(path: &Path, bytes: &[u8], e: csv::Error) -> Error {
    let line = e.position().map(|p| p.line() as usize);
    let quote_hint = e
        .position()
        .is_some_and(|p| opens_unclosed_quote(bytes, p.byte() as usize));
    let message = match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => format!(
            "invalid UTF-8 in field {} (files must be UTF-8)",
            err.field() + 1
        ),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            let mut m = format!("expected {expected_len} fields like the header, found {len}");
            if quote_hint {
                m.push_str(
                    " (an unclosed quote: the quoted field opened on this line runs on into the following lines)",
                );
            }
            m
        }
        _ => e.to_string(),
    };
    match line {
        Some(line) => Error::parse(path, line, message),
        None => Error::file(path, message),
    }
}

/// Rejects empty or whitespace-only texts.
fn check_text(text: &str, path: &Path, line_no: usize) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::parse(path, line_no, "empty text"));
    }
    Ok(())
}

/// Rejects empty labels.
fn check_label(label: &str, path: &Path, line_no: usize) -> Result<()> {
    if label.trim().is_empty() {
        return Err(Error::parse(path, line_no, "empty label"));
    }
    Ok(())
}

/// A short name for a JSON value's type, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    fn write_tmp(name: &str, contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(contents)
            .unwrap();
        (dir, path)
    }

    fn jsonl(contents: &[u8]) -> Result<Vec<TcExample>> {
        let (_dir, path) = write_tmp("data.jsonl", contents);
        read_jsonl(&path)
    }

    fn jsonl_err(contents: &[u8]) -> String {
        jsonl(contents).unwrap_err().to_string()
    }

    fn delimited(contents: &[u8], delim: u8, text: &str, label: &str) -> Result<Vec<TcExample>> {
        let name = if delim == b'\t' {
            "data.tsv"
        } else {
            "data.csv"
        };
        let (_dir, path) = write_tmp(name, contents);
        read_delimited(&path, delim, text, label)
    }

    #[test]
    fn reads_jsonl_skipping_blank_lines_and_extra_fields() {
        let ex = jsonl(
            b"{\"text\": \"good film\", \"label\": \"positive\"}\r\n\n   \n{\"label\": \"negative\", \"text\": \"bad\", \"id\": 3}\n",
        )
        .unwrap();
        assert_eq!(
            ex,
            vec![
                TcExample {
                    text: "good film".into(),
                    label: "positive".into()
                },
                TcExample {
                    text: "bad".into(),
                    label: "negative".into()
                },
            ]
        );
    }

    #[test]
    fn jsonl_numeric_and_bool_labels_become_strings() {
        let ex = jsonl(
            b"{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": true}\n{\"text\": \"c\", \"label\": 2.5}\n",
        )
        .unwrap();
        let labels: Vec<&str> = ex.iter().map(|e| e.label.as_str()).collect();
        assert_eq!(labels, ["1", "true", "2.5"]);
    }

    #[test]
    fn jsonl_errors_name_file_and_line() {
        let ok = "{\"text\": \"fine\", \"label\": \"x\"}\n\n";
        let cases: [(&str, &str); 10] = [
            ("{\"text\": \"a\", \"label\": \"x\"", "invalid JSON"),
            ("[1, 2]", "expected a JSON object"),
            ("{\"label\": \"x\"}", "missing \"text\""),
            (
                "{\"text\": 5, \"label\": \"x\"}",
                "\"text\" must be a string",
            ),
            ("{\"text\": \"a\"}", "missing \"label\""),
            ("{\"text\": \"a\", \"label\": null}", "\"label\" must be"),
            ("{\"text\": \"a\", \"label\": [\"x\"]}", "\"label\" must be"),
            ("{\"text\": \"  \", \"label\": \"x\"}", "empty text"),
            ("{\"text\": \"\", \"label\": \"x\"}", "empty text"),
            ("{\"text\": \"a\", \"label\": \"\"}", "empty label"),
        ];
        for (bad, what) in cases {
            let contents = format!("{ok}{bad}\n{ok}");
            let msg = jsonl_err(contents.as_bytes());
            assert!(msg.contains("data.jsonl:3:"), "{bad}: {msg}");
            assert!(msg.contains(what), "{bad}: {msg}");
        }
    }

    #[test]
    fn jsonl_non_utf8_empty_and_missing_files() {
        let msg = jsonl_err(
            b"{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"caf\xe9\", \"label\": \"x\"}\n",
        );
        assert!(msg.contains("data.jsonl:2:"), "{msg}");
        assert!(msg.contains("UTF-8"), "{msg}");
        let msg = jsonl_err(b"");
        assert!(
            msg.contains("data.jsonl") && msg.contains("empty file"),
            "{msg}"
        );
        let msg = jsonl_err(b"\n\n  \n");
        assert!(msg.contains("data.jsonl"), "{msg}");
        let err = read_jsonl("/nonexistent/x.jsonl").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.jsonl"));
    }

    #[test]
    fn reads_csv_with_quotes_and_column_names() {
        let ex = delimited(
            b"id,sentence,label\n1,\"hello, world\",pos\n2,\"say \"\"hi\"\"\nagain\",neg\n",
            b',',
            "sentence",
            "label",
        )
        .unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].text, "hello, world");
        assert_eq!(ex[1].text, "say \"hi\"\nagain");
        assert_eq!(ex[1].label, "neg");
    }

    #[test]
    fn reads_tsv_with_bom_and_crlf() {
        let ex = delimited(
            b"\xEF\xBB\xBFtext\tlabel\r\ngood\t1\r\nbad\t0\r\n",
            b'\t',
            "text",
            "label",
        )
        .unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[1].text, "bad");
        assert_eq!(ex[1].label, "0");
    }

    #[test]
    fn delimited_unknown_column_lists_header() {
        let msg = delimited(b"sentence,label\na,b\n", b',', "text", "label")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("data.csv"), "{msg}");
        assert!(msg.contains("'text'"), "{msg}");
        assert!(msg.contains("sentence, label"), "{msg}");
        let msg = delimited(b"sentence,label\na,b\n", b',', "sentence", "class")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("'class'"), "{msg}");
    }

    #[test]
    fn delimited_errors_name_file_and_line() {
        // Record starting on line 4 (the quoted field on line 2-3 spans two lines).
        let msg = delimited(
            b"text,label\n\"multi\nline\",a\nonly-one-field\n",
            b',',
            "text",
            "label",
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("data.csv:4:"), "{msg}");
        assert!(msg.contains("expected 2 fields"), "{msg}");
        let msg = delimited(b"text,label\nok,a\n,b\n", b',', "text", "label")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("data.csv:3:") && msg.contains("empty text"),
            "{msg}"
        );
        let msg = delimited(b"text\tlabel\nok\ta\nfine\t\n", b'\t', "text", "label")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("data.tsv:3:") && msg.contains("empty label"),
            "{msg}"
        );
        let msg = delimited(b"text,label\nok,a\ncaf\xe9,b\n", b',', "text", "label")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("data.csv:3:") && msg.contains("UTF-8"),
            "{msg}"
        );
    }

    #[test]
    fn delimited_empty_and_header_only_files_are_errors() {
        let msg = delimited(b"", b',', "text", "label")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("data.csv") && msg.contains("empty file"),
            "{msg}"
        );
        let msg = delimited(b"text,label\n", b',', "text", "label")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("data.csv") && msg.contains("no examples"),
            "{msg}"
        );
    }

    #[test]
    fn json_errors_give_the_column_not_serde_line_one() {
        let msg =
            jsonl_err(b"{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": }\n");
        assert!(
            msg.contains("data.jsonl:2: invalid JSON at column 24: expected value"),
            "{msg}"
        );
        assert!(!msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn unclosed_quote_is_named_as_such() {
        let err = delimited(
            b"text,label\ngood,positive\n\"bad, really,negative\nfine,positive\n",
            b',',
            "text",
            "label",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("data.csv:3:") && err.contains("unclosed quote"),
            "{err}"
        );
        // A ragged row without quotes gets no such hint.
        let err = delimited(b"text,label\na,b,c\n", b',', "text", "label")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data.csv:2:") && !err.contains("quote"),
            "{err}"
        );
    }
}
