//! f32 linear weights packed once for inference: the frozen weight is stored directly in the
//! GEMM kernel's panel layout (the same on every kernel family), so a forward pass no longer
//! repacks every weight on every call.

use crate::sgemm::PackedB;

/// A linear layer's f32 weight `[out, in]`, packed for inference.
#[derive(Clone)]
pub struct PackedF32Matrix {
    out: usize,
    inp: usize,
    panels: PackedB,
}

impl PackedF32Matrix {
    /// Packs a row-major weight `w[out, in]`.
    pub fn from_f32(w: &[f32], out: usize, inp: usize) -> Self {
        assert_eq!(
            w.len(),
            out * inp,
            "PackedF32Matrix: weight is not out x in"
        );
        let panels = PackedB::pack(w, out, inp);
        Self { out, inp, panels }
    }

    /// The weight back as row-major `[out, in]`.
    pub fn to_f32(&self) -> Vec<f32> {
        self.panels.unpack()
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.panels.bytes()
    }
}

/// `y = x · Wᵀ + bias` for `x: [m, in]` (row-major) with a packed weight; with `gelu`,
/// `GELU(x · Wᵀ + bias)` (applied in the GEMM's last store on the panel path).
pub fn packed_linear(
    x: &[f32],
    m: usize,
    w: &PackedF32Matrix,
    bias: &[f32],
    gelu: bool,
) -> Vec<f32> {
    let (n, k) = (w.out, w.inp);
    assert!(x.len() >= m * k, "packed_linear: x is shorter than m x in");
    assert_eq!(bias.len(), n, "packed_linear: one bias per output");
    crate::sgemm::gemm_panels_bias(m, x, w.panels.view(), bias, gelu)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed layer computes what the per-call linear computes and keeps the weight.
    #[test]
    fn packed_linear_matches_the_plain_gemm() {
        let (m, out, inp) = (7, 70, 45);
        let x: Vec<f32> = (0..m * inp)
            .map(|i| ((i % 11) as f32 - 5.0) * 0.1)
            .collect();
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.05)
            .collect();
        let bias: Vec<f32> = (0..out).map(|i| i as f32 * 0.01).collect();
        let packed = PackedF32Matrix::from_f32(&w, out, inp);
        assert_eq!(packed.to_f32(), w);
        let y = packed_linear(&x, m, &packed, &bias, false);
        for i in 0..m {
            for j in 0..out {
                let want: f32 = bias[j]
                    + (0..inp)
                        .map(|p| x[i * inp + p] * w[j * inp + p])
                        .sum::<f32>();
                let got = y[i * out + j];
                assert!((got - want).abs() < 1e-4, "({i}, {j}): {got} vs {want}");
            }
        }
        // The fused activation is GELU of the same output, bit for bit, for every input width
        // (one and several KC blocks) and layout.
        for (m, inp) in [(7, 45), (33, 300), (13, 700)] {
            let x: Vec<f32> = (0..m * inp)
                .map(|i| ((i % 17) as f32 - 8.0) * 0.07)
                .collect();
            let w: Vec<f32> = (0..out * inp)
                .map(|i| ((i % 19) as f32 - 9.0) * 0.01)
                .collect();
            let packed = PackedF32Matrix::from_f32(&w, out, inp);
            crate::cpu::for_each_isa(|| {
                let mut want = packed_linear(&x, m, &packed, &bias, false);
                crate::fast_math::gelu_in_place(&mut want);
                assert_eq!(
                    packed_linear(&x, m, &packed, &bias, true),
                    want,
                    "{m}x{inp} on {}",
                    crate::cpu::isa()
                );
            });
        }
    }
}
