//! Exact resume after a kill: `prefine finetune` and `prefine pretrain` are SIGKILLed at a random
//! step (after a checkpoint at or past it), resumed with `--resume`, and their final weights,
//! metrics and logs must be bit-identical to an uninterrupted run with the same seed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prefine_model::{seed_rng, Encoder, EncoderConfig};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn real_model() -> PathBuf {
    let d = root().join("models/all-MiniLM-L6-v2");
    assert!(
        d.join("model.safetensors").exists(),
        "{} is missing: run scripts/setup.sh",
        d.display()
    );
    d
}

fn data_root() -> PathBuf {
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

/// A tiny random BERT with the real tokenizer: each step takes milliseconds.
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    let enc =
        Encoder::random(EncoderConfig::tiny_bert_with_vocab(30522), &mut seed_rng(5)).unwrap();
    enc.save_pretrained(&model, Some(&real_model())).unwrap();
    model
}

/// `prefine finetune` arguments for a tiny run (evaluation on 24 dev/test examples).
fn finetune_args(
    model: &Path,
    task: &str,
    mode: &str,
    data: &Path,
    out: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut v: Vec<String> = [
        "finetune",
        "--task",
        task,
        "--mode",
        mode,
        "--max-eval",
        "24",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, path) in [("--model", model), ("--data", data), ("--out", out)] {
        v.push(flag.into());
        v.push(path.display().to_string());
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// A step in `lo..=hi` that differs from run to run (printed, so a failure can be replayed).
fn random_step(lo: u64, hi: u64) -> u64 {
    let seed = std::env::var("KILL_STEP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        });
    let k = lo + seed % (hi - lo + 1);
    eprintln!("kill step {k} (KILL_STEP_SEED={seed})");
    k
}

fn prefine(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prefine"));
    c.args(["--threads", "1"])
        .args(args)
        .current_dir(root())
        .env("PREFINE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run_ok(args: &[String]) {
    let out = prefine(args).output().unwrap();
    assert!(
        out.status.success(),
        "prefine {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the command, waits until `reached()` says a checkpoint at or past the kill step
/// exists, then SIGKILLs it. Returns false if the run finished first.
fn run_and_kill(args: &[String], reached: impl Fn() -> bool) -> bool {
    let mut child = prefine(args).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        if reached() {
            let finished = child.try_wait().unwrap().is_some();
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            return !finished;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run ended ({status}) before the kill step");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoint in time"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn same_file(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

/// JSON without the wall-clock fields.
fn without_times(v: &mut serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        for k in [
            "train_seconds",
            "wall_seconds",
            "epoch_seconds",
            "elapsed_s",
            "seconds",
        ] {
            o.remove(k);
        }
        for x in o.values_mut() {
            without_times(x);
        }
    }
}

fn same_json_lines(a: &Path, b: &Path) {
    let read = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                without_times(&mut v);
                v
            })
            .collect()
    };
    assert_eq!(read(a), read(b), "{} vs {}", a.display(), b.display());
}

#[test]
fn finetune_resumes_bit_identically_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = data_root().join("ner/wnut17");
    let args = |out: &Path| {
        finetune_args(
            &model,
            "ner",
            "lora",
            &data,
            out,
            &[
                "--max-train",
                "200",
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--checkpoint-every",
                "1",
            ],
        )
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(&args(&a));
    // 50 steps per epoch, 100 in all: kill inside an epoch or right at its end.
    let k = random_step(2, 60);
    let ckpts = b.join("checkpoints");
    let killed = run_and_kill(&args(&b), || {
        std::fs::read_dir(&ckpts).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix("step-")
                    .and_then(|s| s.parse::<u64>().ok())
                    .is_some_and(|s| s >= k)
                    && e.path().join("state.json").exists()
            })
        })
    });
    assert!(killed, "the run finished before it could be killed");
    assert!(!b.join("metrics.json").exists());
    let mut resume = args(&b);
    resume.push("--resume".into());
    run_ok(&resume);
    for f in ["head.safetensors", "adapter_model.safetensors"] {
        same_file(&a.join(f), &b.join(f));
    }
    let metrics = |p: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.join("metrics.json")).unwrap()).unwrap();
        without_times(&mut v);
        v
    };
    assert_eq!(metrics(&a), metrics(&b));
    same_json_lines(&a.join("log.jsonl"), &b.join("log.jsonl"));
    assert!(
        !b.join("checkpoints").exists(),
        "checkpoints are removed once the artifact is written"
    );
}

#[test]
fn pretrain_resumes_bit_identically_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let cfg = tmp.path().join("pt.toml");
    std::fs::write(
        &cfg,
        "max_length = 32\nner_batch_size = 4\ntc_batch_size = 4\nconflict_every = 5\ncheckpoint_every = 1\nlog_every = 1\n",
    )
    .unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "pretrain",
            "--strategy",
            "tpl",
            "--model",
            model.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--max-steps",
            "40",
            "--data",
            data_root().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(&args(&a));
    let k = random_step(2, 20);
    let state = b.join("checkpoint").join("state.json");
    let killed = run_and_kill(&args(&b), || {
        std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["step"].as_u64())
            .is_some_and(|s| s >= k)
    });
    assert!(killed, "the run finished before it could be killed");
    let mut resume = args(&b);
    resume.push("--resume".into());
    run_ok(&resume);
    same_file(
        &a.join("backbone/model.safetensors"),
        &b.join("backbone/model.safetensors"),
    );
    same_json_lines(&a.join("metrics.jsonl"), &b.join("metrics.jsonl"));
    for g in ["ner", "tc"] {
        same_file(
            &a.join(format!("adapters/{g}/adapter_model.safetensors")),
            &b.join(format!("adapters/{g}/adapter_model.safetensors")),
        );
    }
}

#[test]
fn ctrl_c_writes_a_checkpoint_exits_130_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = data_root().join("tc/trec6");
    let args = |out: &Path| {
        finetune_args(
            &model,
            "tc",
            "full",
            &data,
            out,
            &[
                "--max-train",
                "2000",
                "--epochs",
                "1",
                "--batch-size",
                "2",
                "--checkpoint-every",
                "5",
            ],
        )
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run_ok(&args(&a));
    let child = prefine(&args(&b)).spawn().unwrap();
    // Interrupt once training runs (the first checkpoint exists); 1000 steps remain to catch it.
    let first = b.join("checkpoints/step-00000005/state.json");
    let t0 = Instant::now();
    while !first.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint in time"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        panic!("the run finished before Ctrl-C arrived; make it longer\n{stderr}");
    }
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted at step"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mut resume = args(&b);
    resume.push("--resume".into());
    run_ok(&resume);
    same_file(
        &a.join("model/model.safetensors"),
        &b.join("model/model.safetensors"),
    );
}
