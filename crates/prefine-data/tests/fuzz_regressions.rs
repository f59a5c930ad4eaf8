//! Replays the committed fuzzing regression corpus (`fuzz/regressions/{conll, jsonl, csv}/`, see the
//! Fuzzing section of docs/RELIABILITY.md) through the same entry points as the `cargo fuzz`
//! targets: every input must give `Ok` or an error naming the file, never a panic.

use std::path::Path;

use prefine_data::{parse_conll, parse_delimited, parse_jsonl, ConllOptions, TagScheme};
#[path = "../../../tests/support/fuzz_replay.rs"]
mod fuzz_replay;
use fuzz_replay::{names_file, replay, split};

#[test]
fn conll_regressions_do_not_panic() {
    replay("conll", |data| {
        let (sel, bytes) = split(data);
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
        names_file(
            parse_conll(bytes, Path::new("fuzz.conll"), &opts),
            "fuzz.conll",
        );
    });
}

#[test]
fn jsonl_regressions_do_not_panic() {
    // The jsonl target has no selector byte: the whole file is the input.
    replay("jsonl", |bytes| {
        names_file(parse_jsonl(bytes, Path::new("fuzz.jsonl")), "fuzz.jsonl");
    });
}

#[test]
fn csv_regressions_do_not_panic() {
    replay("csv", |data| {
        let (sel, bytes) = split(data);
        let delimiter = [b',', b'\t', b';', b'|'][usize::from(sel & 3)];
        let r = parse_delimited(bytes, Path::new("fuzz.csv"), delimiter, "text", "label");
        names_file(r, "fuzz.csv");
    });
}
