//! Line splitting shared by the readers: 1-based numbering, UTF-8 checked line by line.

use std::path::Path;

use crate::error::{Error, Result};

/// Reads a whole file, mapping I/O failures to [`Error::Io`] naming the file.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Iterates over the lines of `bytes` as `(1-based line number, text)`.
///
/// Lines end at `\n`; a trailing `\r` (CRLF files) and a UTF-8 byte-order mark on the first line
/// are removed. A line that is not valid UTF-8 yields an [`Error::Parse`] naming `path` and the line.
pub(crate) fn lines<'a>(
    bytes: &'a [u8],
    path: &'a Path,
) -> impl Iterator<Item = Result<(usize, &'a str)>> + 'a {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let body_is_empty = body.is_empty();
    body.split(|b| *b == b'\n')
        .enumerate()
        .filter(move |_| !body_is_empty)
        .map(move |(i, raw)| {
            let line = i + 1;
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let raw = if i == 0 {
                raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
            } else {
                raw
            };
            std::str::from_utf8(raw)
                .map(|text| (line, text))
                .map_err(|e| {
                    Error::parse(
                        path,
                        line,
                        format!(
                            "invalid UTF-8 at byte {} of the line (files must be UTF-8)",
                            e.valid_up_to() + 1
                        ),
                    )
                })
        })
}

/// True when the file holds nothing but whitespace (or nothing at all).
pub(crate) fn is_blank(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    bytes.iter().all(|b| b.is_ascii_whitespace())
}

/// Longest excerpt of the input that an error message quotes, in characters.
const MAX_QUOTED_CHARS: usize = 80;

/// `text` as quoted in an error message: at most [`MAX_QUOTED_CHARS`] characters, with the
/// total length when cut, so that a huge malformed line is not echoed back in full.
pub(crate) fn elide(text: &str) -> String {
    let total = text.chars().count();
    if total <= MAX_QUOTED_CHARS {
        return text.to_string();
    }
    let head: String = text.chars().take(MAX_QUOTED_CHARS).collect();
    format!("{head}... ({total} characters)")
}

#[cfg(test)]
mod tests {
    use super::elide;

    #[test]
    fn elide_keeps_short_text_and_cuts_long_text() {
        assert_eq!(elide("B-PER"), "B-PER");
        let long = "é".repeat(1000);
        let e = elide(&long);
        assert!(e.starts_with(&"é".repeat(80)));
        assert!(e.ends_with("... (1000 characters)"), "{e}");
        assert!(e.chars().count() < 120);
    }
}
