//! HTTP request bodies: the first byte picks `POST /v1/predict` (`decode_predict_request`, with
//! the default limits and with tiny ones) or `POST /v1/adapters` (`decode_add_adapter_request`);
//! the rest is the body, decoded and checked as the handlers do: never a panic, and a rejected
//! body is a 400 (`Error::BadRequest`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use prefine_serve::{decode_add_adapter_request, decode_predict_request, Error, ServeConfig};

fn bad_request_only<T>(r: prefine_serve::Result<T>) {
    if let Err(e) = r {
        assert!(matches!(e, Error::BadRequest(_)), "not a 400: {e}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            bad_request_only(decode_predict_request(body, &ServeConfig::default()));
        }
        1 => {
            let cfg = ServeConfig {
                max_texts_per_request: 2,
                max_text_chars: 8,
                ..ServeConfig::default()
            };
            bad_request_only(decode_predict_request(body, &cfg));
        }
        _ => {
            bad_request_only(decode_add_adapter_request(body));
        }
    }
});
