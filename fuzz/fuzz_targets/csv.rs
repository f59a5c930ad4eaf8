//! CSV / TSV reader: `prefine_data::parse_delimited` on arbitrary bytes, columns `text` and
//! `label`: never a panic, and an error names the file. The first byte picks the delimiter
//! (`,`, TAB, `;`, `|`).
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let delimiter = [b',', b'\t', b';', b'|'][usize::from(sel & 3)];
    let r = prefine_data::parse_delimited(bytes, Path::new("fuzz.csv"), delimiter, "text", "label");
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(
            msg.contains("fuzz.csv"),
            "error does not name the file: {msg}"
        );
    }
});
