//! Finite-difference and reference checks for every fused op's backward.

use candle_core::{Device, Tensor, Var};

use super::*;
use crate::params::{normal, seed_rng};

/// Checks the analytic gradient of `loss = sum(f(inputs) * probe)` against central finite
/// differences for every element of every input in `check`.
fn fd_check(inputs: &[Var], check: &[usize], f: &dyn Fn(&[Tensor]) -> Tensor) {
    let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let mut rng = seed_rng(7);
    let probe = normal(1, out.elem_count(), 1.0, &mut rng)
        .unwrap()
        .reshape(out.shape())
        .unwrap();
    let loss = (out * &probe).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let eval = |ts: &[Tensor]| -> f64 {
        (f(ts) * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for &i in check {
        let g: Vec<f32> = grads
            .get(&ts[i])
            .expect("gradient present")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = ts[i].flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-2f32;
        for j in 0..base.len() {
            let mut plus = base.clone();
            plus[j] += h;
            let mut minus = base.clone();
            minus[j] -= h;
            let mut tp = ts.to_vec();
            tp[i] = Tensor::from_vec(plus, ts[i].shape(), &Device::Cpu).unwrap();
            let mut tm = ts.to_vec();
            tm[i] = Tensor::from_vec(minus, ts[i].shape(), &Device::Cpu).unwrap();
            let num = (eval(&tp) - eval(&tm)) / (2.0 * h as f64);
            let ana = g[j] as f64;
            assert!(
                (num - ana).abs() <= 2e-3 + 1e-2 * num.abs(),
                "input {i} element {j}: analytic {ana} vs numeric {num}"
            );
        }
    }
}

fn var(rows: usize, cols: usize, seed: u64) -> Var {
    Var::from_tensor(&normal(rows, cols, 1.0, &mut seed_rng(seed)).unwrap()).unwrap()
}

#[test]
fn linear_gradients_match_finite_differences() {
    let x = var(5, 6, 1);
    let w = var(4, 6, 2);
    let b = var(1, 4, 3);
    let inputs = [x, w, b];
    fd_check(&inputs, &[0, 1, 2], &|t| {
        linear(&t[0], &t[1], &t[2].flatten_all().unwrap()).unwrap()
    });
    fd_check(&inputs[..2], &[0, 1], &|t| {
        linear_no_bias(&t[0], &t[1]).unwrap()
    });
}

#[test]
fn linear_matches_matmul_on_3d_input() {
    let x = normal(6, 8, 1.0, &mut seed_rng(1))
        .unwrap()
        .reshape((2, 3, 8))
        .unwrap();
    let w = normal(5, 8, 1.0, &mut seed_rng(2)).unwrap();
    let b = normal(1, 5, 1.0, &mut seed_rng(3))
        .unwrap()
        .flatten_all()
        .unwrap();
    let ours = linear(&x, &w, &b).unwrap();
    let reference = x
        .broadcast_matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    let diff = (ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn frozen_weight_gets_no_gradient() {
    let x = var(3, 4, 1);
    let w = normal(2, 4, 1.0, &mut seed_rng(2)).unwrap(); // not a variable: frozen
    let b = normal(1, 2, 1.0, &mut seed_rng(3))
        .unwrap()
        .flatten_all()
        .unwrap();
    let before = weight_grad_count();
    let y = linear(x.as_tensor(), &w, &b).unwrap().sum_all().unwrap();
    let grads = y.backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
    // Other tests may run concurrently, so only check that this one added nothing for `w`.
    let _ = before;
}

#[test]
fn layer_norm_gradients_match_finite_differences() {
    let x = var(4, 7, 4);
    let g = var(1, 7, 5);
    let b = var(1, 7, 6);
    fd_check(&[x, g, b], &[0, 1, 2], &|t| {
        layer_norm(
            &t[0],
            &t[1].flatten_all().unwrap(),
            &t[2].flatten_all().unwrap(),
            1e-5,
        )
        .unwrap()
    });
}

/// Rows wider than the backward pass's 16 lanes, with a ragged tail (40 = 2 x 16 + 8), and
/// several parallel tasks of rows (40 rows): the lane sums and the AVX-512 copy of the loop.
#[test]
fn wide_layer_norm_gradients_match_finite_differences() {
    let x = var(40, 40, 14);
    let r = var(40, 40, 15);
    let g = var(1, 40, 16);
    let b = var(1, 40, 17);
    fd_check(&[x, r, g, b], &[0, 1, 2, 3], &|t| {
        add_layer_norm(
            &t[0],
            &t[1],
            &t[2].flatten_all().unwrap(),
            &t[3].flatten_all().unwrap(),
            1e-5,
        )
        .unwrap()
    });
}

#[test]
fn layer_norm_matches_composed_reference() {
    let x = normal(3, 10, 2.0, &mut seed_rng(9)).unwrap();
    let g = normal(1, 10, 1.0, &mut seed_rng(10))
        .unwrap()
        .flatten_all()
        .unwrap();
    let b = normal(1, 10, 1.0, &mut seed_rng(11))
        .unwrap()
        .flatten_all()
        .unwrap();
    let ours = layer_norm(&x, &g, &b, 1e-12).unwrap();
    let mean = x.mean_keepdim(1).unwrap();
    let xc = x.broadcast_sub(&mean).unwrap();
    let var = xc.sqr().unwrap().mean_keepdim(1).unwrap();
    let reference = xc
        .broadcast_div(&(var + 1e-12).unwrap().sqrt().unwrap())
        .unwrap()
        .broadcast_mul(&g)
        .unwrap()
        .broadcast_add(&b)
        .unwrap();
    let diff = (ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn masked_softmax_gradients_match_finite_differences() {
    let x = Var::from_tensor(
        &normal(1, 2 * 2 * 3 * 4, 1.0, &mut seed_rng(12))
            .unwrap()
            .reshape((2, 2, 3, 4))
            .unwrap(),
    )
    .unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 0.], [1., 1., 1., 1.]], &Device::Cpu).unwrap();
    fd_check(&[x], &[0], &|t| masked_softmax(&t[0], &mask, 0.7).unwrap());
}

#[test]
fn masked_softmax_zeroes_padding_and_normalises() {
    let x = normal(1, 8, 1.0, &mut seed_rng(13))
        .unwrap()
        .reshape((1, 2, 1, 4))
        .unwrap();
    let mask = Tensor::new(&[[1f32, 1., 0., 0.]], &Device::Cpu).unwrap();
    let y = masked_softmax(&x, &mask, 1.0).unwrap();
    let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!((v[2], v[3], v[6], v[7]), (0.0, 0.0, 0.0, 0.0));
    assert!((v[0] + v[1] - 1.0).abs() < 1e-6);
    let reference =
        candle_nn::ops::softmax_last_dim(&x.narrow(3, 0, 2).unwrap().contiguous().unwrap())
            .unwrap();
    let r: Vec<f32> = reference.flatten_all().unwrap().to_vec1().unwrap();
    assert!((r[0] - v[0]).abs() < 1e-6 && (r[2] - v[4]).abs() < 1e-6);
}

#[test]
fn dropout_gradient_and_statistics() {
    let x = var(3, 5, 14);
    let mut rng = seed_rng(3);
    let mask = DropoutMask::draw(15, 0.5, &mut rng);
    let m = mask.clone();
    fd_check(&[x], &[0], &move |t| t[0].apply_op1(m.clone()).unwrap());
    let ones = Tensor::ones((100, 100), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = dropout(&ones, 0.1, &mut seed_rng(1)).unwrap();
    let mean = y.mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(
        (mean - 1.0).abs() < 0.03,
        "inverted dropout keeps the mean: {mean}"
    );
    let y2 = dropout(&ones, 0.1, &mut seed_rng(1)).unwrap();
    assert_eq!(
        y.to_vec2::<f32>().unwrap(),
        y2.to_vec2::<f32>().unwrap(),
        "seeded dropout is reproducible"
    );
    let _ = mask;
}

#[test]
fn gelu_gradient_and_reference() {
    let x = var(3, 9, 21);
    fd_check(std::slice::from_ref(&x), &[0], &|t| gelu(&t[0]).unwrap());
    let reference = x.as_tensor().gelu_erf().unwrap();
    let ours = gelu(x.as_tensor()).unwrap();
    let diff = (ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6, "{diff}");
}

/// Reference attention from candle's differentiable primitives; with `bf16`, the operands of
/// both products (`q`, `k`, the probabilities, `v`) are rounded to bf16 first.
fn reference_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    scale: f64,
    bf16: bool,
) -> Tensor {
    let round = |t: &Tensor| if bf16 { bf16_rounded(t) } else { t.clone() };
    let (q, k, v) = (&round(q), &round(k), &round(v));
    let (b, s, h) = q.dims3().unwrap();
    let dh = h / heads;
    let split = |t: &Tensor| {
        t.reshape((b, s, heads, dh))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let scores = (split(q).matmul(&split(k).t().unwrap()).unwrap() * scale).unwrap();
    let bias = ((mask.unsqueeze(1).unwrap().unsqueeze(1).unwrap() - 1.0).unwrap() * 1e9).unwrap();
    let scores = scores.broadcast_add(&bias).unwrap();
    let max = scores.max_keepdim(3).unwrap();
    let e = scores.broadcast_sub(&max).unwrap().exp().unwrap();
    let p = round(&e.broadcast_div(&e.sum_keepdim(3).unwrap()).unwrap());
    p.matmul(&split(v))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, s, h))
        .unwrap()
}

/// A `[b, s, h]` variable of standard normal values.
fn var3(b: usize, s: usize, h: usize, seed: u64) -> Var {
    Var::from_tensor(
        &normal(1, b * s * h, 1.0, &mut seed_rng(seed))
            .unwrap()
            .reshape((b, s, h))
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn attention_matches_reference_and_finite_differences() {
    let (q, k, v) = (var3(2, 5, 8, 31), var3(2, 5, 8, 32), var3(2, 5, 8, 33));
    let mask = Tensor::new(
        &[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.]],
        &Device::Cpu,
    )
    .unwrap();
    let ours = attention(
        q.as_tensor(),
        k.as_tensor(),
        v.as_tensor(),
        &mask,
        2,
        0.5,
        None,
    )
    .unwrap();
    let reference = reference_attention(
        q.as_tensor(),
        k.as_tensor(),
        v.as_tensor(),
        &mask,
        2,
        0.5,
        false,
    );
    let diff = (ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
    fd_check(&[q, k, v], &[0, 1, 2], &|t| {
        attention(&t[0], &t[1], &t[2], &mask, 2, 0.5, None).unwrap()
    });
}

#[test]
fn windowed_attention_matches_a_banded_reference_and_finite_differences() {
    use super::windowed_attention;
    let (b, s, h, w) = (2, 7, 8, 2);
    let (q, k, v) = (var3(b, s, h, 41), var3(b, s, h, 42), var3(b, s, h, 43));
    let mask = Tensor::new(
        &[[1f32, 1., 1., 1., 1., 0., 0.], [1., 1., 1., 1., 1., 1., 1.]],
        &Device::Cpu,
    )
    .unwrap();
    let ours = windowed_attention(
        q.as_tensor(),
        k.as_tensor(),
        v.as_tensor(),
        &mask,
        Some(w),
        2,
        0.5,
        None,
    )
    .unwrap();
    // The reference: each query row separately, its keys limited to the band |i - j| <= w.
    let mut rows = Vec::new();
    for i in 0..s {
        let band: Vec<f32> = (0..s)
            .map(|j| if i.abs_diff(j) <= w { 1.0 } else { 0.0 })
            .collect();
        let band = Tensor::new(band.as_slice(), &Device::Cpu).unwrap();
        let m = mask.broadcast_mul(&band).unwrap();
        let full = reference_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            &m,
            2,
            0.5,
            false,
        );
        rows.push(full.narrow(1, i, 1).unwrap());
    }
    let reference = Tensor::cat(&rows, 1).unwrap();
    // Padded query rows are not compared (a fully masked band is uniform in ours only).
    let real = |t: &Tensor| t.narrow(0, 1, 1).unwrap();
    let diff = max_abs_diff(&real(&ours), &real(&reference));
    assert!(diff < 1e-5, "{diff}");
    let diff = max_abs_diff(
        &ours.narrow(0, 0, 1).unwrap().narrow(1, 0, 5).unwrap(),
        &reference.narrow(0, 0, 1).unwrap().narrow(1, 0, 5).unwrap(),
    );
    assert!(diff < 1e-5, "{diff}");
    fd_check(&[q, k, v], &[0, 1, 2], &|t| {
        windowed_attention(&t[0], &t[1], &t[2], &mask, Some(w), 2, 0.5, None).unwrap()
    });
}

#[test]
fn attention_dropout_gradients_match_finite_differences() {
    let (q, k, v) = (var3(1, 4, 8, 41), var3(1, 4, 8, 42), var3(1, 4, 8, 43));
    let mask = Tensor::new(&[[1f32, 1., 1., 1.]], &Device::Cpu).unwrap();
    // The same seed draws the same dropout mask on every call.
    fd_check(&[q, k, v], &[0, 1, 2], &|t| {
        let mut rng = seed_rng(5);
        attention(&t[0], &t[1], &t[2], &mask, 2, 0.5, Some((0.3, &mut rng))).unwrap()
    });
}

#[test]
fn frozen_lora_linear_matches_composition_and_finite_differences() {
    let x = Var::from_tensor(
        &normal(1, 2 * 3 * 6, 1.0, &mut seed_rng(51))
            .unwrap()
            .reshape((2, 3, 6))
            .unwrap(),
    )
    .unwrap();
    let a = var(2, 6, 52);
    let b = var(5, 2, 53);
    let w = normal(5, 6, 1.0, &mut seed_rng(54)).unwrap();
    let bias = normal(1, 5, 1.0, &mut seed_rng(55))
        .unwrap()
        .flatten_all()
        .unwrap();
    let fused =
        frozen_lora_linear(x.as_tensor(), &w, &bias, a.as_tensor(), b.as_tensor(), 1.5).unwrap();
    let h = linear_no_bias(x.as_tensor(), a.as_tensor()).unwrap();
    let composed = (linear(x.as_tensor(), &w, &bias).unwrap()
        + (linear_no_bias(&h, b.as_tensor()).unwrap() * 1.5).unwrap())
    .unwrap();
    let diff = (fused - composed)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "{diff}");
    fd_check(&[x, a, b], &[0, 1, 2], &|t| {
        frozen_lora_linear(&t[0], &w, &bias, &t[1], &t[2], 1.5).unwrap()
    });
}

#[test]
fn add_layer_norm_matches_composition_and_finite_differences() {
    let x = var(4, 8, 61);
    let r = var(4, 8, 62);
    let g = var(1, 8, 63);
    let b = var(1, 8, 64);
    let fused = add_layer_norm(
        x.as_tensor(),
        r.as_tensor(),
        &g.as_tensor().flatten_all().unwrap(),
        &b.as_tensor().flatten_all().unwrap(),
        1e-5,
    )
    .unwrap();
    let composed = layer_norm(
        &(x.as_tensor() + r.as_tensor()).unwrap(),
        &g.as_tensor().flatten_all().unwrap(),
        &b.as_tensor().flatten_all().unwrap(),
        1e-5,
    )
    .unwrap();
    let diff = (fused - composed)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6, "{diff}");
    fd_check(&[x, r, g, b], &[0, 1, 2, 3], &|t| {
        add_layer_norm(
            &t[0],
            &t[1],
            &t[2].flatten_all().unwrap(),
            &t[3].flatten_all().unwrap(),
            1e-5,
        )
        .unwrap()
    });
}

/// `t` rounded to bf16 by candle's own conversion (an independent reference).
fn bf16_rounded(t: &Tensor) -> Tensor {
    t.to_dtype(candle_core::DType::BF16)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `a[m, k] · b[k, n]` in f64, rounded to f32 at the end.
fn matmul_f64(a: &Tensor, b: &Tensor) -> Tensor {
    let (m, k) = a.dims2().unwrap();
    let n = b.dims2().unwrap().1;
    let av: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let bv: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|p| av[i * k + p] as f64 * bv[p * n + j] as f64)
                .sum();
            c[i * n + j] = s as f32;
        }
    }
    Tensor::from_vec(c, (m, n), &Device::Cpu).unwrap()
}

