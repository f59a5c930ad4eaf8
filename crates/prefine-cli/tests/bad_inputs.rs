//! The bad-input catalogue (issue 8): every malformed input under `tests/bad_inputs/` at the
//! repository root, plus model and adapter directories generated here into a temporary
//! directory, is fed to the real `prefine` binary. Each case must
//!
//! * exit with a non-zero status,
//! * print an error on stderr that names the file and the line (or the field / tensor),
//! * never panic (no `panicked`, no `RUST_BACKTRACE` hint), with a bounded message size,
//! * leave an output directory that already holds results (`metrics.json`, `config.toml`, a
//!   sentinel file) exactly as it was.
//!
//! Every case fails before any training starts; the whole file runs in seconds. The catalogue is
//! listed in `docs/RELIABILITY.md` ("Bad-input catalogue"). Run it with
//! `cargo test -p prefine-cli --test bad_inputs`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use prefine_model::peft::{save_adapter, PeftTaskType};
use prefine_model::weights::{load_safetensors, save_safetensors};
use prefine_model::{seed_rng, Encoder, EncoderConfig, LoraConfig, LoraTarget};

/// Largest stderr a failing case may print (a bad input must not be echoed back in full).
const MAX_STDERR: usize = 8 * 1024;

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// `tests/bad_inputs/` at the repository root.
fn catalogue() -> PathBuf {
    repo_root().join("tests/bad_inputs")
}

/// The installed default model (only its `tokenizer.json` is used).
fn real_model() -> PathBuf {
    repo_root().join("models/all-MiniLM-L6-v2")
}

/// What one run of the binary produced.
struct Outcome {
    code: Option<i32>,
    stderr: String,
}

