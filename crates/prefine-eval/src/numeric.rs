//! Floating-point helpers that reproduce NumPy's summation order, so averages match
//! `numpy.mean` / `numpy.average` bit for bit (as used by seqeval and scikit-learn).

/// `numpy.add.reduce` over a contiguous float64 array: pairwise summation with an 8-way unrolled
/// base case of up to 128 elements, started from the identity 0.0.
pub(crate) fn np_sum(a: &[f64]) -> f64 {
    0.0 + pairwise_sum(a)
}

/// NumPy's `pairwise_sum_DOUBLE`.
fn pairwise_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for (j, rj) in r.iter_mut().enumerate() {
                *rj += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `numpy.mean` of a float64 array; 0.0 for an empty one (NumPy would give NaN).
pub(crate) fn np_mean(a: &[f64]) -> f64 {
    if a.is_empty() {
        0.0
    } else {
        np_sum(a) / a.len() as f64
    }
}

/// `numpy.average(a, weights=w)` with integer weights; 0.0 when the weights sum to 0 (the value
/// seqeval and scikit-learn return there with `zero_division=0`).
pub(crate) fn np_weighted_mean(a: &[f64], w: &[usize]) -> f64 {
    let total: usize = w.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let products: Vec<f64> = a.iter().zip(w).map(|(x, &w)| x * w as f64).collect();
    np_sum(&products) / total as f64
}

/// `numerator / denominator`, or 0.0 when the denominator is 0 (`zero_division=0`).
pub(crate) fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_sums_are_sequential() {
        let a = [0.1, 0.2, 0.3];
        assert_eq!(np_sum(&a).to_bits(), ((0.1f64 + 0.2) + 0.3).to_bits());
    }

    #[test]
    fn unrolled_sums_follow_numpy_order() {
        let a: Vec<f64> = (1..=19).map(|i| 1.0 / i as f64).collect();
        let r: Vec<f64> = (0..8).map(|j| a[j] + a[j + 8]).collect();
        let tree = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        let want = ((tree + a[16]) + a[17]) + a[18];
        assert_eq!(np_sum(&a).to_bits(), want.to_bits());
        let big: Vec<f64> = (0..1000).map(|i| (i as f64).sqrt()).collect();
        let seq: f64 = big.iter().sum();
        assert!((np_sum(&big) - seq).abs() < 1e-9);
    }

    #[test]
    fn means_and_zero_division() {
        assert_eq!(np_mean(&[]), 0.0);
        assert_eq!(np_mean(&[1.0, 0.0]), 0.5);
        assert_eq!(np_weighted_mean(&[1.0, 0.0], &[3, 1]), 0.75);
        assert_eq!(np_weighted_mean(&[1.0], &[0]), 0.0);
        assert_eq!(ratio(1, 0), 0.0);
        assert_eq!(ratio(1, 4), 0.25);
    }
}