/// The gradients of `sum(y * probe)` with respect to `vars`.
fn probe_grads(y: &Tensor, probe: &Tensor, vars: &[&Var]) -> Vec<Tensor> {
    let g = (y * probe).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|v| g.get(v.as_tensor()).unwrap().clone())
        .collect()
}

#[test]
fn bf16_linear_multiplies_rounded_operands_forward_and_backward() {
    // Sizes with partial register tiles and panels; 37 x 45 x 70 is split across threads.
    let (m, n, k) = (37, 45, 70);
    let x = var(m, k, 61);
    let w = var(n, k, 62);
    let b = var(1, n, 63);
    let probe = normal(m, n, 1.0, &mut seed_rng(64)).unwrap();
    let run = |p: MatmulPrecision| {
        // Built under the setting; the backward pass runs outside it, in the op's precision.
        let y = with_matmul_precision(p, || {
            linear(x.as_tensor(), w.as_tensor(), &b.flatten_all().unwrap()).unwrap()
        });
        let g = probe_grads(&y, &probe, &[&x, &w, &b]);
        (y, g[0].clone(), g[1].clone(), g[2].clone())
    };
    let (y, dx, dw, db) = run(MatmulPrecision::Bf16);
    let (xr, wr, pr) = (
        bf16_rounded(x.as_tensor()),
        bf16_rounded(w.as_tensor()),
        bf16_rounded(&probe),
    );
    let y_ref = matmul_f64(&xr, &wr.t().unwrap())
        .broadcast_add(b.as_tensor())
        .unwrap();
    assert!(max_abs_diff(&y, &y_ref) < 2e-5, "forward");
    assert!(max_abs_diff(&dx, &matmul_f64(&pr, &wr)) < 2e-5, "dx");
    assert!(
        max_abs_diff(&dw, &matmul_f64(&pr.t().unwrap(), &xr)) < 2e-5,
        "dw"
    );
    // The bias gradient is a plain f32 sum of dy.
    let db_ref = probe.sum_keepdim(0).unwrap();
    assert!(max_abs_diff(&db, &db_ref) < 1e-5, "db");
    // And the rounding did happen: f32 differs by about bf16's relative precision.
    let (y32, dx32, dw32, _) = run(MatmulPrecision::F32);
    for (a, b) in [(&y, &y32), (&dx, &dx32), (&dw, &dw32)] {
        let d = max_abs_diff(a, b);
        assert!(d > 1e-3 && d < 0.2, "bf16 vs f32: {d}");
    }
}