/// Removes ANSI colour sequences (the log writer colours its output).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn prefine<I, S>(args: I) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_prefine"))
        .arg("--threads")
        .arg("1")
        .args(&args)
        .env("PREFINE_LOG", "warn")
        .env_remove("PREFINE_MODEL")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run prefine");
    Outcome {
        code: out.status.code(),
        stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// Checks a failed run; returns a description of what is wrong, if anything.
fn check_failure(case: &str, out: &Outcome, expect: &[&str]) -> Option<String> {
    if std::env::var_os("BAD_INPUTS_SHOW").is_some() {
        // `BAD_INPUTS_SHOW=1 cargo test ... -- --nocapture` prints every message.
        let shown: String = out.stderr.chars().take(400).collect();
        eprintln!("[{case}] exit {:?}: {}", out.code, shown.trim_end());
    }
    let mut problems = Vec::new();
    match out.code {
        Some(0) => problems.push("exit status 0".to_string()),
        None => problems.push("killed by a signal".to_string()),
        Some(101) => problems.push("exit status 101 (a panic)".to_string()),
        Some(_) => {}
    }
    for bad in ["panicked", "RUST_BACKTRACE"] {
        if out.stderr.contains(bad) {
            problems.push(format!("stderr contains {bad:?}"));
        }
    }
    if out.stderr.len() > MAX_STDERR {
        problems.push(format!("stderr is {} bytes long", out.stderr.len()));
    }
    if !out.stderr.contains("error: ") {
        problems.push("no `error: ` line".to_string());
    }
    for e in expect {
        if !out.stderr.contains(e) {
            problems.push(format!("stderr lacks {e:?}"));
        }
    }
    if problems.is_empty() {
        None
    } else {
        let shown: String = out.stderr.chars().take(1500).collect();
        Some(format!(
            "{case}: {}\n--- stderr ---\n{shown}\n",
            problems.join("; ")
        ))
    }
}

/// Panics with every collected problem.
fn report(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} case(s) failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// An output directory that already holds the results of an earlier run.
struct ExistingOutput {
    dir: PathBuf,
    files: BTreeMap<String, Vec<u8>>,
}

impl ExistingOutput {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let files: BTreeMap<String, Vec<u8>> = [
            (
                "metrics.json",
                &br#"{"dev": {"f1": 0.875}, "test": null}"#[..],
            ),
            ("config.toml", b"task = \"ner\"\nmode = \"head\"\n"),
            ("sentinel.txt", b"an earlier run wrote this\n"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
        for (k, v) in &files {
            std::fs::write(dir.join(k), v).unwrap();
        }
        Self { dir, files }
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Every earlier file is still there, byte for byte, and nothing was added.
    fn check(&self, case: &str) -> Option<String> {
        let mut now = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            now.insert(name, bytes);
        }
        (now != self.files).then(|| {
            format!(
                "{case}: the existing output directory changed: before {:?}, after {:?}",
                self.files.keys().collect::<Vec<_>>(),
                now.keys().collect::<Vec<_>>()
            )
        })
    }
}

/// A fresh scratch directory under the shared temporary root.
fn scratch(name: &str) -> PathBuf {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = ROOT.get_or_init(|| tempfile::tempdir().unwrap());
    let d = root.path().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A task directory whose `train.<ext>` is `bad` and whose dev split is valid.
fn task_dir(case: &str, bad: &Path, ext: &str, valid_dev: &str) -> PathBuf {
    let d = scratch(&format!("data-{case}"));
    std::fs::copy(bad, d.join(format!("train.{ext}"))).unwrap();
    std::fs::copy(catalogue().join("valid").join(valid_dev), d.join(valid_dev)).unwrap();
    d
}

/// `prefine finetune --mode head` with `model` on a valid task directory, into an existing
/// output directory; returns the problems found.
fn finetune_with_model(case: &str, data: &Path, model: &Path, expect: &[&str]) -> Vec<String> {
    let out = ExistingOutput::new(scratch(&format!("out-{case}")));
    let o = prefine([
        OsString::from("finetune"),
        "--task".into(),
        "ner".into(),
        "--mode".into(),
        "head".into(),
        "--model".into(),
        model.into(),
        "--data".into(),
        data.into(),
        "--out".into(),
        out.path().into(),
        "--epochs".into(),
        "1".into(),
        "--max-train".into(),
        "2".into(),
    ]);
    let mut problems: Vec<String> = check_failure(case, &o, expect).into_iter().collect();
    problems.extend(out.check(case));
    problems
}

/// A catalogue data case: the file, and what stderr must contain besides the file name.
struct DataCase {
    file: &'static str,
    /// 1-based line, or `None` for whole-file errors.
    line: Option<usize>,
    expect: &'static str,
}

const fn case(file: &'static str, line: Option<usize>, expect: &'static str) -> DataCase {
    DataCase { file, line, expect }
}

const CONLL_CASES: &[DataCase] = &[
    case("missing_tag_column.conll", Some(2), "has no tag"),
    case("bad_tag_prefix.conll", Some(3), "invalid tag 'X-PER'"),
    case("bad_tag_no_prefix.conll", Some(4), "invalid tag 'MISC'"),
    case("bioes_tag_in_iob2.conll", Some(5), "invalid tag 'E-LOC'"),
    case("empty_entity_type.conll", Some(3), "invalid tag 'B-'"),
    case("tab_space_mix.conll", Some(3), "invalid tag 'NNP B-MISC'"),
    case("non_utf8.conll", Some(2), "invalid UTF-8"),
    case("empty.conll", None, "empty file"),
    case("only_blank_lines.conll", None, "empty file"),
    case("only_docstart.conll", None, "no sentences"),
];

const JSONL_CASES: &[DataCase] = &[
    case("invalid_json_line3.jsonl", Some(3), "invalid JSON"),
    case("missing_text.jsonl", Some(2), "missing \"text\" field"),
    case("missing_label.jsonl", Some(2), "missing \"label\" field"),
    case("label_wrong_type.jsonl", Some(2), "\"label\" must be"),
    case(
        "text_wrong_type.jsonl",
        Some(2),
        "\"text\" must be a string",
    ),
    case("not_an_object.jsonl", Some(2), "expected a JSON object"),
    case("blank_text.jsonl", Some(2), "empty text"),
    case("empty_label.jsonl", Some(2), "empty label"),
    case("non_utf8.jsonl", Some(2), "invalid UTF-8"),
    case("empty.jsonl", None, "empty file"),
    case("bom_only.jsonl", None, "empty file"),
];

const DELIMITED_CASES: &[DataCase] = &[
    case("missing_text_column.csv", Some(1), "no column named 'text'"),
    case(
        "missing_label_column.tsv",
        Some(1),
        "no column named 'label'",
    ),
    case("ragged_row.csv", Some(3), "expected 2 fields"),
    case("ragged_row.tsv", Some(3), "expected 2 fields"),
    case("unclosed_quote.csv", Some(3), "unclosed quote"),
    case("empty_label.csv", Some(3), "empty label"),
    case("header_only.csv", None, "no examples"),
];

fn run_data_cases(dir: &str, task: &str, cases: &[DataCase], valid_dev: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for c in cases {
        let src = catalogue().join(dir).join(c.file);
        let ext = Path::new(c.file).extension().unwrap().to_str().unwrap();
        let name = format!("{dir}-{}", c.file);
        let data = task_dir(&name, &src, ext, valid_dev);
        let where_ = match c.line {
            Some(l) => format!("train.{ext}:{l}: "),
            None => format!("train.{ext}: "),
        };
        let out = ExistingOutput::new(scratch(&format!("out-{name}")));
        let o = prefine([
            OsString::from("finetune"),
            "--task".into(),
            task.into(),
            "--mode".into(),
            "head".into(),
            "--model".into(),
            "/nonexistent/model-not-needed".into(),
            "--data".into(),
            data.into_os_string(),
            "--out".into(),
            out.path().into(),
            "--max-train".into(),
            "2".into(),
        ]);
        problems.extend(check_failure(&name, &o, &[&where_, c.expect]));
        problems.extend(out.check(&name));
    }
    problems
}

#[test]
fn conll_files() {
    let mut problems = run_data_cases("conll", "ner", CONLL_CASES, "dev.conll");
    // `prefine score` reads the catalogue file itself: the message names it.
    for c in CONLL_CASES {
        let path = catalogue().join("conll").join(c.file);
        let o = prefine([
            OsString::from("score"),
            "--gold".into(),
            path.clone().into(),
            "--pred".into(),
            path.into(),
        ]);
        let where_ = match c.line {
            Some(l) => format!("{}:{l}: ", c.file),
            None => format!("{}: ", c.file),
        };
        problems.extend(check_failure(
            &format!("score {}", c.file),
            &o,
            &[&where_, c.expect],
        ));
    }
    report(problems);
}

#[test]
fn conll_bad_dev_split() {
    // The same reader guards dev: a bad dev file is reported with its own name.
    let d = scratch("data-bad-dev");
    std::fs::copy(catalogue().join("valid/train.conll"), d.join("train.conll")).unwrap();
    std::fs::copy(
        catalogue().join("conll/bad_tag_prefix.conll"),
        d.join("dev.conll"),
    )
    .unwrap();
    let out = ExistingOutput::new(scratch("out-bad-dev"));
    let o = prefine([
        OsString::from("finetune"),
        "--task".into(),
        "ner".into(),
        "--mode".into(),
        "head".into(),
        "--model".into(),
        "/nonexistent/model-not-needed".into(),
        "--data".into(),
        d.into_os_string(),
        "--out".into(),
        out.path().into(),
    ]);
    let mut problems: Vec<String> = check_failure("bad dev", &o, &["dev.conll:3: ", "X-PER"])
        .into_iter()
        .collect();
    problems.extend(out.check("bad dev"));
    report(problems);
}

#[test]
fn conll_i_after_o_is_a_warning_with_locations() {
    // Not an error: seqeval keeps such tags, so the reader keeps them and warns with file:line
    // (or converts them with --repair-iob). `score` shows the warning without training.
    let path = catalogue().join("conll/i_after_o.conll");
    let o = prefine([
        OsString::from("score"),
        "--gold".into(),
        path.clone().into(),
        "--pred".into(),
        path.into(),
    ]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stderr.contains("i_after_o.conll:5") && o.stderr.contains("I- tag(s) follow O"),
        "{}",
        o.stderr
    );
}

#[test]
fn conll_extremely_long_lines() {
    let d = scratch("long-lines");
    let huge = "x".repeat(300_000);
    // A token without a tag: the message must not echo 300 kB back.
    let untagged = d.join("untagged.conll");
    std::fs::write(&untagged, format!("EU\tB-ORG\n{huge}\n")).unwrap();
    // An invalid tag that is 300 kB long.
    let long_tag = d.join("long_tag.conll");
    std::fs::write(&long_tag, format!("EU\tB-ORG\nword\tQ{huge}\n")).unwrap();
    let long_json = d.join("long.jsonl");
    std::fs::write(
        &long_json,
        format!("{{\"text\": \"ok\", \"label\": \"a\"}}\n{{\"text\": \"{huge}\", \"label\": }}\n"),
    )
    .unwrap();
    let mut problems = Vec::new();
    for (case, file, ext, dev, expect) in [
        (
            "untagged",
            &untagged,
            "conll",
            "dev.conll",
            "train.conll:2: ",
        ),
        (
            "long tag",
            &long_tag,
            "conll",
            "dev.conll",
            "train.conll:2: ",
        ),
        (
            "long json",
            &long_json,
            "jsonl",
            "dev.jsonl",
            "train.jsonl:2: ",
        ),
    ] {
        let data = task_dir(&format!("long-{ext}-{}", case.len()), file, ext, dev);
        let task = if ext == "conll" { "ner" } else { "tc" };
        let out = ExistingOutput::new(scratch(&format!("out-long-{}", case.len())));
        let o = prefine([
            OsString::from("finetune"),
            "--task".into(),
            task.into(),
            "--mode".into(),
            "head".into(),
            "--model".into(),
            "/nonexistent/model-not-needed".into(),
            "--data".into(),
            data.into_os_string(),
            "--out".into(),
            out.path().into(),
        ]);
        problems.extend(check_failure(case, &o, &[expect]));
        problems.extend(out.check(case));
    }
    report(problems);
}

#[test]
fn jsonl_files() {
    report(run_data_cases("jsonl", "tc", JSONL_CASES, "dev.jsonl"));
}

#[test]
fn csv_and_tsv_files() {
    report(run_data_cases("csv", "tc", DELIMITED_CASES, "dev.jsonl"));
}

/// A catalogue TOML case: the file, and what stderr must contain.
struct ConfigCase {
    file: &'static str,
    expect: &'static [&'static str],
}

const FINETUNE_CONFIGS: &[ConfigCase] = &[
    ConfigCase {
        file: "finetune_unknown_key.toml",
        expect: &[
            "finetune_unknown_key.toml line 5",
            "unknown field `learnig_rate`",
        ],
    },
    ConfigCase {
        file: "finetune_wrong_type.toml",
        expect: &["finetune_wrong_type.toml line 3", "invalid type"],
    },
    ConfigCase {
        file: "finetune_bad_mode.toml",
        expect: &["finetune_bad_mode.toml line 2", "unknown variant `partial`"],
    },
    ConfigCase {
        file: "finetune_syntax_error.toml",
        expect: &["finetune_syntax_error.toml line 4"],
    },
    ConfigCase {
        file: "finetune_lora_bad_target.toml",
        expect: &["finetune_lora_bad_target.toml line 5", "`qkv_proj`"],
    },
    ConfigCase {
        file: "finetune_negative_lr.toml",
        expect: &[
            "finetune_negative_lr.toml",
            "lr: -0.001 is not a positive number",
        ],
    },
    ConfigCase {
        file: "finetune_fraction_too_big.toml",
        expect: &["finetune_fraction_too_big.toml", "fraction: 1.5"],
    },
    ConfigCase {
        file: "finetune_stride_too_big.toml",
        expect: &["finetune_stride_too_big.toml", "stride"],
    },
    ConfigCase {
        file: "finetune_lora_rank_zero.toml",
        expect: &["finetune_lora_rank_zero.toml", "lora.rank"],
    },
    ConfigCase {
        file: "finetune_nan_lr.toml",
        expect: &["finetune_nan_lr.toml", "lr: NaN is not a positive number"],
    },
];

const PRETRAIN_CONFIGS: &[ConfigCase] = &[
    ConfigCase {
        file: "pretrain_unknown_key.toml",
        expect: &[
            "pretrain_unknown_key.toml line 4",
            "unknown field `tpl_last_kk`",
        ],
    },
    ConfigCase {
        file: "pretrain_wrong_type.toml",
        expect: &["pretrain_wrong_type.toml line 2", "invalid type"],
    },
    ConfigCase {
        file: "pretrain_bad_strategy.toml",
        expect: &[
            "pretrain_bad_strategy.toml line 1",
            "unknown variant `multi`",
        ],
    },
    ConfigCase {
        file: "pretrain_pairs_fraction.toml",
        expect: &["pretrain_pairs_fraction.toml", "tc_pairs_fraction"],
    },
    ConfigCase {
        file: "pretrain_last_k_zero.toml",
        expect: &["pretrain_last_k_zero.toml", "tpl_last_k"],
    },
    ConfigCase {
        file: "pretrain_lora_rank_zero.toml",
        expect: &["pretrain_lora_rank_zero.toml", "rank"],
    },
];

#[test]
fn finetune_configs() {
    let data = scratch("data-valid-ner");
    for f in ["train.conll", "dev.conll"] {
        std::fs::copy(catalogue().join("valid").join(f), data.join(f)).unwrap();
    }
    let model = tiny_model();
    let mut problems = Vec::new();
    for c in FINETUNE_CONFIGS {
        let out = ExistingOutput::new(scratch(&format!("out-{}", c.file)));
        let mut args: Vec<OsString> = vec![
            "finetune".into(),
            "--config".into(),
            catalogue().join("toml").join(c.file).into(),
            "--data".into(),
            data.clone().into(),
            "--out".into(),
            out.path().into(),
            "--max-train".into(),
            "2".into(),
        ];
        if let Some(m) = &model {
            args.extend(["--model".into(), m.clone().into()]);
        }
        let o = prefine(args);
        problems.extend(check_failure(c.file, &o, c.expect));
        problems.extend(out.check(c.file));
    }
    report(problems);
}

#[test]
fn pretrain_configs() {
    let mut problems = Vec::new();
    for c in PRETRAIN_CONFIGS {
        let out = ExistingOutput::new(scratch(&format!("out-{}", c.file)));
        // --max-steps must not hide a bad value in the file.
        let o = prefine([
            OsString::from("pretrain"),
            "--config".into(),
            catalogue().join("toml").join(c.file).into(),
            "--model".into(),
            "/nonexistent/model-not-needed".into(),
            "--data".into(),
            "/nonexistent/data-not-needed".into(),
            "--out".into(),
            out.path().into(),
            "--max-steps".into(),
            "1".into(),
        ]);
        problems.extend(check_failure(c.file, &o, c.expect));
        problems.extend(out.check(c.file));
    }
    report(problems);
}

// ---------------------------------------------------------------------------------------------
// Model and adapter directories, generated at test time from a tiny random BERT that shares the
// real model's tokenizer (vocabulary 30522, hidden 16, 2 layers: about 2 MB).

/// The tiny model directory. The default model must be installed (`scripts/setup.sh`, which the
/// test command runs): a missing resource fails the test instead of skipping cases. (The
/// `Option` is always `Some`; it keeps the callers' early returns simple.)
fn tiny_model() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            real_model().join("tokenizer.json").exists(),
            "{} is not installed: run scripts/setup.sh",
            real_model().display()
        );
        let dir = scratch("tiny-model");
        let mut rng = seed_rng(7);
        let enc = Encoder::random(EncoderConfig::tiny_bert_with_vocab(30522), &mut rng).unwrap();
        enc.save_pretrained(&dir, Some(&real_model())).unwrap();
        assert!(dir.join("tokenizer.json").exists());
        Some(dir)
    })
    .clone()
}

