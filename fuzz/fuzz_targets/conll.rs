//! CoNLL reader: `prefine_data::parse_conll` on arbitrary bytes: never a panic, and an error
//! names the file. The first byte picks the tag scheme (IOB2, IOB1, BIOES, BILOU, auto-detected)
//! and whether stray `I-X` tags are repaired.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use prefine_data::{parse_conll, ConllOptions, TagScheme};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
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
    if let Err(e) = parse_conll(bytes, Path::new("fuzz.conll"), &opts) {
        let msg = e.to_string();
        assert!(
            msg.contains("fuzz.conll"),
            "error does not name the file: {msg}"
        );
    }
});
