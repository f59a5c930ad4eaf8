//! The portable (scalar) kernels, forced with `PREFINE_ISA=scalar` (what wasm32 runs), give the
//! same encoder outputs as the PyTorch reference. A test binary of its own: the kernel family
//! is chosen once per process.

mod common;

use common::*;
use prefine_model::ops::autocast::round_bf16;
use prefine_model::ops::{linear_no_bias, with_matmul_precision, MatmulPrecision};
use prefine_model::{Encoder, EncoderInput, Forward};

#[test]
fn portable_kernels_match_the_reference() {
    // SAFETY: set before any thread of this test binary uses the environment.
    unsafe { std::env::set_var("PREFINE_ISA", "scalar") };
    let r = reference("minilm_l6_hello_world.json");
    let (enc, _) = Encoder::from_model_dir(model_dir()).unwrap();
    let input = EncoderInput::from_vecs(
        &ids(&r["input_ids"]),
        &[vec![0; 4]],
        &ids(&r["attention_mask"]),
    )
    .unwrap();
    let h = enc.forward(&input, Forward::eval(None)).unwrap();
    assert_eq!(
        prefine_kernels::cpu::isa(),
        prefine_kernels::cpu::Isa::Scalar
    );
    let d = max_abs_diff(
        &h.flatten_all().unwrap().to_vec1().unwrap(),
        &flat(&r["last_hidden_state"]),
    );
    assert!(d <= 1e-4, "max abs diff {d}");

    // bf16 mixed precision on this path: the kernel multiplies rounded copies of both operands.
    let (m, n, k) = (19, 23, 37);
    let vals = |len: usize, seed: u32| -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 997.0 - 1.0)
            .collect()
    };
    let (xv, wv) = (vals(m * k, 7), vals(n * k, 11));
    let dev = candle_core::Device::Cpu;
    let x = candle_core::Tensor::from_vec(xv.clone(), (m, k), &dev).unwrap();
    let w = candle_core::Tensor::from_vec(wv.clone(), (n, k), &dev).unwrap();
    let y: Vec<f32> =
        with_matmul_precision(MatmulPrecision::Bf16, || linear_no_bias(&x, &w).unwrap())
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
    let r = |v: f32| round_bf16(v) as f64;
    let (mut worst, mut off_f32) = (0f64, 0f64);
    for i in 0..m {
        for j in 0..n {
            let exact: f64 = (0..k).map(|p| r(xv[i * k + p]) * r(wv[j * k + p])).sum();
            let full: f64 = (0..k)
                .map(|p| xv[i * k + p] as f64 * wv[j * k + p] as f64)
                .sum();
            worst = worst.max((y[i * n + j] as f64 - exact).abs());
            off_f32 = off_f32.max((y[i * n + j] as f64 - full).abs());
        }
    }
    assert!(
        worst < 1e-5,
        "bf16 on the portable kernels: max abs diff {worst}"
    );
    assert!(
        off_f32 > 1e-3,
        "bf16 on the portable kernels: operands were not rounded"
    );
}