#[test]
fn bf16_lora_linear_equals_its_bf16_composition() {
    let x = var(23, 40, 71);
    let a = var(4, 40, 72);
    let bm = var(33, 4, 73);
    let w = normal(33, 40, 1.0, &mut seed_rng(74)).unwrap();
    let bias = normal(1, 33, 1.0, &mut seed_rng(75))
        .unwrap()
        .flatten_all()
        .unwrap();
    let probe = normal(23, 33, 1.0, &mut seed_rng(76)).unwrap();
    // A scale of 2 commutes with rounding, so the fused op and the composition round the same
    // values.
    let grads = |fused: bool| {
        let y = with_matmul_precision(MatmulPrecision::Bf16, || {
            if fused {
                frozen_lora_linear(x.as_tensor(), &w, &bias, a.as_tensor(), bm.as_tensor(), 2.0)
                    .unwrap()
            } else {
                let h = linear_no_bias(x.as_tensor(), a.as_tensor()).unwrap();
                (linear(x.as_tensor(), &w, &bias).unwrap()
                    + (linear_no_bias(&h, bm.as_tensor()).unwrap() * 2.0).unwrap())
                .unwrap()
            }
        });
        let g = probe_grads(&y, &probe, &[&x, &a, &bm]);
        (y, g[0].clone(), g[1].clone(), g[2].clone())
    };
    let (f, c) = (grads(true), grads(false));
    assert!(max_abs_diff(&f.0, &c.0) < 1e-4, "forward");
    assert!(max_abs_diff(&f.1, &c.1) < 1e-4, "dx");
    assert!(max_abs_diff(&f.2, &c.2) < 1e-4, "dA");
    assert!(max_abs_diff(&f.3, &c.3) < 1e-4, "dB");
    let y32 =
        frozen_lora_linear(x.as_tensor(), &w, &bias, a.as_tensor(), bm.as_tensor(), 2.0).unwrap();
    assert!(
        max_abs_diff(&f.0, &y32) > 1e-3,
        "bf16 rounding had no effect"
    );
}

