//! PEFT `adapter_config.json` reader: `prefine_model::peft::parse_adapter_config` on arbitrary
//! bytes: never a panic, and an error names the file. The first byte picks the model family the
//! config is checked against.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use prefine_model::config::ModelType;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let model_type = if sel & 1 == 0 {
        ModelType::Bert
    } else {
        ModelType::Distilbert
    };
    let r = prefine_model::peft::parse_adapter_config(
        bytes,
        Path::new("fuzz/adapter_config.json"),
        model_type,
    );
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(
            msg.contains("fuzz/adapter_config.json"),
            "error does not name the file: {msg}"
        );
    }
});
