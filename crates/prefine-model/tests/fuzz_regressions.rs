//! Replays the committed fuzzing regression corpus (`fuzz/regressions/adapter_config/`, see the
//! Fuzzing section of docs/RELIABILITY.md) through the same entry points as the `cargo fuzz`
//! targets: every input must give `Ok` or an error naming the file, never a panic.

use std::path::Path;

use prefine_model::peft::parse_adapter_config;
use prefine_model::ModelType;
#[path = "../../../tests/support/fuzz_replay.rs"]
mod fuzz_replay;
use fuzz_replay::{names_file, replay, split};

#[test]
fn adapter_config_regressions_do_not_panic() {
    replay("adapter_config", |data| {
        let (sel, bytes) = split(data);
        let model_type = if sel & 1 == 0 {
            ModelType::Bert
        } else {
            ModelType::Distilbert
        };
        let path = Path::new("fuzz/adapter_config.json");
        names_file(
            parse_adapter_config(bytes, path, model_type),
            "fuzz/adapter_config.json",
        );
    });
}
