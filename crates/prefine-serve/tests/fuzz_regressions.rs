//! Replays the committed fuzzing regression corpus (`fuzz/regressions/http_request/`, see the
//! Fuzzing section of docs/RELIABILITY.md) through the same entry points as the `cargo fuzz`
//! targets: every input must give `Ok` or an error naming the file, never a panic.

use prefine_serve::{decode_add_adapter_request, decode_predict_request, Error, ServeConfig};
#[path = "../../../tests/support/fuzz_replay.rs"]
mod fuzz_replay;
use fuzz_replay::{replay, split};

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
