//! TOML configs: the first byte picks `FinetuneConfig`, `PretrainConfig` or `SuiteConfig`
//! (`from_toml_str`, which parses and validates); the rest is the file text (inputs that are not
//! UTF-8 are skipped: the file readers reject them before parsing). Never a panic.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    // Only "never a panic": errors of the TOML parser name the file and line, but the value
    // checks (`validate`) name only the field; the CLI adds the file to those.
    match sel % 3 {
        0 => {
            let _ = prefine_train::finetune::FinetuneConfig::from_toml_str(text, path);
        }
        1 => {
            let _ = prefine_train::pretrain::PretrainConfig::from_toml_str(text, path);
        }
        _ => {
            let _ = prefine_suite::SuiteConfig::from_toml_str(text, path);
        }
    }
});
