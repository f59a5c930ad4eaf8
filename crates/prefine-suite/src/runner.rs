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
use crate::results::{append_result, fraction_label, read_results, CellKey, CellResult};
use prefine_train::toml_config::serde_name;

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

/// Writes `OUT/config.toml` (the suite config as run) and `OUT/suite.json` (the table's layout).
fn write_run_files(cfg: &SuiteConfig, out: &Path, layout: &SuiteLayout) -> Result<()> {
    let config_path = out.join("config.toml");
    let text = toml::to_string_pretty(cfg).map_err(|e| Error::file(&config_path, e))?;
    write_atomic(&config_path, text.as_bytes())?;
    let layout_path = out.join("suite.json");
    let text = serde_json::to_string_pretty(layout).map_err(|e| Error::file(&layout_path, e))?;
    write_atomic(&layout_path, text.as_bytes())?;
    Ok(())
}

/// `ner` or `tc`: the family's name in paths, results and adapter directories.
fn family_name(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Ner => "ner",
        TaskKind::Tc => "tc",
    }
}

/// One (variant, task, fraction, seed) cell, resolved.
struct Cell<'a> {
    variant: &'a ResolvedVariant,
    /// `ner/<name>` or `tc/<name>`.
    task: &'a str,
    kind: TaskKind,
    data_dir: &'a Path,
    fraction: f64,
    seed: u64,
    config: FinetuneConfig,
    hash: String,
}

impl Cell<'_> {
    fn family(&self) -> &'static str {
        family_name(self.kind)
    }

    fn metric(&self) -> &'static str {
        match self.kind {
            TaskKind::Ner => "f1",
            TaskKind::Tc => "accuracy",
        }
    }

    fn key(&self) -> CellKey {
        CellKey {
            variant: self.variant.name.clone(),
            task: self.task.to_string(),
            fraction: fraction_label(self.fraction),
            seed: self.seed,
        }
    }

    /// `<variant> <task> f=<fraction> s=<seed>`, for messages.
    fn label(&self) -> String {
        format!(
            "{} {} f={} s={}",
            self.variant.name,
            self.task,
            fraction_label(self.fraction),
            self.seed
        )
    }

    /// `OUT/cells/<variant>/<family>_<task>/f<fraction>_s<seed>`.
    fn dir(&self, out: &Path) -> PathBuf {
        let name = self.task.split_once('/').map_or(self.task, |x| x.1);
        out.join("cells")
            .join(&self.variant.name)
            .join(format!("{}_{name}", self.family()))
            .join(format!("f{}_s{}", fraction_label(self.fraction), self.seed))
    }

    /// Fine-tunes and evaluates the cell into `dir`. A failure (error or panic) is recorded in
    /// the result; only Ctrl-C is returned as an error.
    fn run(&self, dir: &Path, hooks: RunHooks) -> Result<CellResult> {
        let t0 = Instant::now();
        let run = catch_unwind(AssertUnwindSafe(|| {
            run_finetune_with(
                &self.config,
                &self.variant.backbone,
                self.data_dir,
                dir,
                hooks,
            )
        }));
        let metric = self.metric();
        let mut r = CellResult {
            variant: self.variant.name.clone(),
            task: self.task.to_string(),
            family: self.family().into(),
            fraction: self.fraction,
            seed: self.seed,
            hash: self.hash.clone(),
            status: "ok".into(),
            metric: metric.into(),
            score: None,
            dev_score: None,
            mode: serde_name(&self.config.mode),
            seconds: 0.0,
            error: None,
            metrics: None,
        };
        let failure = match run {
            // Ctrl-C: stop the suite; finished cells are kept, this one reruns.
            Ok(Err(e @ prefine_train::Error::Interrupted { .. })) => return Err(e.into()),
            Ok(Ok(rep)) => {
                let m = &rep.metrics;
                r.dev_score = m["dev"][metric].as_f64();
                r.score = m["test"][metric].as_f64().or(r.dev_score);
                r.metrics = Some(m.clone());
                r.score
                    .is_none()
                    .then(|| format!("no {metric} in metrics.json"))
            }
            Ok(Err(e)) => Some(prefine_runtime::report(&e)),
            Err(p) => Some(format!("panic: {}", panic_message(p))),
        };
        if let Some(reason) = failure {
            r.status = "error".into();
            r.error = Some(reason);
        }
        r.seconds = t0.elapsed().as_secs_f64();
        Ok(r)
    }
}

