//! `prefine evaluate`: a fine-tuned adapter on a data file, or zero-shot (`--zero-shot`) from
//! a pre-finetuned backbone on a task's split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use prefine_data::{NerSentence, TcExample};
use prefine_runtime::zero_shot::{names_for, parse_name_list, read_label_names};
use prefine_runtime::{ZeroShot, ZeroShotConfig};

/// Arguments of `prefine evaluate`.
#[derive(Args)]
pub struct EvaluateArgs {
    /// Backbone directory (default: the one recorded in the adapter's adapter.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output directory of `prefine finetune`.
    #[arg(long, required_unless_present = "zero_shot")]
    adapter: Option<PathBuf>,
    /// Data file (.conll for NER; .jsonl/.csv/.tsv for TC); with `--zero-shot` also a task
    /// directory (its `--split` is evaluated, its label set is that of all its files).
    #[arg(long)]
    data: PathBuf,
    /// NER: report seqeval's lenient (conlleval) mode as the headline instead of strict IOB2.
    #[arg(long, conflicts_with = "zero_shot")]
    conlleval: bool,
    /// Precision of the backbone's linear weights: f32 | bf16 | int8 (quantised after loading).
    #[arg(long, default_value = "f32")]
    precision: prefine_model::Precision,
    /// Zero-shot: no fine-tuned head; entity types / labels are the task's, given by name.
    #[arg(long, requires = "backbone", conflicts_with = "adapter")]
    zero_shot: bool,
    /// Zero-shot: a `prefine pretrain` output, or a plain model directory (base baseline).
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// Zero-shot: split of a task directory.
    #[arg(long, default_value = "test")]
    split: String,
    /// Zero-shot: JSON object mapping tags/labels to names (`{"musicalartist": "musical
    /// artist"}`); others are derived (`Restaurant_Name` → "restaurant name").
    #[arg(long)]
    label_names: Option<PathBuf>,
    /// Zero-shot NER: comma-separated thresholds, all reported under "sweep" (the first is the
    /// headline); default: the built-in default threshold.
    #[arg(long)]
    thresholds: Option<String>,
    /// Zero-shot TC: template for the label names ("This text is about {}.").
    #[arg(long)]
    template: Option<String>,
    /// Zero-shot: evaluate the first N examples only.
    #[arg(long)]
    max_eval: Option<usize>,
}

/// Runs `prefine evaluate`.
pub fn run(a: EvaluateArgs) -> Result<()> {
    if a.zero_shot {
        return zero_shot(&a);
    }
    let adapter = a
        .adapter
        .as_deref()
        .expect("clap: --adapter or --zero-shot");
    let v = prefine_train::finetune::evaluate_file_at(
        adapter,
        a.model.as_deref(),
        &a.data,
        a.conlleval,
        a.precision,
    )?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn zero_shot(a: &EvaluateArgs) -> Result<()> {
    let dir = a
        .backbone
        .as_deref()
        .expect("clap: --zero-shot requires --backbone");
    let mut zs = ZeroShot::load(dir, ZeroShotConfig::default())?;
    zs.prepare_inference(a.precision)?;
    let names = match &a.label_names {
        Some(p) => read_label_names(p)?,
        None => BTreeMap::new(),
    };
    let mut thresholds = Vec::new();
    for t in a
        .thresholds
        .as_deref()
        .map(parse_name_list)
        .unwrap_or_default()
    {
        match t.parse::<f32>() {
            Ok(v) if v.is_finite() => thresholds.push(v),
            _ => bail!("--thresholds: {t:?} is not a number"),
        }
    }
    let v = evaluate_data(
        &zs,
        &ZeroShotEvalSpec {
            data: &a.data,
            split: &a.split,
            label_names: &names,
            thresholds: &thresholds,
            template: a.template.as_deref(),
            max_eval: a.max_eval,
        },
    )?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// What `prefine evaluate --zero-shot` evaluates: a task directory's split (or one file).
#[derive(Debug, Clone)]
struct ZeroShotEvalSpec<'a> {
    /// A task directory (`train`/`dev`/`test` files) or one data file.
    data: &'a Path,
    /// The split of a directory (`dev` or `test`).
    split: &'a str,
    /// Names of tags/labels that are not words (`musicalartist` → "musical artist").
    label_names: &'a BTreeMap<String, String>,
    /// NER thresholds to report (the first is the headline); empty: the default threshold.
    thresholds: &'a [f32],
    /// TC template.
    template: Option<&'a str>,
    /// Evaluate on the first N examples only.
    max_eval: Option<usize>,
}

const DATA_EXTENSIONS: [&str; 4] = ["conll", "jsonl", "csv", "tsv"];

fn split_file(dir: &Path, split: &str) -> Option<PathBuf> {
    DATA_EXTENSIONS
        .iter()
        .map(|e| dir.join(format!("{split}.{e}")))
        .find(|p| p.is_file())
}

fn read_tc_file(path: &Path) -> Result<Vec<TcExample>> {
    Ok(match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => prefine_data::read_delimited(path, b',', "text", "label")?,
        Some("tsv") => prefine_data::read_delimited(path, b'\t', "text", "label")?,
        _ => prefine_data::read_jsonl(path)?,
    })
}