/// A copy of the tiny model directory.
fn model_copy(name: &str) -> Option<PathBuf> {
    let src = tiny_model()?;
    let dst = scratch(&format!("model-{name}"));
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    Some(dst)
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn edit_tensors(file: &Path, f: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
    let mut t: BTreeMap<String, Tensor> = load_safetensors(file).unwrap().into_iter().collect();
    f(&mut t);
    save_safetensors(file, &t).unwrap();
}

fn truncate(file: &Path, keep: f64) {
    let b = std::fs::read(file).unwrap();
    std::fs::write(file, &b[..(b.len() as f64 * keep) as usize]).unwrap();
}

/// A valid NER task directory.
fn valid_ner_data() -> PathBuf {
    let d = scratch("data-valid-ner-model");
    for f in ["train.conll", "dev.conll"] {
        std::fs::copy(catalogue().join("valid").join(f), d.join(f)).unwrap();
    }
    d
}

#[test]
fn model_directories() {
    let Some(_) = tiny_model() else { return };
    type Edit = fn(&Path);
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "missing_config",
            |d| std::fs::remove_file(d.join("config.json")).unwrap(),
            &["config.json", "No such file"],
        ),
        (
            "config_not_json",
            |d| truncate(&d.join("config.json"), 0.5),
            &["config.json"],
        ),
        (
            "unsupported_model_type",
            |d| edit_config(d, |v| v["model_type"] = "gpt2".into()),
            &["config.json", "unsupported model_type \"gpt2\""],
        ),
        (
            "config_heads_do_not_divide_hidden",
            |d| edit_config(d, |v| v["num_attention_heads"] = 5.into()),
            &["config.json", "num_attention_heads"],
        ),
        (
            "config_hidden_size_string",
            |d| edit_config(d, |v| v["hidden_size"] = "sixteen".into()),
            &["config.json: field hidden_size: invalid type"],
        ),
        (
            "missing_weights_file",
            |d| std::fs::remove_file(d.join("model.safetensors")).unwrap(),
            &["model.safetensors"],
        ),
        (
            "missing_tensor",
            |d| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    t.remove("encoder.layer.1.attention.self.query.weight");
                })
            },
            &[
                "model.safetensors",
                "encoder.layer.1.attention.self.query.weight",
            ],
        ),
        (
            "wrong_tensor_shape",
            |d| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    t.insert(
                        "encoder.layer.0.intermediate.dense.weight".into(),
                        Tensor::zeros((31, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
                    );
                })
            },
            &[
                "model.safetensors",
                "encoder.layer.0.intermediate.dense.weight",
                "[31, 16]",
            ],
        ),
        (
            "nan_in_weights",
            |d| {
                edit_tensors(&d.join("model.safetensors"), |t| {
                    let n = "encoder.layer.0.output.dense.bias";
                    let v = t[n].to_vec1::<f32>().unwrap();
                    let mut v = v.clone();
                    v[3] = f32::NAN;
                    t.insert(n.into(), Tensor::new(v, &Device::Cpu).unwrap());
                })
            },
            &[
                "model.safetensors",
                "encoder.layer.0.output.dense.bias",
                "NaN",
            ],
        ),
        (
            "truncated_safetensors",
            |d| truncate(&d.join("model.safetensors"), 0.6),
            &["model.safetensors", "not a readable safetensors file"],
        ),
        (
            "safetensors_header_garbage",
            |d| {
                let p = d.join("model.safetensors");
                let mut b = std::fs::read(&p).unwrap();
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                std::fs::write(p, b).unwrap();
            },
            &["model.safetensors", "not a readable safetensors file"],
        ),
        (
            "corrupted_tokenizer",
            |d| truncate(&d.join("tokenizer.json"), 0.3),
            &["tokenizer.json"],
        ),
        (
            "missing_tokenizer",
            |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(),
            &["tokenizer.json"],
        ),
        (
            "vocab_smaller_than_tokenizer",
            |d| {
                edit_config(d, |v| v["vocab_size"] = 1000.into());
                edit_tensors(&d.join("model.safetensors"), |t| {
                    let n = "embeddings.word_embeddings.weight";
                    let w = t[n].narrow(0, 0, 1000).unwrap();
                    t.insert(n.into(), w);
                })
            },
            &["tokenizer.json", "vocab_size"],
        ),
    ];
    let data = valid_ner_data();
    let mut problems = Vec::new();
    for (name, edit, expect) in cases {
        let dir = model_copy(name).unwrap();
        edit(&dir);
        problems.extend(finetune_with_model(name, &data, &dir, expect));
    }
    report(problems);
}

