//! The report, regenerated from `results.jsonl`: `table.md` (tasks grouped by family, one column
//! per variant, mean ± std over seeds, family averages with deltas vs the baseline, best per row
//! in bold), `table.csv` (the same numbers, long format) and the charts.
//!
//! Scores are percentages. A family average is taken over the tasks where every variant has a
//! result at that fraction (so columns are comparable); its ± is the standard deviation over seeds
//! of the per-seed average. Standard deviations are sample standard deviations (n - 1).

use std::path::Path;

use prefine_model::weights::write_atomic;

use crate::aggregate::family_of;
pub use crate::aggregate::{aggregate, Aggregate, Stat, SuiteLayout};
use crate::error::{Error, Result};
use crate::results::read_results;

fn bold_best(cells: &[Option<Stat>], text: Vec<String>) -> Vec<String> {
    let best = cells
        .iter()
        .flatten()
        .map(|s| s.mean)
        .fold(f64::NEG_INFINITY, f64::max);
    let several = cells.iter().flatten().count() > 1;
    cells
        .iter()
        .zip(text)
        .map(|(c, t)| match c {
            Some(s) if several && (s.mean - best).abs() < 1e-9 => format!("**{t}**"),
            _ => t,
        })
        .collect()
}

/// The markdown table.
pub fn markdown(a: &Aggregate) -> String {
    let mut md = String::new();
    md.push_str("# Evaluation suite\n\n");
    md.push_str(
        "Test scores in percent (NER: strict seqeval F1; TC: accuracy), mean ± std over seeds. \
         Best per row in bold. Family averages cover the tasks every variant finished; \
         deltas are against the baseline",
    );
    if let Some(b) = &a.baseline {
        md.push_str(&format!(" (`{b}`)"));
    }
    md.push_str(".\n");
    for f in &a.fractions {
        md.push_str(&format!("\n## Training fraction {f}\n\n| family | task |"));
        for v in &a.variants {
            md.push_str(&format!(" {v} |"));
        }
        md.push_str("\n|---|---|");
        md.push_str(&"---|".repeat(a.variants.len()));
        md.push('\n');
        for fam in ["ner", "tc"] {
            let tasks: Vec<&String> = a.tasks.iter().filter(|t| family_of(t) == fam).collect();
            if tasks.is_empty() {
                continue;
            }
            for t in &tasks {
                let cells: Vec<Option<Stat>> = a
                    .variants
                    .iter()
                    .map(|v| a.task.get(&(f.clone(), (*t).clone(), v.clone())).copied())
                    .collect();
                let text: Vec<String> = cells
                    .iter()
                    .zip(&a.variants)
                    .map(|(c, v)| match c {
                        Some(s) => s.cell(),
                        None if a
                            .failures
                            .iter()
                            .any(|x| &x.0 == v && &x.1 == *t && &x.2 == f) =>
                        {
                            "error".into()
                        }
                        None => "-".into(),
                    })
                    .collect();
                let name = t.split_once('/').map_or(t.as_str(), |x| x.1);
                md.push_str(&format!(
                    "| {} | {name} | {} |\n",
                    fam.to_uppercase(),
                    bold_best(&cells, text).join(" | ")
                ));
            }
            let cells: Vec<Option<(Stat, usize)>> = a
                .variants
                .iter()
                .map(|v| {
                    a.family
                        .get(&(f.clone(), fam.to_string(), v.clone()))
                        .copied()
                })
                .collect();
            if cells.iter().all(Option::is_none) {
                continue;
            }
            let base = a
                .baseline
                .as_ref()
                .and_then(|b| a.family.get(&(f.clone(), fam.to_string(), b.clone())))
                .map(|x| x.0.mean);
            let n = cells.iter().flatten().map(|x| x.1).next().unwrap_or(0);
            let text: Vec<String> = cells
                .iter()
                .zip(&a.variants)
                .map(|(c, v)| match (c, base) {
                    (Some((s, _)), Some(b)) if Some(v) != a.baseline.as_ref() => {
                        format!("{} ({:+.1})", s.cell(), s.mean - b)
                    }
                    (Some((s, _)), _) => s.cell(),
                    (None, _) => "-".into(),
                })
                .collect();
            let stats: Vec<Option<Stat>> = cells.iter().map(|c| c.map(|x| x.0)).collect();
            md.push_str(&format!(
                "| **{} average** | {n} task{} | {} |\n",
                fam.to_uppercase(),
                if n == 1 { "" } else { "s" },
                bold_best(&stats, text).join(" | ")
            ));
        }
    }
    if !a.failures.is_empty() {
        md.push_str("\n## Failed cells\n\n| variant | task | fraction | seed | error |\n|---|---|---|---|---|\n");
        for (v, t, f, s, e) in &a.failures {
            let e = e.replace('|', "\\|").replace('\n', " ");
            md.push_str(&format!("| {v} | {t} | {f} | {s} | {e} |\n"));
        }
    }
    md
}