#[test]
fn bf16_attention_matches_a_rounded_reference() {
    let (q, k, v) = (
        var3(2, 19, 16, 81),
        var3(2, 19, 16, 82),
        var3(2, 19, 16, 83),
    );
    let mut mask = vec![1f32; 2 * 19];
    mask[15..19].fill(0.0);
    let mask = Tensor::from_vec(mask, (2, 19), &Device::Cpu).unwrap();
    let probe = normal(1, 2 * 19 * 16, 1.0, &mut seed_rng(84))
        .unwrap()
        .reshape((2, 19, 16))
        .unwrap();
    let run = |p: MatmulPrecision| {
        let y = with_matmul_precision(p, || {
            attention(
                q.as_tensor(),
                k.as_tensor(),
                v.as_tensor(),
                &mask,
                2,
                0.25,
                None,
            )
            .unwrap()
        });
        let g = probe_grads(&y, &probe, &[&q, &k, &v]);
        (y, g[0].clone(), g[1].clone(), g[2].clone())
    };
    let bf = run(MatmulPrecision::Bf16);
    let ctx = reference_attention(
        q.as_tensor(),
        k.as_tensor(),
        v.as_tensor(),
        &mask,
        2,
        0.25,
        true,
    );
    assert!(max_abs_diff(&bf.0, &ctx) < 1e-5, "forward");
    // Gradients: close to f32's (bf16's precision) but not equal to them.
    let f = run(MatmulPrecision::F32);
    for (name, a, b) in [
        ("dq", &bf.1, &f.1),
        ("dk", &bf.2, &f.2),
        ("dv", &bf.3, &f.3),
    ] {
        let d = max_abs_diff(a, b);
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d > 0.0 && d < 2e-2 * scale, "{name}: {d} (scale {scale})");
    }
}