/// A valid PEFT adapter for the tiny model: rank 4 on query and value of both layers.
fn tiny_adapter(name: &str) -> Option<PathBuf> {
    let model = tiny_model()?;
    let (mut enc, _) = Encoder::from_model_dir(&model).unwrap();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec![LoraTarget::Query, LoraTarget::Value],
        layers: None,
        use_rslora: false,
    };
    let mut rng = seed_rng(3);
    enc.add_lora_group("g", &cfg, &mut rng).unwrap();
    let dir = scratch(&format!("adapter-{name}"));
    save_adapter(
        &enc,
        "g",
        PeftTaskType::FeatureExtraction,
        &BTreeMap::new(),
        "tiny",
        &dir,
    )
    .unwrap();
    Some(dir)
}

#[test]
fn adapter_directories() {
    let Some(model) = tiny_model() else { return };
    type Edit = fn(&Path);
    let use_committed = |case: &'static str| -> Box<dyn Fn(&Path)> {
        Box::new(move |d: &Path| {
            std::fs::copy(
                catalogue()
                    .join("adapter")
                    .join(case)
                    .join("adapter_config.json"),
                d.join("adapter_config.json"),
            )
            .unwrap();
        })
    };
    let weights = |f: Edit| -> Box<dyn Fn(&Path)> { Box::new(move |d: &Path| f(d)) };
    type AdapterEdit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, AdapterEdit, &[&str])> = vec![
        (
            "config_malformed",
            use_committed("config_malformed"),
            &["adapter_config.json", "line 4"],
        ),
        (
            "rank_mismatch",
            use_committed("rank_mismatch"),
            &["adapter_model.safetensors", "r=8", "lora_A [4, 16]"],
        ),
        (
            "unknown_target_modules",
            use_committed("unknown_target_modules"),
            &["adapter_config.json", "target_modules", "qkv_proj"],
        ),
        (
            "not_lora",
            use_committed("not_lora"),
            &["adapter_config.json", "peft_type"],
        ),
        (
            "rank_zero",
            use_committed("rank_zero"),
            &["adapter_config.json", "field r"],
        ),
        (
            "dropout_out_of_range",
            use_committed("dropout_out_of_range"),
            &["adapter_config.json", "lora_dropout"],
        ),
        (
            "bias_trained",
            use_committed("bias_trained"),
            &["adapter_config.json", "bias"],
        ),
        (
            "unknown_module_tensor",
            weights(|d| {
                edit_tensors(&d.join("adapter_model.safetensors"), |t| {
                    let k = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight";
                    let v = t.remove(k).unwrap();
                    t.insert(
                        "base_model.model.encoder.layer.0.attention.self.qkv.lora_A.weight".into(),
                        v,
                    );
                })
            }),
            &[
                "adapter_model.safetensors",
                "attention.self.qkv",
                "not a linear layer",
            ],
        ),
        (
            "layer_out_of_range",
            weights(|d| {
                edit_tensors(&d.join("adapter_model.safetensors"), |t| {
                    for ab in ["A", "B"] {
                        let k = format!(
                            "base_model.model.encoder.layer.1.attention.self.value.lora_{ab}.weight"
                        );
                        let v = t.remove(&k).unwrap();
                        t.insert(k.replace("layer.1.", "layer.7."), v);
                    }
                })
            }),
            &["adapter_model.safetensors", "layer 7 does not exist"],
        ),
        (
            "lora_b_missing",
            weights(|d| {
                edit_tensors(&d.join("adapter_model.safetensors"), |t| {
                    t.remove("base_model.model.encoder.layer.1.attention.self.value.lora_B.weight");
                })
            }),
            &[
                "adapter_model.safetensors",
                "encoder.layer.1.attention.self.value",
                "lora_B",
            ],
        ),
        (
            "truncated_weights",
            weights(|d| truncate(&d.join("adapter_model.safetensors"), 0.5)),
            &[
                "adapter_model.safetensors",
                "not a readable safetensors file",
            ],
        ),
        (
            "missing_weights",
            weights(|d| std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap()),
            &["adapter_model.safetensors"],
        ),
        (
            "missing_config",
            weights(|d| std::fs::remove_file(d.join("adapter_config.json")).unwrap()),
            &["adapter_config.json"],
        ),
    ];
    let data = valid_ner_data();
    let mut problems = Vec::new();
    for (name, edit, expect) in cases {
        let dir = tiny_adapter(name).unwrap();
        edit(&dir);
        let out = ExistingOutput::new(scratch(&format!("out-adapter-{name}")));
        let o = prefine([
            OsString::from("finetune"),
            "--task".into(),
            "ner".into(),
            "--mode".into(),
            "head".into(),
            "--model".into(),
            model.clone().into(),
            "--init-adapter".into(),
            dir.into_os_string(),
            "--data".into(),
            data.clone().into(),
            "--out".into(),
            out.path().into(),
            "--max-train".into(),
            "2".into(),
        ]);
        problems.extend(check_failure(name, &o, expect));
        problems.extend(out.check(name));
    }
    report(problems);
}