/// The CSV table (long format; `task` = `AVERAGE` for family averages).
pub fn csv(a: &Aggregate) -> String {
    let mut out = String::from("fraction,family,task,variant,n,mean,std,delta_vs_baseline\n");
    for f in &a.fractions {
        for t in &a.tasks {
            let fam = family_of(t);
            let get = |v: &str| a.task.get(&(f.clone(), t.clone(), v.to_string())).copied();
            let base = a.baseline.as_deref().and_then(get).map(|s| s.mean);
            for v in &a.variants {
                if let Some(s) = get(v) {
                    let d = base.map_or(String::new(), |b| format!("{:.4}", s.mean - b));
                    out.push_str(&format!(
                        "{f},{fam},{t},{v},{},{:.4},{:.4},{d}\n",
                        s.n, s.mean, s.std
                    ));
                }
            }
        }
        for fam in ["ner", "tc"] {
            let get = |v: &str| {
                a.family
                    .get(&(f.clone(), fam.to_string(), v.to_string()))
                    .map(|x| x.0)
            };
            let base = a.baseline.as_deref().and_then(get).map(|s| s.mean);
            for v in &a.variants {
                if let Some(s) = get(v) {
                    let d = base.map_or(String::new(), |b| format!("{:.4}", s.mean - b));
                    out.push_str(&format!(
                        "{f},{fam},AVERAGE,{v},{},{:.4},{:.4},{d}\n",
                        s.n, s.mean, s.std
                    ));
                }
            }
        }
    }
    out
}

/// Reads `OUT/results.jsonl` (and `OUT/suite.json` if present) and writes `table.md`,
/// `table.csv`, `suite.svg` and `suite.png`; returns the markdown.
pub fn write_report(out: &Path) -> Result<String> {
    let results_path = out.join("results.jsonl");
    if !results_path.exists() {
        return Err(Error::File {
            path: results_path,
            reason: "no results yet (run `prefine suite --config ...` first)".into(),
        });
    }
    let results = read_results(&results_path)?;
    let layout_path = out.join("suite.json");
    let layout: SuiteLayout = match std::fs::read(&layout_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::file(&layout_path, e))?,
        Err(_) => SuiteLayout::default(),
    };
    let a = aggregate(&results, &layout);
    let md = markdown(&a);
    write_atomic(&out.join("table.md"), md.as_bytes())?;
    write_atomic(&out.join("table.csv"), csv(&a).as_bytes())?;
    crate::chart::write_charts(out, &a)?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::CellResult;
    use std::collections::BTreeMap;

    fn r(variant: &str, task: &str, fraction: f64, seed: u64, score: f64) -> CellResult {
        CellResult {
            variant: variant.into(),
            task: task.into(),
            family: family_of(task).into(),
            fraction,
            seed,
            hash: "h".into(),
            status: "ok".into(),
            metric: "f1".into(),
            score: Some(score),
            dev_score: None,
            mode: "head".into(),
            seconds: 0.0,
            error: None,
            metrics: None,
        }
    }

    #[test]
    fn means_stds_averages_and_deltas() {
        let mut m = BTreeMap::new();
        for x in [
            r("base", "ner/a", 1.0, 1, 0.50),
            r("base", "ner/a", 1.0, 2, 0.60),
            r("tpl", "ner/a", 1.0, 1, 0.70),
            r("tpl", "ner/a", 1.0, 2, 0.80),
            r("base", "ner/b", 1.0, 1, 0.30),
            r("base", "ner/b", 1.0, 2, 0.30),
            r("tpl", "ner/b", 1.0, 1, 0.40),
            r("tpl", "ner/b", 1.0, 2, 0.20),
            r("base", "tc/c", 1.0, 1, 0.90),
        ] {
            m.insert(x.key(), x);
        }
        let a = aggregate(&m, &SuiteLayout::default());
        let s = a.task[&("1.0".into(), "ner/a".into(), "tpl".into())];
        assert!((s.mean - 75.0).abs() < 1e-9 && (s.std - 7.0710678).abs() < 1e-6);
        // Per-seed averages of tpl: (70+40)/2 = 55, (80+20)/2 = 50.
        let (f, n) = a.family[&("1.0".into(), "ner".into(), "tpl".into())];
        assert_eq!(n, 2);
        assert!((f.mean - 52.5).abs() < 1e-9);
        // tc/c misses tpl: no TC average.
        assert!(!a
            .family
            .contains_key(&("1.0".into(), "tc".into(), "base".into())));
        let md = markdown(&a);
        assert!(
            md.contains("| NER | a | 55.0 ± 7.1 | **75.0 ± 7.1** |"),
            "{md}"
        );
        assert!(md.contains("52.5 ± 3.5 (+10.0)"), "{md}");
        assert!(md.contains("| TC | c | 90.0 | - |"), "{md}");
        let c = csv(&a);
        assert!(
            c.contains("1.0,ner,AVERAGE,tpl,2,52.5000,3.5355,10.0000"),
            "{c}"
        );
    }
}
