//! Reproduces the Python reference outputs in `shared/reference/`:
//! every case of `seqeval_cases.json` (seqeval 1.2.2, both modes) and
//! `classification_metrics_case.json` (scikit-learn).
//!
//! The reference directory is `$PREFINE_REFERENCE` or `<workspace>/../shared/reference`; when it
//! is missing these tests fail (they never skip silently).
//!
//! The seqeval reference stores values rounded to 6 decimals, so each of our values is rounded
//! to 6 decimals (exact decimal rounding) and must then equal the reference within 1e-9.

use std::path::PathBuf;

use prefine_eval::{ner_metrics, tc_metrics, NerMetrics, NerMode};
use serde_json::Value;

fn reference_dir() -> PathBuf {
    let dir = match std::env::var_os("PREFINE_REFERENCE").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference"),
    };
    assert!(
        dir.join("seqeval_cases.json").is_file(),
        "reference files not found in {} (set PREFINE_REFERENCE to the directory holding seqeval_cases.json)",
        dir.display()
    );
    dir
}

fn load(name: &str) -> Value {
    let path = reference_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tags(v: &Value) -> Vec<Vec<String>> {
    serde_json::from_value(v.clone()).expect("list of tag lists")
}

fn round6(x: f64) -> f64 {
    format!("{x:.6}").parse().unwrap()
}

fn check(case: &str, what: &str, got: f64, want: &Value) {
    let want = want
        .as_f64()
        .unwrap_or_else(|| panic!("{case} {what}: not a number"));
    assert!(
        (round6(got) - want).abs() <= 1e-9,
        "{case} {what}: got {got} (rounded {}), want {want}",
        round6(got)
    );
}

fn check_mode(case: &str, m: &NerMetrics, want: &Value) {
    let micro = &want["micro"];
    check(case, "micro precision", m.precision, &micro["precision"]);
    check(case, "micro recall", m.recall, &micro["recall"]);
    check(case, "micro f1", m.f1, &micro["f1-score"]);
    assert_eq!(
        m.support as f64,
        micro["support"].as_f64().unwrap(),
        "{case} micro support"
    );
    let per_type = want["per_type"].as_object().expect("per_type object");
    let want_types: Vec<&String> = per_type.keys().collect();
    let got_types: Vec<&String> = m.per_type.keys().collect();
    assert_eq!(got_types, want_types, "{case}: entity types");
    for (ty, w) in per_type {
        let g = &m.per_type[ty];
        check(
            case,
            &format!("{ty} precision"),
            g.precision,
            &w["precision"],
        );
        check(case, &format!("{ty} recall"), g.recall, &w["recall"]);
        check(case, &format!("{ty} f1"), g.f1, &w["f1-score"]);
        assert_eq!(
            g.support as f64,
            w["support"].as_f64().unwrap(),
            "{case} {ty} support"
        );
    }
}

#[test]
fn every_seqeval_case_in_both_modes() {
    let data = load("seqeval_cases.json");
    let cases = data["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let gold = tags(&case["gold"]);
        let pred = tags(&case["pred"]);
        let strict = ner_metrics(&gold, &pred, NerMode::Strict).unwrap();
        check_mode(&format!("{name} [strict]"), &strict, &case["strict_iob2"]);
        let lenient = ner_metrics(&gold, &pred, NerMode::Lenient).unwrap();
        check_mode(
            &format!("{name} [lenient]"),
            &lenient,
            &case["default_conlleval"],
        );
    }
    eprintln!("checked {} seqeval cases in both modes", cases.len());
}

#[test]
fn sklearn_classification_case() {
    let data = load("classification_metrics_case.json");
    let gold: Vec<String> = serde_json::from_value(data["gold"].clone()).unwrap();
    let pred: Vec<String> = serde_json::from_value(data["pred"].clone()).unwrap();
    let m = tc_metrics(&gold, &pred).unwrap();
    // These values are stored at full precision: compare to 1e-12 (bit-exact in practice).
    let close = |got: f64, key: &str| {
        let want = data[key].as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-12,
            "{key}: got {got:?}, want {want:?}"
        );
    };
    close(m.accuracy, "accuracy");
    close(m.macro_f1, "macro_f1");
    close(m.micro_f1, "micro_f1");
    assert_eq!(
        m.macro_f1,
        data["macro_f1"].as_f64().unwrap(),
        "bit-exact macro F1"
    );
    assert_eq!(m.n, gold.len());
    let total: usize = m.confusion.counts.iter().flatten().sum();
    assert_eq!(total, gold.len());
    let diag: usize = (0..m.labels.len()).map(|i| m.confusion.counts[i][i]).sum();
    assert_eq!(diag as f64 / gold.len() as f64, m.accuracy);
}
