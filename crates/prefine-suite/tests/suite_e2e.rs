//! A tiny end-to-end suite: two tiny random BERTs (one laid out as a TPL pretrain output with a
//! NER adapter), two real tasks cut to a few sentences plus one broken task, one seed, two
//! fractions. Checks results.jsonl, failure recording, skip-on-rerun, change detection, and that
//! table.md / table.csv / the charts agree with results.jsonl.

mod common;

use std::path::Path;

use common::{cut_task, tiny_variant};
use prefine_suite::results::read_results;
use prefine_suite::{run_suite, write_report, SuiteConfig};

fn config(data: &Path, base: &Path, tpl: &Path, epochs: usize) -> SuiteConfig {
    let text = format!(
        r#"
data_root = "{}"
tasks = ["ner/conll2003", "tc/sst2", "tc/broken"]
fractions = [1.0, 0.5]
seeds = [7]
[[variants]]
name = "base"
path = "{}"
[[variants]]
name = "tpl"
path = "{}"
[protocol]
epochs = {epochs}
lr = 1e-2
batch_size = 4
max_length = 32
max_eval = 6
"#,
        data.display(),
        base.display(),
        tpl.display()
    );
    SuiteConfig::from_toml_str(&text, Path::new("suite.toml")).unwrap()
}

#[test]
fn tiny_suite_records_skips_detects_changes_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    cut_task("ner", "conll2003", 12, &data);
    cut_task("tc", "sst2", 16, &data);
    // A task whose training file has a malformed line: its cells fail, the suite goes on.
    let broken = data.join("tc").join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("train.jsonl"),
        "{\"text\": \"fine\", \"label\": \"a\"}\n{not json\n",
    )
    .unwrap();
    std::fs::copy(data.join("tc/sst2/dev.jsonl"), broken.join("dev.jsonl")).unwrap();
    std::fs::copy(data.join("tc/sst2/test.jsonl"), broken.join("test.jsonl")).unwrap();
    let base = tmp.path().join("base");
    let tpl = tmp.path().join("tpl");
    tiny_variant(&base, 1, false);
    tiny_variant(&tpl, 2, true);
    let out = tmp.path().join("out");

    let cfg = config(&data, &base, &tpl, 2);
    let s = run_suite(&cfg, &out).unwrap();
    assert_eq!(s.total, 2 * 3 * 2);
    assert_eq!((s.ran, s.skipped, s.failed), (12, 0, 4));
    let results = read_results(&out.join("results.jsonl")).unwrap();
    assert_eq!(results.len(), 12);
    for r in results.values() {
        if r.task == "tc/broken" {
            assert_eq!(r.status, "error");
            let e = r.error.as_deref().unwrap();
            assert!(e.contains("train.jsonl") && e.contains('2'), "{e}");
        } else {
            assert!(r.ok(), "{r:?}");
            let s = r.score.unwrap();
            assert!((0.0..=1.0).contains(&s));
        }
    }
    // Weights are pruned, metrics kept.
    let cell = out.join("cells/tpl/ner_conll2003/f1.0_s7");
    assert!(cell.join("metrics.json").exists());
    assert!(!cell.join("head.safetensors").exists());

    // table.md and table.csv agree with results.jsonl.
    let md = std::fs::read_to_string(out.join("table.md")).unwrap();
    let csv = std::fs::read_to_string(out.join("table.csv")).unwrap();
    for r in results.values().filter(|r| r.ok()) {
        let pct = r.score.unwrap() * 100.0;
        assert!(md.contains(&format!("{pct:.1}")), "{pct:.1} not in\n{md}");
        let row = format!(
            "{},{},{},{},1,{pct:.4},0.0000,",
            prefine_suite::results::fraction_label(r.fraction),
            r.family,
            r.task,
            r.variant
        );
        assert!(csv.contains(&row), "{row} not in\n{csv}");
    }
    assert!(md.contains("| TC | broken | error | error |"), "{md}");
    assert!(md.contains("## Failed cells"));
    assert!(md.contains("**NER average**") && md.contains("**TC average**"));
    let svg = std::fs::read_to_string(out.join("suite.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("tpl"));
    let png = std::fs::read(out.join("suite.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // Re-running skips every finished cell (failed ones are retried) and appends nothing new
    // for them.
    let lines_before = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .count();
    let s = run_suite(&cfg, &out).unwrap();
    assert_eq!((s.ran, s.skipped, s.failed), (4, 8, 4));
    let lines_after = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines_after, lines_before + 4);

    // `suite report` regenerates the same table from results.jsonl alone.
    let again = write_report(&out).unwrap();
    assert_eq!(again, md);

    // A changed protocol changes every cell's hash: nothing stale is reused.
    let cfg3 = config(&data, &base, &tpl, 3);
    let s = run_suite(&cfg3, &out).unwrap();
    assert_eq!((s.ran, s.skipped), (12, 0));
}
