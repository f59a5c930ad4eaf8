//! Deterministic seeded subsampling.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Picks a deterministic random subset of the indices `0..n` and returns it sorted.
///
/// The subset has `round(n * fraction)` indices (at least one when `n > 0`), capped at `max`
/// when given. Sampling is without replacement with a `ChaCha8Rng` seeded by `seed`, so the same
/// `(n, fraction, max, seed)` always gives the same result. `fraction = 1` with no `max` returns
/// every index. `fraction` must be in `(0, 1]` and `max`, if given, at least 1.
pub fn subsample(n: usize, fraction: f64, max: Option<usize>, seed: u64) -> Result<Vec<usize>> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "subsample fraction must be in (0, 1], got {fraction}"
        )));
    }
    if max == Some(0) {
        return Err(Error::InvalidArgument(
            "subsample max must be at least 1".into(),
        ));
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut k = ((n as f64) * fraction).round() as usize;
    k = k.clamp(1, n);
    if let Some(m) = max {
        k = k.min(m);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut picked = rand::seq::index::sample(&mut rng, n, k).into_vec();
    picked.sort_unstable();
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_result_sorted_and_unique() {
        let a = subsample(1000, 0.1, None, 7).unwrap();
        let b = subsample(1000, 0.1, None, 7).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(a.iter().all(|&i| i < 1000));
        let c = subsample(1000, 0.1, None, 8).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn sizes_fraction_one_and_max() {
        assert_eq!(subsample(5, 1.0, None, 0).unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(subsample(100, 0.07, None, 0).unwrap().len(), 7);
        assert_eq!(subsample(100, 0.5, Some(10), 0).unwrap().len(), 10);
        assert_eq!(subsample(100, 0.001, None, 0).unwrap().len(), 1);
        assert!(subsample(0, 0.5, None, 0).unwrap().is_empty());
    }

    #[test]
    fn bad_arguments_are_errors() {
        for f in [0.0, -0.5, 1.0001, f64::NAN, f64::INFINITY] {
            let err = subsample(10, f, None, 0).unwrap_err();
            assert!(err.to_string().contains("fraction"), "{err}");
        }
        assert!(subsample(10, 0.5, Some(0), 0).is_err());
    }
}