/// The fused embedding sum equals candle's composition (`index_select`, `narrow`,
/// `broadcast_add`, `add`) bit for bit, forward and backward, with and without a token-type
/// table; its gradients match finite differences; a frozen table gets no gradient, and an id
/// outside its table is an error.
#[test]
fn embedding_sum_matches_the_composition_and_finite_differences() {
    let (b, s, h) = (3, 4, 5);
    let word = var(11, h, 1);
    let pos = var(6, h, 2);
    let typ = var(2, h, 3);
    let ids = Tensor::new(
        &[[1u32, 7, 7, 10], [0, 3, 1, 1], [9, 9, 2, 5]],
        &Device::Cpu,
    )
    .unwrap();
    let types = Tensor::new(&[[0u32, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 1]], &Device::Cpu).unwrap();
    let composed = |w: &Tensor, p: &Tensor, t: Option<&Tensor>| {
        let mut x = w
            .index_select(&ids.flatten_all().unwrap(), 0)
            .unwrap()
            .reshape((b, s, h))
            .unwrap()
            .broadcast_add(&p.narrow(0, 0, s).unwrap().unsqueeze(0).unwrap())
            .unwrap();
        if let Some(t) = t {
            let rows = t.index_select(&types.flatten_all().unwrap(), 0).unwrap();
            x = (x + rows.reshape((b, s, h)).unwrap()).unwrap();
        }
        x
    };
    let probe = normal(1, b * s * h, 1.0, &mut seed_rng(9))
        .unwrap()
        .reshape((b, s, h))
        .unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for with_types in [true, false] {
        let t = with_types.then(|| typ.as_tensor());
        let fused = embedding_sum(word.as_tensor(), pos.as_tensor(), t, &ids, &types).unwrap();
        let reference = composed(word.as_tensor(), pos.as_tensor(), t);
        assert_eq!(
            flat(&fused),
            flat(&reference),
            "forward, types {with_types}"
        );
        let gf = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gr = (reference * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut tables = vec![word.as_tensor(), pos.as_tensor()];
        tables.extend(t);
        for (i, table) in tables.into_iter().enumerate() {
            assert_eq!(
                flat(gf.get(table).expect("fused gradient")),
                flat(gr.get(table).expect("reference gradient")),
                "gradient of table {i}, types {with_types}"
            );
        }
    }
    fd_check(
        &[word.clone(), pos.clone(), typ.clone()],
        &[0, 1, 2],
        &|t| embedding_sum(&t[0], &t[1], Some(&t[2]), &ids, &types).unwrap(),
    );
    // A frozen word table: gradients for the others only.
    let frozen = word.as_detached_tensor();
    let y = embedding_sum(
        &frozen,
        pos.as_tensor(),
        Some(typ.as_tensor()),
        &ids,
        &types,
    )
    .unwrap();
    let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&frozen).is_none() && g.get(pos.as_tensor()).is_some());
    let bad = Tensor::new(&[[1u32, 11, 0, 0]], &Device::Cpu).unwrap();
    let err = embedding_sum(
        word.as_tensor(),
        pos.as_tensor(),
        None,
        &bad,
        &bad.zeros_like().unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("word id 11 outside a table of 11 rows"),
        "{err}"
    );
}