#[test]
fn unusable_output_directories() {
    // `--out` below a regular file: reported before any data or model is read.
    let d = scratch("unwritable");
    let file = d.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let data = valid_ner_data();
    let mut problems = Vec::new();
    let o = prefine([
        OsString::from("finetune"),
        "--task".into(),
        "ner".into(),
        "--mode".into(),
        "head".into(),
        "--model".into(),
        "/nonexistent/model-not-needed".into(),
        "--data".into(),
        data.into_os_string(),
        "--out".into(),
        file.join("out").into(),
    ]);
    problems.extend(check_failure(
        "finetune out under a file",
        &o,
        &["a-file/out"],
    ));
    let o = prefine([
        OsString::from("pretrain"),
        "--strategy".into(),
        "tpl".into(),
        "--model".into(),
        "/nonexistent/model-not-needed".into(),
        "--data".into(),
        "/nonexistent/data-not-needed".into(),
        "--out".into(),
        file.join("out").into(),
    ]);
    problems.extend(check_failure(
        "pretrain out under a file",
        &o,
        &["a-file/out"],
    ));
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    report(problems);
}

#[test]
fn text_inputs_of_embed_and_predict() {
    let d = scratch("texts");
    let bad = d.join("texts.txt");
    std::fs::write(&bad, b"hello\nworld\ncaf\xe9\n").unwrap();
    let empty = d.join("empty.txt");
    std::fs::write(&empty, b"\n \n").unwrap();
    let mut problems = Vec::new();
    for (cmd, flag) in [("embed", "--model"), ("predict", "--adapter")] {
        let o = prefine([
            OsString::from(cmd),
            flag.into(),
            "/nonexistent/not-needed".into(),
            "--input".into(),
            bad.clone().into(),
        ]);
        problems.extend(check_failure(cmd, &o, &["texts.txt:3"]));
        let o = prefine([
            OsString::from(cmd),
            flag.into(),
            "/nonexistent/not-needed".into(),
            "--input".into(),
            empty.clone().into(),
        ]);
        problems.extend(check_failure(cmd, &o, &["empty.txt", "no texts"]));
    }
    report(problems);
}