/// The suite's progress: the overall bar and the counts.
struct Progress {
    bars: MultiProgress,
    overall: ProgressBar,
    total: usize,
    ran: usize,
    skipped: usize,
    failed: usize,
}

impl Progress {
    fn new(total: usize) -> Self {
        let bars = MultiProgress::new();
        let overall = bars.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template(
                "suite {bar:30} {pos}/{len} cells [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("template"),
        );
        Self {
            bars,
            overall,
            total,
            ran: 0,
            skipped: 0,
            failed: 0,
        }
    }

    fn skip(&mut self) {
        self.skipped += 1;
        self.overall.inc(1);
    }

    fn finished(&mut self, cell: &Cell, r: &CellResult) {
        self.ran += 1;
        let at = format!(
            "[{}/{}] {}",
            self.overall.position() + 1,
            self.total,
            cell.label()
        );
        let line = if r.ok() {
            format!(
                "{at}: {} {:.4} ({:.0}s)",
                r.metric,
                r.score.unwrap_or(0.0),
                r.seconds
            )
        } else {
            self.failed += 1;
            format!("{at}: FAILED: {}", r.error.as_deref().unwrap_or(""))
        };
        say(&self.overall, line);
        self.overall.inc(1);
    }
}

/// Runs the whole suite into `out` and writes the report.
pub fn run_suite(cfg: &SuiteConfig, out: &Path) -> Result<SuiteSummary> {
    let t0 = Instant::now();
    cfg.validate()?;
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let data = DataRoot::resolve(cfg.data_root.as_deref())?;
    let tasks = resolve_tasks(cfg, &data)?;
    let mut fractions = cfg.fractions.clone();
    fractions.sort_by(|a, b| b.total_cmp(a));
    let layout = SuiteLayout {
        variants: cfg.variant_names(),
        baseline: cfg.baseline_name(),
        tasks: tasks.iter().map(|t| t.0.clone()).collect(),
        fractions: fractions.clone(),
    };
    write_run_files(cfg, out, &layout)?;
    run_pretraining(cfg, &data, out)?;
    let variants = resolve_variants(cfg, out)?;

    let results_path = out.join("results.jsonl");
    let existing = read_results(&results_path)?;
    let mut progress =
        Progress::new(variants.len() * tasks.len() * fractions.len() * cfg.seeds.len());
    let task_fps = tasks
        .iter()
        .map(|t| task_fingerprint(&t.2))
        .collect::<Result<Vec<_>>>()?;
    for v in &variants {
        for ((task, kind, dir), task_fp) in tasks.iter().zip(&task_fps) {
            let adapter = v.adapters.get(family_name(*kind)).cloned();
            let mut shared: Option<Arc<HiddenCache>> = None;
            for &fraction in &fractions {
                for &seed in &cfg.seeds {
                    let mut config = cfg.protocol.finetune_config(*kind, fraction, seed);
                    config.init_adapter = adapter.clone();
                    let hash = cell_hash(v, task_fp, &config);
                    let cell = Cell {
                        variant: v,
                        task,
                        kind: *kind,
                        data_dir: dir,
                        fraction,
                        seed,
                        config,
                        hash,
                    };
                    if let Some(prev) = existing.get(&cell.key()).filter(|p| p.ok()) {
                        if prev.hash == cell.hash {
                            progress.skip();
                            continue;
                        }
                        say(&progress.overall, format!(
                            "{}: config, weights or data changed since the recorded result; running again",
                            cell.label()
                        ));
                    }
                    progress.overall.set_message(cell.label());
                    let cache = shared.get_or_insert_with(|| {
                        Arc::new(HiddenCache::new(
                            cache_owner(&cell.config, &v.backbone),
                            cell.config.feature_cache_mb,
                        ))
                    });
                    let hooks = RunHooks {
                        cache: Some(cache.clone()),
                        progress: Some(progress.bars.clone()),
                        // Cells are short: an interrupted one starts again.
                        resume: false,
                    };
                    let cell_dir = cell.dir(out);
                    let r = cell
                        .run(&cell_dir, hooks)
                        .inspect_err(|_| progress.overall.abandon())?;
                    append_result(&results_path, &r)?;
                    if !cfg.keep_artifacts {
                        prune_cell(&cell_dir);
                    }
                    progress.finished(&cell, &r);
                }
            }
        }
    }
    progress.overall.finish_and_clear();
    let table = write_report(out)?;
    Ok(SuiteSummary {
        total: progress.total,
        ran: progress.ran,
        skipped: progress.skipped,
        failed: progress.failed,
        table,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
