//! The `gemm`-crate fallback (used on CPUs without AVX-512) gives the same encoder outputs as
//! the PyTorch reference. A test binary of its own: the kernel choice is made once per process.

mod common;

use common::*;
use prefine_model::{Encoder, EncoderInput, Forward};

#[test]
fn fallback_gemm_matches_the_reference() {
    // SAFETY: set before any thread of this test binary uses the environment.
    unsafe { std::env::set_var("PREFINE_GEMM_CRATE", "1") };
    let r = reference("minilm_l6_hello_world.json");
    let (enc, _) = Encoder::from_model_dir(model_dir()).unwrap();
    let input = EncoderInput::from_vecs(
        &ids(&r["input_ids"]),
        &[vec![0; 4]],
        &ids(&r["attention_mask"]),
    )
    .unwrap();
    let h = enc.forward(&input, Forward::eval(None)).unwrap();
    let d = max_abs_diff(
        &h.flatten_all().unwrap().to_vec1().unwrap(),
        &flat(&r["last_hidden_state"]),
    );
    assert!(d <= 1e-4, "max abs diff {d}");
}
