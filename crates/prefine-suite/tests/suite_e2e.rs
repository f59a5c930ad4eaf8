//! A tiny end-to-end suite: two tiny random BERTs (one laid out as a TPL pretrain output with a
//! NER adapter), two real tasks cut to a few sentences plus one broken task, one seed, two
//! fractions. Checks results.jsonl, failure recording, skip-on-rerun, change detection, and that
//! table.md / table.csv / the charts agree with results.jsonl.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prefine_model::peft::{save_adapter, PeftTaskType};
use prefine_model::{seed_rng, Encoder, EncoderConfig, LoraConfig};
use prefine_suite::results::read_results;
use prefine_suite::{run_suite, write_report, SuiteConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn real_model() -> PathBuf {
    let d = std::env::var_os("PREFINE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/all-MiniLM-L6-v2"));
    assert!(
        d.join("tokenizer.json").exists(),
        "run scripts/setup.sh first ({})",
        d.display()
    );
    d
}

fn shared_data() -> PathBuf {
    let d = std::env::var_os("PREFINE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    assert!(
        d.join("ner").is_dir(),
        "shared data missing at {}",
        d.display()
    );
    d
}

/// Copies the first `n` records of each split of a real task into `dst`.
fn cut_task(family: &str, task: &str, n: usize, dst: &Path) {
    let src = shared_data().join(family).join(task);
    let dir = dst.join(family).join(task);
    std::fs::create_dir_all(&dir).unwrap();
    for split in ["train", "dev", "test"] {
        let ext = if family == "ner" { "conll" } else { "jsonl" };
        let name = format!("{split}.{ext}");
        let text = std::fs::read_to_string(src.join(&name)).unwrap();
        let cut = if family == "ner" {
            let s: Vec<&str> = text
                .split("\n\n")
                .filter(|s| !s.trim().is_empty())
                .take(n)
                .collect();
            s.join("\n\n") + "\n"
        } else {
            let l: Vec<&str> = text.lines().take(n).collect();
            l.join("\n") + "\n"
        };
        std::fs::write(dir.join(name), cut).unwrap();
    }
}

/// A tiny random BERT with the real tokenizer; with `ner_adapter`, laid out as a TPL output.
fn tiny_variant(dir: &Path, seed: u64, ner_adapter: bool) {
    let mut rng = seed_rng(seed);
    let mut enc = Encoder::random(EncoderConfig::tiny_bert_with_vocab(30522), &mut rng).unwrap();
    if !ner_adapter {
        enc.save_pretrained(dir, Some(&real_model())).unwrap();
        return;
    }
    let backbone = dir.join("backbone");
    enc.save_pretrained(&backbone, Some(&real_model())).unwrap();
    let cfg = LoraConfig {
        rank: 2,
        ..Default::default()
    };
    enc.add_lora_group("ner", &cfg, &mut rng).unwrap();
    save_adapter(
        &enc,
        "ner",
        PeftTaskType::FeatureExtraction,
        &BTreeMap::new(),
        &backbone.display().to_string(),
        &dir.join("adapters").join("ner"),
    )
    .unwrap();
}

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