// ---------------------------------------------------------------------------------------------
// Known defects in code owned elsewhere (crates/prefine-train/src/{finetune,pretrain}); listed in
// docs/RELIABILITY.md. Run with `cargo test -p prefine-cli --test bad_inputs -- --ignored`.

#[test]
fn known_defect_finetune_keeps_an_earlier_log_on_bad_data() {
    let data = task_dir(
        "log-kept",
        &catalogue().join("conll/bad_tag_prefix.conll"),
        "conll",
        "dev.conll",
    );
    let out = scratch("out-log-kept");
    std::fs::write(out.join("log.jsonl"), b"{\"epoch\": 1}\n").unwrap();
    let o = prefine([
        OsString::from("finetune"),
        "--task".into(),
        "ner".into(),
        "--mode".into(),
        "head".into(),
        "--model".into(),
        "/nonexistent/model-not-needed".into(),
        "--data".into(),
        data.into_os_string(),
        "--out".into(),
        out.clone().into(),
    ]);
    report(
        check_failure("log kept", &o, &["train.conll:3: "])
            .into_iter()
            .collect(),
    );
    assert_eq!(
        std::fs::read(out.join("log.jsonl")).ok().as_deref(),
        Some(&b"{\"epoch\": 1}\n"[..]),
        "an earlier log.jsonl was deleted by a run that failed on its input"
    );
}

#[test]
fn known_defect_pretrain_rejects_nan_loss_weights() {
    let out = ExistingOutput::new(scratch("out-pretrain-nan"));
    let o = prefine([
        OsString::from("pretrain"),
        "--config".into(),
        catalogue().join("toml/pretrain_nan_weight.toml").into(),
        "--model".into(),
        "/nonexistent/model-not-needed".into(),
        "--data".into(),
        "/nonexistent/data-not-needed".into(),
        "--out".into(),
        out.path().into(),
    ]);
    let mut problems: Vec<String> = check_failure(
        "pretrain nan weight",
        &o,
        &["pretrain_nan_weight.toml", "ner_weight"],
    )
    .into_iter()
    .collect();
    problems.extend(out.check("pretrain nan weight"));
    report(problems);
}
