//! Reads the real shared datasets and checks them against `manifest.json`.
//!
//! The data root is `$PREFINE_DATA` or `<workspace>/../shared/data`; when it is missing these
//! tests fail (they never skip silently).

use std::collections::BTreeSet;
use std::path::PathBuf;

use prefine_data::{
    read_conll, read_jsonl, read_manifest, ConllOptions, DataRoot, LabelSet, ManifestEntry, Split,
    TagScheme, DATA_ENV,
};

fn data_root() -> DataRoot {
    let path = match std::env::var_os(DATA_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    assert!(
        path.join("manifest.json").is_file(),
        "shared data not found at {} (set {DATA_ENV} to the directory holding manifest.json, ner/ and tc/)",
        path.display()
    );
    DataRoot::new(path).expect("data root")
}

fn manifest_entry(root: &DataRoot, name: &str) -> ManifestEntry {
    read_manifest(root.manifest_path())
        .expect("manifest.json")
        .into_iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} missing from manifest.json"))
}

#[test]
fn conll2003_dev_matches_manifest() {
    let root = data_root();
    let entry = manifest_entry(&root, "conll2003");
    let task = root.ner_task("conll2003").unwrap();
    let ds = read_conll(&task.dev, &ConllOptions::default()).unwrap();
    assert_eq!(ds.len(), entry.splits["dev"]);
    assert_eq!(ds.stats.sentences, 3250);
    assert_eq!(ds.stats.invalid_transitions, 0, "converted to BIO upstream");
    assert_eq!(ds.stats.scheme, TagScheme::Iob2);
    let types: Vec<String> = ds.stats.entity_types.iter().cloned().collect();
    assert_eq!(types, entry.labels);
    assert!(ds.sentences.iter().all(|s| s.tokens.len() == s.tags.len()));
    assert_eq!(
        ds.stats.tokens,
        ds.sentences.iter().map(|s| s.tokens.len()).sum::<usize>()
    );
    // The first sentence of eng.testa.
    assert_eq!(ds.sentences[0].tokens[0], "CRICKET");
    assert_eq!(ds.sentences[0].tags[2], "B-ORG");
    // Auto-detection agrees that the file is IOB2.
    let auto = read_conll(
        &task.dev,
        &ConllOptions {
            scheme: TagScheme::Auto,
            repair: false,
        },
    )
    .unwrap();
    assert_eq!(auto.stats.scheme, TagScheme::Iob2);
    let tags = LabelSet::from_ner(&ds.sentences);
    assert_eq!(tags.len(), 1 + 2 * entry.labels.len());
    assert_eq!(tags.label(0), Some("O"));
}

#[test]
fn sst2_dev_matches_manifest() {
    let root = data_root();
    let entry = manifest_entry(&root, "sst2");
    let task = root.tc_task("sst2").unwrap();
    let dev = read_jsonl(&task.dev).unwrap();
    assert_eq!(dev.len(), entry.splits["dev"]);
    assert_eq!(dev.len(), 872);
    let labels = LabelSet::from_examples(&dev);
    assert_eq!(labels.labels(), entry.labels.as_slice());
    assert_eq!(dev[0].text, "one long string of cliches .");
    assert_eq!(dev[0].label, "negative");
}

/// Every NER and TC split listed in the manifest reads cleanly with the expected counts and
/// labels (dev/test labels may be missing from train: reported, not fatal).
#[test]
fn every_task_split_matches_manifest() {
    let root = data_root();
    let manifest = root.manifest().unwrap();
    let ner_tasks = root.ner_tasks().unwrap();
    let tc_tasks = root.tc_tasks().unwrap();
    let mut checked = 0;
    for entry in &manifest {
        match entry.family.as_str() {
            "ner" => {
                assert!(
                    ner_tasks.contains(&entry.name),
                    "{} not under ner/",
                    entry.name
                );
                let task = root.ner_task(&entry.name).unwrap();
                let mut types = BTreeSet::new();
                for split in Split::ALL {
                    let ds = read_conll(task.split(split), &ConllOptions::default())
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(
                        ds.len(),
                        entry.splits[split.name()],
                        "{} {split}",
                        entry.name
                    );
                    types.extend(ds.stats.entity_types.iter().cloned());
                    checked += 1;
                }
                let want: BTreeSet<String> = entry.labels.iter().cloned().collect();
                assert_eq!(types, want, "{} entity types", entry.name);
            }
            "tc" => {
                assert!(
                    tc_tasks.contains(&entry.name),
                    "{} not under tc/",
                    entry.name
                );
                let task = root.tc_task(&entry.name).unwrap();
                let mut labels = BTreeSet::new();
                let train = LabelSet::from_examples(&read_jsonl(&task.train).unwrap());
                for split in Split::ALL {
                    let ex = read_jsonl(task.split(split)).unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(
                        ex.len(),
                        entry.splits[split.name()],
                        "{} {split}",
                        entry.name
                    );
                    let unseen = train.check_unseen_examples(&ex);
                    if !unseen.is_empty() {
                        eprintln!("{} {split}: labels not in train: {unseen:?}", entry.name);
                    }
                    labels.extend(ex.into_iter().map(|e| e.label));
                    checked += 1;
                }
                let want: BTreeSet<String> = entry.labels.iter().cloned().collect();
                assert_eq!(labels, want, "{} labels", entry.name);
            }
            _ => {}
        }
    }
    assert!(checked >= 2 * 3, "no tasks found in the manifest");
}
