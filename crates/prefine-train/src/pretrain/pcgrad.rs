//! PCGrad gradient surgery (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning") on the
//! shared weights, a reference point for MTPF-TPL: each optimizer step takes one batch of each
//! family; when the two families' gradients on the shared backbone conflict (negative dot
//! product), each is projected onto the normal plane of the other (against the other's original
//! gradient, as the paper does for two tasks), and the projected gradients are summed. Weights
//! only one family touches (its LoRA group, the NER objective's scale) keep their gradient.
//!
//! The projection is over the shared parameters flattened into one vector, as in the paper (not
//! per layer).

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use crate::error::Result;

/// What the surgery did on one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Cosine between the two original shared gradients (0 when either is zero).
    pub cosine: f64,
    /// Whether they conflicted and were projected.
    pub projected: bool,
}

/// Dot product and squared norms of two vectors, accumulated in f64.
fn dot_norms(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    (dot, na, nb)
}

/// PCGrad on two flattened gradients of the same parameters: if `a · b < 0`,
/// `a <- a - (a·b / |b|²) b` and `b <- b - (a·b / |a|²) a`, both computed from the original
/// vectors; otherwise both stay unchanged.
///
/// # Panics
///
/// If the two slices differ in length ([`surgery`] always passes gradients of the same
/// parameters).
pub fn project_pair(a: &mut [f32], b: &mut [f32]) -> Projection {
    assert_eq!(a.len(), b.len(), "PCGrad: gradients of different sizes");
    let (dot, na, nb) = dot_norms(a, b);
    let cosine = if na > 0.0 && nb > 0.0 {
        dot / (na.sqrt() * nb.sqrt())
    } else {
        0.0
    };
    if !(dot < 0.0 && na > 0.0 && nb > 0.0) {
        return Projection {
            cosine,
            projected: false,
        };
    }
    let (ca, cb) = (dot / nb, dot / na);
    for (x, y) in a.iter_mut().zip(b.iter_mut()) {
        let (x0, y0) = (*x as f64, *y as f64);
        *x = (x0 - ca * y0) as f32;
        *y = (y0 - cb * x0) as f32;
    }
    Projection {
        cosine,
        projected: true,
    }
}

