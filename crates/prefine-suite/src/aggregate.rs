//! Aggregation of the results: per-task and per-family statistics over seeds, in the order of
//! `OUT/suite.json`. Read by the markdown/CSV report and the charts alike.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::results::{fraction_label, CellResult};

/// `OUT/suite.json`: the order of variants, tasks and fractions, and the baseline (written by
/// the runner; without it the report uses the order of `results.jsonl`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SuiteLayout {
    /// Variant names in column order.
    pub variants: Vec<String>,
    /// The baseline variant.
    pub baseline: Option<String>,
    /// Tasks in row order (`ner/...` first).
    pub tasks: Vec<String>,
    /// Fractions, largest first.
    pub fractions: Vec<f64>,
}

/// Mean, standard deviation and count of some scores (percent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (0 for one value).
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

impl Stat {
    /// Statistics of `v` (None when empty).
    pub fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Stat { mean, std, n })
    }

    /// The table cell text: `mean ± std`, or the mean alone for one value.
    pub(crate) fn cell(&self) -> String {
        if self.n > 1 {
            format!("{:.1} ± {:.1}", self.mean, self.std)
        } else {
            format!("{:.1}", self.mean)
        }
    }
}

/// Aggregated results: per (fraction, task, variant) and per (fraction, family, variant).
#[derive(Debug, Clone, Default)]
pub struct Aggregate {
    /// Column order.
    pub variants: Vec<String>,
    /// Baseline variant.
    pub baseline: Option<String>,
    /// Row order.
    pub tasks: Vec<String>,
    /// Fraction labels, largest first.
    pub fractions: Vec<String>,
    /// Task scores.
    pub task: BTreeMap<(String, String, String), Stat>,
    /// Family averages (over the tasks every variant has), with the task count.
    pub family: BTreeMap<(String, String, String), (Stat, usize)>,
    /// Failed cells: (variant, task, fraction, seed, error).
    pub failures: Vec<(String, String, String, u64, String)>,
    /// Cells with a result.
    pub finished: usize,
}

/// `ner` / `tc` of a task string.
pub(crate) fn family_of(task: &str) -> &str {
    task.split('/').next().unwrap_or("")
}

/// Aggregates the results (latest line per cell; `layout` fixes the order where given).
pub fn aggregate(
    results: &BTreeMap<crate::results::CellKey, CellResult>,
    layout: &SuiteLayout,
) -> Aggregate {
    let mut a = Aggregate {
        variants: layout.variants.clone(),
        baseline: layout.baseline.clone(),
        tasks: layout.tasks.clone(),
        fractions: layout
            .fractions
            .iter()
            .map(|&f| fraction_label(f))
            .collect(),
        ..Default::default()
    };
    let mut fr: Vec<f64> = layout.fractions.clone();
    for r in results.values() {
        if !a.variants.contains(&r.variant) {
            a.variants.push(r.variant.clone());
        }
        if !a.tasks.contains(&r.task) {
            a.tasks.push(r.task.clone());
        }
        if !fr.contains(&r.fraction) {
            fr.push(r.fraction);
        }
    }
    fr.sort_by(|x, y| y.total_cmp(x));
    a.fractions = fr.iter().map(|&f| fraction_label(f)).collect();
    // NER rows first, then TC, each in their given order.
    let mut tasks = a.tasks.clone();
    tasks.sort_by_key(|t| if family_of(t) == "ner" { 0 } else { 1 });
    a.tasks = tasks;
    if a.baseline.is_none() {
        a.baseline = a
            .variants
            .iter()
            .find(|v| v.as_str() == "base")
            .or(a.variants.first())
            .cloned();
    }
    // Scores per (fraction, task, variant) and per seed.
    let mut per: BTreeMap<(String, String, String), BTreeMap<u64, f64>> = BTreeMap::new();
    for r in results.values() {
        let f = fraction_label(r.fraction);
        if r.ok() {
            a.finished += 1;
            per.entry((f, r.task.clone(), r.variant.clone()))
                .or_default()
                .insert(r.seed, r.score.unwrap_or(0.0) * 100.0);
        } else {
            a.failures.push((
                r.variant.clone(),
                r.task.clone(),
                f,
                r.seed,
                r.error.clone().unwrap_or_else(|| r.status.clone()),
            ));
        }
    }
    for (k, seeds) in &per {
        let v: Vec<f64> = seeds.values().copied().collect();
        if let Some(s) = Stat::of(&v) {
            a.task.insert(k.clone(), s);
        }
    }
    for f in &a.fractions {
        for fam in ["ner", "tc"] {
            // Tasks every variant has at this fraction.
            let common: Vec<&String> = a
                .tasks
                .iter()
                .filter(|t| family_of(t) == fam)
                .filter(|t| {
                    a.variants
                        .iter()
                        .all(|v| per.contains_key(&(f.clone(), (*t).clone(), v.clone())))
                })
                .collect();
            if common.is_empty() {
                continue;
            }
            for v in &a.variants {
                // Per-seed average over the common tasks (seeds every task has).
                let maps: Vec<&BTreeMap<u64, f64>> = common
                    .iter()
                    .map(|t| &per[&(f.clone(), (*t).clone(), v.clone())])
                    .collect();
                let seeds: BTreeSet<u64> = maps[0]
                    .keys()
                    .copied()
                    .filter(|s| maps.iter().all(|m| m.contains_key(s)))
                    .collect();
                let avgs: Vec<f64> = if seeds.is_empty() {
                    // No seed common to all tasks: average the task means.
                    vec![
                        maps.iter()
                            .map(|m| m.values().sum::<f64>() / m.len() as f64)
                            .sum::<f64>()
                            / maps.len() as f64,
                    ]
                } else {
                    seeds
                        .iter()
                        .map(|s| maps.iter().map(|m| m[s]).sum::<f64>() / maps.len() as f64)
                        .collect()
                };
                if let Some(s) = Stat::of(&avgs) {
                    a.family
                        .insert((f.clone(), fam.to_string(), v.clone()), (s, common.len()));
                }
            }
        }
    }
    a
}