fn read_ner_file(path: &Path) -> Result<Vec<NerSentence>> {
    Ok(prefine_data::read_conll(path, &prefine_data::ConllOptions::default())?.sentences)
}

/// Zero-shot evaluation of a labelled split; the label set is that of the task's files
/// (every split present), each named by `label_names` or [`readable_name`]. Returns the
/// metric JSON (NER: strict seqeval IOB2, with one entry per threshold under `"sweep"`).
fn evaluate_data(zs: &ZeroShot, spec: &ZeroShotEvalSpec<'_>) -> Result<serde_json::Value> {
    let (file, siblings) = if spec.data.is_dir() {
        let f = split_file(spec.data, spec.split).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no {1}.conll / {1}.jsonl / {1}.csv / {1}.tsv",
                spec.data.display(),
                spec.split
            )
        })?;
        let sib: Vec<PathBuf> = ["train", "dev", "test"]
            .iter()
            .filter_map(|s| split_file(spec.data, s))
            .collect();
        (f, sib)
    } else {
        (spec.data.to_path_buf(), vec![spec.data.to_path_buf()])
    };
    let ner = file.extension().and_then(|e| e.to_str()) == Some("conll");
    let cap = |n: usize| spec.max_eval.map_or(n, |m| m.min(n));
    if ner {
        let mut tags = std::collections::BTreeSet::new();
        for f in &siblings {
            for s in read_ner_file(f)? {
                tags.extend(s.tags.iter().filter_map(|t| t.get(2..)).map(str::to_string));
            }
        }
        let mut sentences = read_ner_file(&file)?;
        sentences.truncate(cap(sentences.len()));
        let tags: Vec<String> = tags.into_iter().collect();
        let names = names_for(&tags, spec.label_names);
        let default = [self_default(zs)?];
        let ths = if spec.thresholds.is_empty() {
            &default[..]
        } else {
            spec.thresholds
        };
        let res = zs.evaluate_ner(&sentences, &names, ths)?;
        let sweep: Vec<serde_json::Value> = res
            .iter()
            .map(|(t, m)| {
                serde_json::json!({"threshold": t, "f1": m.f1, "precision": m.precision, "recall": m.recall})
            })
            .collect();
        let (t, m) = &res[0];
        Ok(serde_json::json!({
            "task": "ner", "file": file, "zero_shot": true, "baseline": zs.is_baseline(),
            "threshold": t, "f1": m.f1, "precision": m.precision, "recall": m.recall,
            "names": names, "metrics": m, "sweep": sweep,
        }))
    } else {
        let mut labels = std::collections::BTreeSet::new();
        for f in &siblings {
            labels.extend(read_tc_file(f)?.into_iter().map(|e| e.label));
        }
        let mut ex = read_tc_file(&file)?;
        ex.truncate(cap(ex.len()));
        let labels: Vec<String> = labels.into_iter().collect();
        let names = names_for(&labels, spec.label_names);
        let m = zs.evaluate_tc(&ex, &names, spec.template)?;
        Ok(serde_json::json!({
            "task": "tc", "file": file, "zero_shot": true, "baseline": zs.is_baseline(),
            "accuracy": m.accuracy, "macro_f1": m.macro_f1, "template": spec.template,
            "names": names, "metrics": m,
        }))
    }
}

fn self_default(zs: &ZeroShot) -> Result<f32> {
    zs.ner_scoring()
        .map(|s| s.default_threshold())
        .ok_or_else(|| anyhow::anyhow!("the backbone was not pre-finetuned for NER"))
}
