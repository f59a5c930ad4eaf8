//! JSONL reader: `prefine_data::parse_jsonl` on arbitrary bytes: never a panic, and an error
//! names the file.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = prefine_data::parse_jsonl(data, Path::new("fuzz.jsonl")) {
        let msg = e.to_string();
        assert!(
            msg.contains("fuzz.jsonl"),
            "error does not name the file: {msg}"
        );
    }
});
