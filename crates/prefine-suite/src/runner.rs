//! Running the suite: pre-finetuning (resumable), then every cell in variant → task → fraction →
//! seed order, so that `head`-mode cells of one variant and task share the frozen backbone's
//! states ([`HiddenCache`]).
//!
//! ```text
//! OUT/config.toml                       the suite config as run
//! OUT/suite.json                        variant/task/fraction order and baseline (for the report)
//! OUT/pretrain/<strategy>/              `prefine pretrain` output (+ checkpoint/, done.json)
//! OUT/cells/<variant>/<family>_<task>/f<fraction>_s<seed>/   metrics.json, log.jsonl, curves.svg
//! OUT/results.jsonl                     one line per finished cell
//! OUT/table.md, table.csv, suite.svg, suite.png
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use prefine_data::DataRoot;
use prefine_model::weights::write_atomic;
use prefine_train::finetune::hidden_cache::HiddenCache;
use prefine_train::finetune::{cache_owner, run_finetune_with, FinetuneConfig, RunHooks, TaskKind};
use prefine_train::pretrain::{run_pretrain, Start};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::{parse_task, strategy_name, SuiteConfig};
use crate::error::{Error, Result};
use crate::report::{write_report, SuiteLayout};
use crate::results::{append_result, fraction_label, read_results, CellResult};

/// A backbone variant ready to use.
#[derive(Debug, Clone)]
pub struct ResolvedVariant {
    /// Column label.
    pub name: String,
    /// HF model directory of the backbone.
    pub backbone: PathBuf,
    /// Family adapters (PEFT directories), e.g. from a TPL run.
    pub adapters: BTreeMap<&'static str, PathBuf>,
    /// Hash of the backbone and adapter weights.
    pub fingerprint: String,
}

