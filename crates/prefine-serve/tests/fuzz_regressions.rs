//! Replays the committed fuzzing regression corpus (`fuzz/regressions/http_request/`, see the
//! Fuzzing section of docs/RELIABILITY.md) through the same entry points as the `cargo fuzz`
//! targets: every input must give `Ok` or an error naming the file, never a panic.

use std::path::Path;

use prefine_serve::{decode_add_adapter_request, decode_predict_request, Error, ServeConfig};

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

/// A rejected body must be a 400 (`Error::BadRequest`), never another kind of error.
fn bad_request_only<T>(r: prefine_serve::Result<T>) {
    if let Err(e) = r {
        assert!(matches!(e, Error::BadRequest(_)), "not a 400: {e}");
    }
}

#[test]
fn http_request_regressions_do_not_panic() {
    replay("http_request", |data| match split(data) {
        (sel, body) if sel % 3 == 0 => {
            bad_request_only(decode_predict_request(body, &ServeConfig::default()))
        }
        (sel, body) if sel % 3 == 1 => {
            let cfg = ServeConfig {
                max_texts_per_request: 2,
                max_text_chars: 8,
                ..ServeConfig::default()
            };
            bad_request_only(decode_predict_request(body, &cfg));
        }
        (_, body) => bad_request_only(decode_add_adapter_request(body)),
    });
}