/// Applies [`project_pair`] to the gradients of the `shared` parameters (flattened together) in
/// two gradient stores, writing the projected gradients back in place. Parameters with a
/// gradient in only one store keep it unchanged; other entries of the stores are untouched.
pub fn surgery(shared: &[Tensor], a: &mut GradStore, b: &mut GradStore) -> Result<Projection> {
    let both: Vec<&Tensor> = shared
        .iter()
        .filter(|t| a.get(t).is_some() && b.get(t).is_some())
        .collect();
    let flat = |g: &GradStore| -> Result<Vec<f32>> {
        let mut v = Vec::new();
        for t in &both {
            v.extend(
                g.get(t)
                    .expect("filtered")
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(v)
    };
    let (mut va, mut vb) = (flat(a)?, flat(b)?);
    let p = project_pair(&mut va, &mut vb);
    if p.projected {
        let mut at = 0;
        for t in both {
            let n = t.elem_count();
            let shape = t.shape().clone();
            let dev = t.device();
            a.insert(t, Tensor::from_slice(&va[at..at + n], shape.clone(), dev)?);
            b.insert(t, Tensor::from_slice(&vb[at..at + n], shape, dev)?);
            at += n;
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::Rng;

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        dot_norms(a, b).0
    }

    #[test]
    fn conflicting_gradients_are_projected_onto_the_normal_plane() {
        let (a0, b0) = (vec![1.0f32, 0.0], vec![-1.0f32, 1.0]);
        let (mut a, mut b) = (a0.clone(), b0.clone());
        let p = project_pair(&mut a, &mut b);
        assert!(p.projected);
        assert!((p.cosine + 1.0 / 2f64.sqrt()).abs() < 1e-12);
        // a - (a·b/|b|²) b = (1,0) + 0.5 (-1,1) = (0.5, 0.5); b - (a·b/|a|²) a = (0, 1).
        assert_eq!(a, vec![0.5, 0.5]);
        assert_eq!(b, vec![0.0, 1.0]);
        // Each projected gradient is orthogonal to the other's original.
        assert!(dot(&a, &b0).abs() < 1e-7);
        assert!(dot(&b, &a0).abs() < 1e-7);
    }

    #[test]
    fn non_conflicting_gradients_are_unchanged() {
        for (a0, b0) in [
            (vec![1.0f32, 2.0, 0.0], vec![0.5f32, -0.1, 3.0]), // positive dot
            (vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]),        // orthogonal
            (vec![0.0, 0.0, 0.0], vec![-1.0, 1.0, 0.0]),       // a zero gradient
        ] {
            let (mut a, mut b) = (a0.clone(), b0.clone());
            assert!(!project_pair(&mut a, &mut b).projected);
            assert_eq!((a, b), (a0, b0));
        }
    }

    #[test]
    fn random_conflicts_end_orthogonal() {
        let mut rng = prefine_model::seed_rng(7);
        let mut projected = 0;
        for _ in 0..50 {
            let a0: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b0: Vec<f32> = (0..64).map(|_| rng.random_range(-1.0..1.0)).collect();
            let (mut a, mut b) = (a0.clone(), b0.clone());
            let p = project_pair(&mut a, &mut b);
            let (d, na, nb) = dot_norms(&a0, &b0);
            assert!((p.cosine - d / (na * nb).sqrt()).abs() < 1e-12);
            if d < 0.0 {
                projected += 1;
                assert!(p.projected);
                assert!(dot(&a, &b0).abs() < 1e-4 * na.sqrt() * nb.sqrt());
                assert!(dot(&b, &a0).abs() < 1e-4 * na.sqrt() * nb.sqrt());
            } else {
                assert_eq!((a, b), (a0, b0));
            }
        }
        assert!(projected > 5 && projected < 45, "{projected}");
    }

    #[test]
    fn surgery_projects_the_shared_parameters_together_and_leaves_the_rest() {
        let dev = Device::Cpu;
        let w1 = Var::new(&[0f32, 0.0], &dev).unwrap();
        let w2 = Var::new(&[0f32], &dev).unwrap();
        let own = Var::new(&[0f32], &dev).unwrap();
        // Loss A = x·w1 + y·w2 + own, loss B likewise with conflicting coefficients.
        let grads = |c: [f32; 3], with_own: bool| {
            let mut l = (w1.as_tensor() * Tensor::new(&[c[0], c[1]], &dev).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            // A tensor product (not a scalar one) so that a zero coefficient still gives w2 a
            // (zero) gradient: both stores then hold both shared parameters.
            let w2_term = (w2.as_tensor() * Tensor::new(&[c[2]], &dev).unwrap()).unwrap();
            l = (l + w2_term.sum_all().unwrap()).unwrap();
            if with_own {
                l = (l + own.as_tensor().sum_all().unwrap()).unwrap();
            }
            l.backward().unwrap()
        };
        let mut a = grads([1.0, 0.0, 0.0], true);
        let mut b = grads([-1.0, 0.0, 1.0], false);
        let shared = [w1.as_tensor().clone(), w2.as_tensor().clone()];
        let v = |g: &GradStore, t: &Var| g.get(t.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let p = surgery(&shared, &mut a, &mut b).unwrap();
        assert!(p.projected);
        // The flattened shared gradients are (1,0,0) and (-1,0,1): as in the 2-d case above.
        assert_eq!(v(&a, &w1), vec![0.5, 0.0]);
        assert_eq!(v(&a, &w2), vec![0.5]);
        assert_eq!(v(&b, &w1), vec![0.0, 0.0]);
        assert_eq!(v(&b, &w2), vec![1.0]);
        // A parameter only one family touches keeps its gradient.
        assert_eq!(v(&a, &own), vec![1.0]);
        assert!(b.get(own.as_tensor()).is_none());
    }
}
