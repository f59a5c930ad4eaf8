//! Shared by every crate's `tests/fuzz_regressions.rs` (included with `#[path]`): replays the
//! committed fuzzing regression corpus `fuzz/regressions/<target>/` (see the Fuzzing section of
//! docs/RELIABILITY.md) through a check that must not panic.
#![allow(dead_code)] // each including test uses its own subset

use std::path::Path;

/// Every committed input of `fuzz/regressions/{target}/`, sorted, as (file name, bytes).
pub fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
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
pub fn split(data: &[u8]) -> (u8, &[u8]) {
    data.split_first().map_or((0, &[][..]), |(s, r)| (*s, r))
}

/// Runs `check` on every input of `target` and fails, naming every offending file, if it panics
/// on any of them.
pub fn replay(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
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
pub fn names_file<E: std::fmt::Display>(r: Result<impl Sized, E>, file: &str) {
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(msg.contains(file), "error does not name {file}: {msg}");
    }
}
