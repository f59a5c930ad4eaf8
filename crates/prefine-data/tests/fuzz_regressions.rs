//! Replays the committed fuzzing regression corpus (`fuzz/regressions/{conll, jsonl, csv}/`, see the
//! Fuzzing section of docs/RELIABILITY.md) through the same entry points as the `cargo fuzz`
//! targets: every input must give `Ok` or an error naming the file, never a panic.

use std::path::Path;

use prefine_data::{parse_conll, parse_delimited, parse_jsonl, ConllOptions, TagScheme};

/// Every committed input of `fuzz/regressions/{target}/`, sorted, as (file name, bytes).
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let bytes = std::fs::read(&path).expect("regression input");
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{}: no regression inputs", dir.display());
    out
}

/// The fuzz target's selector byte and the input after it (an empty input: selector 0).
fn split(data: &[u8]) -> (u8, &[u8]) {
    data.split_first().map_or((0, &[][..]), |(s, r)| (*s, r))
}

/// Runs `check` on every input of `target` and fails, naming every offending file, if it panics
/// on any of them.
fn replay(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let mut failed = Vec::new();
    let inputs = inputs(target);
    for (name, bytes) in &inputs {
        if std::panic::catch_unwind(|| check(bytes)).is_err() {
            failed.push(name.clone());
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz/regressions/{target}: {} of {} inputs panicked: {failed:?}",
        failed.len(),
        inputs.len()
    );
}

/// An error message must name the file it is about.
fn names_file<E: std::fmt::Display>(r: Result<impl Sized, E>, file: &str) {
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(msg.contains(file), "error does not name {file}: {msg}");
    }
}

#[test]
fn conll_regressions_do_not_panic() {
    replay("conll", |data| {
        let (sel, bytes) = split(data);
        let scheme = match (sel >> 1) % 5 {
            0 => TagScheme::Iob2,
            1 => TagScheme::Iob1,
            2 => TagScheme::Bioes,
            3 => TagScheme::Bilou,
            _ => TagScheme::Auto,
        };
        let opts = ConllOptions {
            scheme,
            repair: sel & 1 != 0,
        };
        names_file(
            parse_conll(bytes, Path::new("fuzz.conll"), &opts),
            "fuzz.conll",
        );
    });
}

#[test]
fn jsonl_regressions_do_not_panic() {
    // The jsonl target has no selector byte: the whole file is the input.
    replay("jsonl", |bytes| {
        names_file(parse_jsonl(bytes, Path::new("fuzz.jsonl")), "fuzz.jsonl");
    });
}

#[test]
fn csv_regressions_do_not_panic() {
    replay("csv", |data| {
        let (sel, bytes) = split(data);
        let delimiter = [b',', b'\t', b';', b'|'][usize::from(sel & 3)];
        let r = parse_delimited(bytes, Path::new("fuzz.csv"), delimiter, "text", "label");
        names_file(r, "fuzz.csv");
    });
}