/// What a finished suite run reports.
#[derive(Debug, Clone)]
pub struct SuiteSummary {
    /// Cells in the suite.
    pub total: usize,
    /// Cells run now.
    pub ran: usize,
    /// Cells skipped because an identical result exists.
    pub skipped: usize,
    /// Cells that failed now.
    pub failed: usize,
    /// The markdown table.
    pub table: String,
    /// Wall seconds.
    pub seconds: f64,
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds a file's bytes into a hasher.
fn hash_file(h: &mut Sha256, path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::file(path, e))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// Resolves an HF model directory or a `prefine pretrain` output directory.
pub fn resolve_variant(name: &str, path: &Path) -> Result<ResolvedVariant> {
    let (backbone, root) = if path.join("config.json").exists() {
        (path.to_path_buf(), None)
    } else if path.join("backbone").join("config.json").exists() {
        (path.join("backbone"), Some(path))
    } else {
        return Err(Error::Config {
            field: format!("variant {name}"),
            reason: format!(
                "{} is neither a model directory (config.json) nor a pretrain output (backbone/config.json)",
                path.display()
            ),
        });
    };
    let mut adapters = BTreeMap::new();
    if let Some(r) = root {
        for fam in ["ner", "tc"] {
            let d = r.join("adapters").join(fam);
            if d.join("adapter_config.json").exists() {
                adapters.insert(fam, d);
            }
        }
    }
    let mut h = Sha256::new();
    hash_file(&mut h, &backbone.join("model.safetensors"))?;
    for d in adapters.values() {
        hash_file(&mut h, &d.join("adapter_model.safetensors"))?;
        hash_file(&mut h, &d.join("adapter_config.json"))?;
    }
    Ok(ResolvedVariant {
        name: name.to_string(),
        backbone,
        adapters,
        fingerprint: hex(h.finalize()),
    })
}

/// Runs the `[pretrain]` section: each strategy into `OUT/pretrain/<strategy>`, skipped when a
/// finished run with the same config and start weights exists, resumed from its checkpoint when
/// an interrupted one does.
fn run_pretraining(cfg: &SuiteConfig, data: &DataRoot, out: &Path) -> Result<()> {
    let Some(p) = &cfg.pretrain else {
        return Ok(());
    };
    let base = resolve_variant("pretrain.model", &p.model)?;
    for &s in &p.strategies {
        let pcfg = p.config_for(s)?;
        let dir = out.join("pretrain").join(strategy_name(s));
        let mut h = Sha256::new();
        h.update(pcfg.to_toml().as_bytes());
        h.update(base.fingerprint.as_bytes());
        let hash = hex(h.finalize());
        let done_path = dir.join("done.json");
        if let Ok(b) = std::fs::read(&done_path) {
            let done: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
            if done["hash"] == json!(hash) {
                eprintln!("pretrain {}: already done, skipped", strategy_name(s));
                continue;
            }
            eprintln!(
                "pretrain {}: config or start weights changed, running again",
                strategy_name(s)
            );
            let _ = std::fs::remove_file(&done_path);
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
        let hash_path = dir.join("run.hash");
        let ckpt = dir.join("checkpoint");
        let same_run = std::fs::read_to_string(&hash_path).is_ok_and(|t| t.trim() == hash);
        let start = if same_run && ckpt.join("state.json").exists() {
            eprintln!("pretrain {}: resuming", strategy_name(s));
            Start::Resume
        } else {
            let _ = std::fs::remove_file(dir.join("metrics.jsonl"));
            write_atomic(&hash_path, hash.as_bytes())?;
            Start::Fresh
        };
        eprintln!("pretrain {}: {} steps", strategy_name(s), pcfg.max_steps);
        let report = run_pretrain(pcfg, &base.backbone, data.path(), &dir, start)?;
        let done = json!({"hash": hash, "steps": report.steps, "seconds": report.seconds,
                          "last_loss": report.last_loss, "mean_conflict": report.mean_conflict});
        write_atomic(
            &done_path,
            serde_json::to_string_pretty(&done)
                .expect("json")
                .as_bytes(),
        )?;
        let _ = std::fs::remove_dir_all(&ckpt);
        eprintln!(
            "pretrain {}: done in {:.0}s",
            strategy_name(s),
            report.seconds
        );
    }
    Ok(())
}

/// Every variant of the suite, resolved (pre-finetuned ones from `OUT/pretrain/`).
fn resolve_variants(cfg: &SuiteConfig, out: &Path) -> Result<Vec<ResolvedVariant>> {
    let mut v = Vec::new();
    for spec in &cfg.variants {
        v.push(resolve_variant(&spec.name, &spec.path)?);
    }
    if let Some(p) = &cfg.pretrain {
        for &s in &p.strategies {
            let name = strategy_name(s);
            v.push(resolve_variant(name, &out.join("pretrain").join(name))?);
        }
    }
    Ok(v)
}

/// The tasks of the suite (`ner/...` then `tc/...`), each checked to exist.
fn resolve_tasks(cfg: &SuiteConfig, data: &DataRoot) -> Result<Vec<(String, TaskKind, PathBuf)>> {
    let names: Vec<String> = if cfg.tasks.is_empty() {
        let mut all: Vec<String> = data
            .ner_tasks()?
            .into_iter()
            .map(|t| format!("ner/{t}"))
            .collect();
        all.extend(data.tc_tasks()?.into_iter().map(|t| format!("tc/{t}")));
        all
    } else {
        cfg.tasks.clone()
    };
    if names.is_empty() {
        return Err(Error::Config {
            field: "tasks".into(),
            reason: format!("no tasks under {}", data.path().display()),
        });
    }
    names
        .into_iter()
        .map(|t| {
            let (kind, name) = parse_task(&t)?;
            let fam = match kind {
                TaskKind::Ner => prefine_data::TaskFamily::Ner,
                TaskKind::Tc => prefine_data::TaskFamily::Tc,
            };
            let paths = data.task(fam, &name)?;
            Ok((t, kind, paths.dir))
        })
        .collect()
}

/// Hash of a task directory's files (names and bytes).
fn task_fingerprint(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        h.update(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        hash_file(&mut h, f)?;
    }
    Ok(hex(h.finalize()))
}

/// Hash of everything a cell's result depends on.
fn cell_hash(variant: &ResolvedVariant, task_fp: &str, cfg: &FinetuneConfig) -> String {
    let mut c = cfg.clone();
    let has_adapter = c.init_adapter.take().is_some();
    let mut h = Sha256::new();
    h.update(variant.fingerprint.as_bytes());
    h.update(task_fp.as_bytes());
    h.update(c.to_toml().as_bytes());
    h.update([has_adapter as u8]);
    hex(h.finalize())
}

/// Prints a line above the progress bars, or to stderr when they are hidden (not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Removes a cell's weights, keeping metrics, logs, curves and config.
fn prune_cell(dir: &Path) {
    for f in [
        "head.safetensors",
        "adapter_model.safetensors",
        "adapter_config.json",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let _ = std::fs::remove_dir_all(dir.join("model"));
    let _ = std::fs::remove_dir_all(dir.join("checkpoints"));
}

/// Runs the whole suite into `out` and writes the report.
pub fn run_suite(cfg: &SuiteConfig, out: &Path) -> Result<SuiteSummary> {
    let t0 = Instant::now();
    cfg.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    write_atomic(
        &out.join("config.toml"),
        toml::to_string_pretty(cfg)
            .map_err(|e| Error::file(&out.join("config.toml"), e))?
            .as_bytes(),
    )?;
    let data = DataRoot::resolve(cfg.data_root.as_deref())?;
    let tasks = resolve_tasks(cfg, &data)?;
    run_pretraining(cfg, &data, out)?;
    let variants = resolve_variants(cfg, out)?;
    let mut fractions = cfg.fractions.clone();
    fractions.sort_by(|a, b| b.total_cmp(a));
    let layout = SuiteLayout {
        variants: variants.iter().map(|v| v.name.clone()).collect(),
        baseline: cfg.baseline_name(),
        tasks: tasks.iter().map(|t| t.0.clone()).collect(),
        fractions: fractions.clone(),
    };
    write_atomic(
        &out.join("suite.json"),
        serde_json::to_string_pretty(&layout)
            .expect("json")
            .as_bytes(),
    )?;

    let results_path = out.join("results.jsonl");
    let existing = read_results(&results_path)?;
    let total = variants.len() * tasks.len() * fractions.len() * cfg.seeds.len();
    let mp = MultiProgress::new();
    let overall = mp.add(ProgressBar::new(total as u64));
    overall.set_style(
        ProgressStyle::with_template(
            "suite {bar:30} {pos}/{len} cells [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("template"),
    );
    let (mut ran, mut skipped, mut failed) = (0usize, 0usize, 0usize);
    let mut task_fps: BTreeMap<String, String> = BTreeMap::new();
    for v in &variants {
        for (task, kind, dir) in &tasks {
            let task_fp = match task_fps.get(task) {
                Some(f) => f.clone(),
                None => {
                    let f = task_fingerprint(dir)?;
                    task_fps.insert(task.clone(), f.clone());
                    f
                }
            };
            let family = match kind {
                TaskKind::Ner => "ner",
                TaskKind::Tc => "tc",
            };
            let adapter = v.adapters.get(family).cloned();
            let mut shared: Option<Arc<HiddenCache>> = None;
            for &fraction in &fractions {
                for &seed in &cfg.seeds {
                    let mut fcfg = cfg.protocol.finetune_config(*kind, fraction, seed);
                    fcfg.init_adapter = adapter.clone();
                    let hash = cell_hash(v, &task_fp, &fcfg);
                    let key = crate::results::CellKey {
                        variant: v.name.clone(),
                        task: task.clone(),
                        fraction: fraction_label(fraction),
                        seed,
                    };
                    if let Some(prev) = existing.get(&key) {
                        if prev.ok() && prev.hash == hash {
                            skipped += 1;
                            overall.inc(1);
                            continue;
                        }
                        if prev.ok() {
                            say(&overall, format!(
                                "{} {task} f={} s={seed}: config, weights or data changed since the recorded result; running again",
                                v.name, key.fraction
                            ));
                        }
                    }
                    overall.set_message(format!("{} {task} f={} s={seed}", v.name, key.fraction));
                    let cell_dir = out
                        .join("cells")
                        .join(&v.name)
                        .join(format!(
                            "{family}_{}",
                            task.split_once('/').map_or(task.as_str(), |x| x.1)
                        ))
                        .join(format!("f{}_s{seed}", key.fraction));
                    let cache = shared
                        .get_or_insert_with(|| {
                            Arc::new(HiddenCache::new(
                                cache_owner(&fcfg, &v.backbone),
                                fcfg.feature_cache_mb,
                            ))
                        })
                        .clone();
                    let hooks = RunHooks {
                        cache: Some(cache),
                        progress: Some(mp.clone()),
                        // Cells are short: an interrupted one starts again.
                        resume: false,
                    };
                    let t_cell = Instant::now();
                    let run = catch_unwind(AssertUnwindSafe(|| {
                        run_finetune_with(&fcfg, &v.backbone, dir, &cell_dir, hooks)
                    }));
                    let metric = if *kind == TaskKind::Ner {
                        "f1"
                    } else {
                        "accuracy"
                    };
                    let mut r = CellResult {
                        variant: v.name.clone(),
                        task: task.clone(),
                        family: family.into(),
                        fraction,
                        seed,
                        hash,
                        status: "ok".into(),
                        metric: metric.into(),
                        score: None,
                        dev_score: None,
                        mode: serde_json::to_value(fcfg.mode)
                            .ok()
                            .and_then(|m| m.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        seconds: 0.0,
                        error: None,
                        metrics: None,
                    };
                    if let Ok(Err(e @ prefine_train::Error::Interrupted { .. })) = run {
                        // Ctrl-C: stop the suite; finished cells are kept, this one reruns.
                        overall.abandon();
                        return Err(e.into());
                    }
                    match run {
                        Ok(Ok(rep)) => {
                            let m = &rep.metrics;
                            r.dev_score = m["dev"][metric].as_f64();
                            r.score = m["test"][metric].as_f64().or(r.dev_score);
                            r.metrics = Some(m.clone());
                            if r.score.is_none() {
                                r.status = "error".into();
                                r.error = Some(format!("no {metric} in metrics.json"));
                            }
                        }
                        Ok(Err(e)) => {
                            r.status = "error".into();
                            r.error = Some(prefine_runtime::report(&e));
                        }
                        Err(p) => {
                            r.status = "error".into();
                            r.error = Some(format!("panic: {}", panic_message(p)));
                        }
                    }
                    r.seconds = t_cell.elapsed().as_secs_f64();
                    append_result(&results_path, &r)?;
                    if !cfg.keep_artifacts {
                        prune_cell(&cell_dir);
                    }
                    ran += 1;
                    if r.ok() {
                        say(
                            &overall,
                            format!(
                                "[{}/{total}] {} {task} f={} s={seed}: {metric} {:.4} ({:.0}s)",
                                overall.position() + 1,
                                v.name,
                                key.fraction,
                                r.score.unwrap_or(0.0),
                                r.seconds
                            ),
                        );
                    } else {
                        failed += 1;
                        say(
                            &overall,
                            format!(
                                "[{}/{total}] {} {task} f={} s={seed}: FAILED: {}",
                                overall.position() + 1,
                                v.name,
                                key.fraction,
                                r.error.as_deref().unwrap_or("")
                            ),
                        );
                    }
                    overall.inc(1);
                }
            }
        }
    }
    overall.finish_and_clear();
    let table = write_report(out)?;
    Ok(SuiteSummary {
        total,
        ran,
        skipped,
        failed,
        table,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