#[test]
fn frozen_packed_linear_matches_the_linear_op_forward_and_backward() {
    // Ragged sizes: a partial last panel (70 outputs), several KC blocks of `in` (700).
    for (m, out, inp) in [(7, 70, 45), (33, 40, 700)] {
        let x = var(m, inp, 91);
        let w = normal(out, inp, 0.5, &mut seed_rng(92)).unwrap();
        let bias = normal(1, out, 1.0, &mut seed_rng(93))
            .unwrap()
            .flatten_all()
            .unwrap();
        let probe = normal(m, out, 1.0, &mut seed_rng(94)).unwrap();
        let packs = std::sync::Arc::new(FrozenPacks::pack(&w).unwrap());
        assert_eq!(packs.dims(), (out, inp));
        let packed = frozen_packed_linear(x.as_tensor(), packs, &bias).unwrap();
        let plain = linear(x.as_tensor(), &w, &bias).unwrap();
        assert!(
            max_abs_diff(&packed, &plain) < 1e-4,
            "forward {m}x{out}x{inp}"
        );
        let dx_packed = probe_grads(&packed, &probe, &[&x]);
        let dx_plain = probe_grads(&plain, &probe, &[&x]);
        assert!(
            max_abs_diff(&dx_packed[0], &dx_plain[0]) < 1e-4,
            "dx {m}x{out}x{inp}"
        );
    }
    let w = normal(5, 6, 1.0, &mut seed_rng(95)).unwrap();
    let packs = std::sync::Arc::new(FrozenPacks::pack(&w).unwrap());
    let wrong_bias = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    let x = Tensor::zeros((2, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(frozen_packed_linear(&x, packs, &wrong_bias).is_err());
}
