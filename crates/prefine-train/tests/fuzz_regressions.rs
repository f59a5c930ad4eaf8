//! Replays the committed fuzzing regression corpus (`fuzz/regressions/config/`, see the
//! Fuzzing section of docs/RELIABILITY.md) through the same entry points as the `cargo fuzz`
//! targets: every input must give `Ok` or an error, never a panic.

use std::path::Path;

use prefine_train::finetune::FinetuneConfig;
use prefine_train::pretrain::PretrainConfig;
#[path = "../../../tests/support/fuzz_replay.rs"]
mod fuzz_replay;
use fuzz_replay::{replay, split};

/// Only "never a panic": errors of the TOML parser name the file and line, but the value checks
/// (`validate`) name only the field (the CLI adds the file to those).
fn no_panic<T, E>(r: Result<T, E>) {
    drop(r);
}

/// The finetune and pretrain inputs of the `config` target (selector 0 and 1; the suite inputs
/// are replayed by prefine-suite's copy of this test).
#[test]
fn finetune_and_pretrain_config_regressions_do_not_panic() {
    replay("config", |data| {
        let (sel, bytes) = split(data);
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        let path = Path::new("fuzz.toml");
        match sel % 3 {
            0 => no_panic(FinetuneConfig::from_toml_str(text, path)),
            1 => no_panic(PretrainConfig::from_toml_str(text, path)),
            _ => {}
        }
    });
}
