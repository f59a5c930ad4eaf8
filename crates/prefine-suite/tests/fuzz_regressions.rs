//! Replays the committed fuzzing regression corpus (`fuzz/regressions/config/`, see the
//! Fuzzing section of docs/RELIABILITY.md) through the same entry points as the `cargo fuzz`
//! targets: every input must give `Ok` or an error, never a panic.

use std::path::Path;

use prefine_suite::SuiteConfig;

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

/// Only "never a panic": errors of the TOML parser name the file and line, but the value checks
/// (`validate`) name only the field (the CLI adds the file to those).
fn no_panic<T, E>(r: Result<T, E>) {
    drop(r);
}

/// The suite inputs of the `config` target (selector 2; finetune and pretrain inputs are
/// replayed by prefine-train's copy of this test).
#[test]
fn suite_config_regressions_do_not_panic() {
    replay("config", |data| {
        let (sel, bytes) = split(data);
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        if sel % 3 == 2 {
            no_panic(SuiteConfig::from_toml_str(text, Path::new("fuzz.toml")));
        }
    });
}
