//! `prefine export` and `prefine serve` end to end through the real binary: a bundle is
//! exported, served on an ephemeral port, queried over raw HTTP, and the process exits cleanly
//! (status 0) on SIGTERM. Bad arguments fail with a message, never a panic.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use prefine_serve::synthetic::{write_synthetic_adapter, write_tiny_model, SyntheticSpec};

fn prefine() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prefine"));
    c.env("PREFINE_LOG", "warn");
    c
}

/// The installed default model (its tokenizer); installed by scripts/setup.sh.
fn real_model() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("tokenizer.json").is_file(),
        "{} is missing: run ./scripts/setup.sh",
        dir.display()
    );
    dir
}

/// One HTTP/1.1 request over a fresh connection; returns (status, body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

/// Runs `prefine export --model MODEL --adapter NAME=DIR... EXTRA... --out OUT`, asserts that it
/// succeeded and returns its stdout.
fn export(model: &Path, adapters: &[(&str, &Path)], extra: &[&str], out: &Path) -> String {
    let mut cmd = prefine();
    cmd.arg("export").arg("--model").arg(model);
    for (name, dir) in adapters {
        cmd.arg("--adapter")
            .arg(format!("{name}={}", dir.display()));
    }
    let done = cmd.args(extra).arg("--out").arg(out).output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    String::from_utf8_lossy(&done.stdout).into_owned()
}

#[test]
fn export_then_serve_a_bundle_and_stop_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let base = write_tiny_model(&model, &real_model(), 3).unwrap();
    let ner = tmp.path().join("ner");
    let tc = tmp.path().join("tc");
    write_synthetic_adapter(&base, &model, &ner, SyntheticSpec::ner(true, 1)).unwrap();
    write_synthetic_adapter(&base, &model, &tc, SyntheticSpec::tc(false, 2)).unwrap();
    let bundle = tmp.path().join("bundle");
    let stdout = export(&model, &[("ner", &ner), ("tc", &tc)], &[], &bundle);
    assert!(stdout.contains("MiB"), "{stdout}");
    assert!(bundle.join("manifest.json").is_file());

    let mut child = prefine()
        .env("PREFINE_LOG", "info")
        .arg("serve")
        .arg("--model")
        .arg(&bundle)
        .args(["--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let start = Instant::now();
    let addr = loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 || start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the server did not start");
        }
        if let Some(rest) = line.trim().strip_prefix("listening on http://") {
            break rest.to_string();
        }
    };
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        rest
    });
    let (st, body) = http(&addr, "GET", "/v1/adapters", "");
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("\"ner\"") && body.contains("\"tc\""),
        "{body}"
    );
    let (st, body) = http(
        &addr,
        "POST",
        "/v1/predict",
        r#"{"adapter":"tc","texts":["a fine day"]}"#,
    );
    assert_eq!(st, 200, "{body}");
    assert!(
        body.starts_with("{\"results\":[{\"text\":\"a fine day\",\"label\":"),
        "{body}"
    );
    let (st, body) = http(&addr, "POST", "/v1/predict", "{");
    assert_eq!(st, 400, "{body}");

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    let log = drain.join().unwrap();
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec![
            "export".into(),
            "--adapter".into(),
            "nodir".into(),
            "--out".into(),
            tmp.path().join("b").display().to_string(),
        ],
        vec![
            "export".into(),
            "--adapter".into(),
            "x=/nonexistent".into(),
            "--out".into(),
            tmp.path().join("b").display().to_string(),
        ],
        vec![
            "serve".into(),
            "--model".into(),
            "/nonexistent".into(),
            "--port".into(),
            "0".into(),
        ],
        vec![
            "serve".into(),
            "--adapter".into(),
            "x=/nonexistent".into(),
            "--model".into(),
            real_model().display().to_string(),
            "--port".into(),
            "0".into(),
        ],
        vec![
            "serve".into(),
            "--adapters-dir".into(),
            "/nonexistent".into(),
            "--model".into(),
            real_model().display().to_string(),
            "--port".into(),
            "0".into(),
        ],
    ];
    for args in cases {
        let out = prefine().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert!(!tmp.path().join("b").exists());
}

/// `export --quantize int8`: the bundle stores int8 weights, the export reports the load's peak
/// RSS (measured by `serve --load-only` in a fresh process), and `serve --load-only` loads it
/// at int8. A quantised backbone refuses training workloads with a message.
#[test]
fn quantized_export_and_load_only() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    let base = write_tiny_model(&model, &real_model(), 3).unwrap();
    let tc = tmp.path().join("tc");
    write_synthetic_adapter(&base, &model, &tc, SyntheticSpec::tc(true, 2)).unwrap();
    let bundle = tmp.path().join("bundle");
    let stdout = export(&model, &[("tc", &tc)], &["--quantize", "int8"], &bundle);
    assert!(
        stdout.contains("int8") && stdout.contains("peak RSS"),
        "{stdout}"
    );
    let out = prefine()
        .arg("serve")
        .arg("--model")
        .arg(&bundle)
        .arg("--load-only")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["precision"], "int8", "{v}");
    assert_eq!(v["adapters"], serde_json::json!(["tc"]), "{v}");

    let out = prefine()
        .args([
            "bench",
            "train_lora",
            "--quick",
            "--precision",
            "int8",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("inference-only"), "{stderr}");
    let out = prefine()
        .args(["bench", "infer_b1", "--precision", "fp8"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
