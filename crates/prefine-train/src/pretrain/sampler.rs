//! [`FamilySampler`]: which task family the next batch comes from.

use prefine_model::SeedRng;
use rand::Rng;

use super::config::Sampling;

/// A task family of pre-finetuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// Token-level NER objective.
    Ner,
    /// Sentence-level TC objective.
    Tc,
}

impl Family {
    /// `ner` / `tc`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ner => "ner",
            Family::Tc => "tc",
        }
    }
}

/// Draws families: proportional to pool sizes, with a temperature, or round-robin.
#[derive(Debug, Clone)]
pub struct FamilySampler {
    families: Vec<(Family, f64)>,
    kind: Sampling,
    next_rr: usize,
}

impl FamilySampler {
    /// `pools` are `(family, pool size)`; `temperature` is T of `p ∝ n^(1/T)`.
    pub fn new(pools: &[(Family, usize)], kind: Sampling, temperature: f64) -> Self {
        let exp = match kind {
            Sampling::Proportional => 1.0,
            _ => 1.0 / temperature,
        };
        let raw: Vec<f64> = pools.iter().map(|&(_, n)| (n as f64).powf(exp)).collect();
        let total: f64 = raw.iter().sum();
        Self {
            families: pools
                .iter()
                .zip(raw)
                .map(|(&(f, _), w)| (f, w / total))
                .collect(),
            kind,
            next_rr: 0,
        }
    }

    /// The probability of each family.
    pub fn probabilities(&self) -> &[(Family, f64)] {
        &self.families
    }

    /// The family of the next batch (deterministic given the RNG).
    pub fn next(&mut self, rng: &mut SeedRng) -> Family {
        if self.families.len() == 1 {
            return self.families[0].0;
        }
        if self.kind == Sampling::RoundRobin {
            let f = self.families[self.next_rr % self.families.len()].0;
            self.next_rr += 1;
            return f;
        }
        let mut u: f64 = rng.random();
        for &(f, p) in &self.families {
            if u < p {
                return f;
            }
            u -= p;
        }
        self.families.last().expect("non-empty").0
    }

    /// Round-robin position (for checkpoints).
    pub fn position(&self) -> usize {
        self.next_rr
    }

    /// Restores the round-robin position.
    pub fn set_position(&mut self, p: usize) {
        self.next_rr = p;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prefine_model::seed_rng;

    #[test]
    fn temperature_flattens_and_round_robin_alternates() {
        let pools = [(Family::Ner, 900), (Family::Tc, 100)];
        let p = FamilySampler::new(&pools, Sampling::Proportional, 1.0);
        assert!((p.probabilities()[0].1 - 0.9).abs() < 1e-12);
        let t = FamilySampler::new(&pools, Sampling::Temperature, 2.0);
        assert!((t.probabilities()[0].1 - 30.0 / 40.0).abs() < 1e-12);
        let mut rr = FamilySampler::new(&pools, Sampling::RoundRobin, 1.0);
        let mut rng = seed_rng(0);
        let seq: Vec<Family> = (0..4).map(|_| rr.next(&mut rng)).collect();
        assert_eq!(seq, vec![Family::Ner, Family::Tc, Family::Ner, Family::Tc]);
        let mut s = FamilySampler::new(&pools, Sampling::Proportional, 1.0);
        let ner = (0..10_000)
            .filter(|_| s.next(&mut rng) == Family::Ner)
            .count();
        assert!((8_800..9_200).contains(&ner), "{ner}");
    }
}
