//! Bundles: export, checksums, atomic writing, loading, and `--merge` (LoRA folded into the
//! backbone gives the predictions of the unmerged adapter).

mod common;

use std::path::Path;

use common::{json_close, texts, tiny_model, write_adapter, Spec};
use prefine_model::Precision;
use prefine_runtime::bundle::{verify_bundle, ExportOptions};
use prefine_runtime::{export_bundle, is_bundle, load_bundle, Engine};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let model = root.join("model");
    let base = tiny_model(&model);
    write_adapter(&base, &model, &root.join("a/ner"), Spec::ner(true, 1));
    write_adapter(&base, &model, &root.join("a/tc"), Spec::tc(true, 2));
    write_adapter(&base, &model, &root.join("a/tc-head"), Spec::tc(false, 3));
    Fixture { _tmp: tmp, root }
}

fn opts(root: &Path, names: &[&str], merge: Option<&str>, out: &str) -> ExportOptions {
    ExportOptions {
        model_dir: root.join("model"),
        adapters: names
            .iter()
            .map(|n| (n.to_string(), root.join("a").join(n)))
            .collect(),
        merge: merge.map(str::to_string),
        quantize: Precision::F32,
        out: root.join(out),
    }
}

fn predictions(engine: &Engine, name: &str) -> serde_json::Value {
    serde_json::to_value(engine.predict(name, &texts()).unwrap()).unwrap()
}

fn no_partial_dirs(root: &Path) {
    for e in std::fs::read_dir(root).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.ends_with(".partial"), "left behind: {n}");
    }
}

#[test]
fn export_and_load_a_bundle() {
    let f = fixture();
    let m = export_bundle(&opts(&f.root, &["ner", "tc", "tc-head"], None, "bundle")).unwrap();
    let b = f.root.join("bundle");
    assert!(is_bundle(&b));
    assert_eq!(m.adapters.len(), 3);
    assert!(m.merged.is_none());
    let on_disk: u64 = m
        .files
        .iter()
        .map(|x| std::fs::metadata(b.join(&x.path)).unwrap().len())
        .sum();
    assert_eq!(m.total_bytes, on_disk);
    for p in [
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "adapters/ner/adapter_model.safetensors",
        "adapters/tc-head/head.safetensors",
    ] {
        assert!(m.files.iter().any(|x| x.path == p), "manifest lacks {p}");
    }
    assert!(!b
        .join("adapters/tc-head/adapter_model.safetensors")
        .exists());
    no_partial_dirs(&f.root);

    // Same predictions as the original directories.
    let bundle = load_bundle(&b).unwrap();
    let orig = Engine::load(f.root.join("model")).unwrap();
    for n in ["ner", "tc", "tc-head"] {
        orig.register(n, &f.root.join("a").join(n)).unwrap();
        json_close(&predictions(&bundle, n), &predictions(&orig, n), 1e-6).unwrap();
    }

    // A changed file fails the checksum.
    let head = b.join("adapters/tc/head.safetensors");
    let mut bytes = std::fs::read(&head).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&head, bytes).unwrap();
    let e = verify_bundle(&b).unwrap_err().to_string();
    assert!(e.contains("adapters/tc/head.safetensors"), "{e}");
    assert!(load_bundle(&b).is_err());

    // The bundle directory is never overwritten.
    let e = export_bundle(&opts(&f.root, &["tc"], None, "bundle")).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

#[test]
fn merged_bundle_predicts_like_the_adapter() {
    let f = fixture();
    let m = export_bundle(&opts(&f.root, &["ner"], Some("ner"), "merged")).unwrap();
    assert_eq!(m.merged.as_deref(), Some("ner"));
    assert!(!m.adapters[0].has_lora);
    let b = f.root.join("merged");
    assert!(!b.join("adapters/ner/adapter_model.safetensors").exists());
    let merged = load_bundle(&b).unwrap();
    assert!(!merged.adapter("ner").unwrap().has_lora);
    let orig = Engine::load(f.root.join("model")).unwrap();
    orig.register("ner", &f.root.join("a/ner")).unwrap();
    // Folding changes float rounding only.
    json_close(
        &predictions(&merged, "ner"),
        &predictions(&orig, "ner"),
        1e-4,
    )
    .unwrap();
}

#[test]
fn export_errors_leave_nothing_behind() {
    let f = fixture();
    let cases = [
        (
            opts(&f.root, &["ner", "tc"], Some("ner"), "x1"),
            "exactly one",
        ),
        (
            opts(&f.root, &["tc-head"], Some("tc-head"), "x2"),
            "no LoRA group",
        ),
        (
            opts(&f.root, &["tc"], Some("ner"), "x3"),
            "names no --adapter",
        ),
        (opts(&f.root, &["bad/name"], None, "x4"), "adapter name"),
        (opts(&f.root, &["nope"], None, "x5"), "nope"),
    ];
    for (o, msg) in cases {
        let e = export_bundle(&o).unwrap_err().to_string();
        assert!(e.contains(msg), "{msg}: {e}");
        assert!(!o.out.exists());
    }
    let mut dup = opts(&f.root, &["tc"], None, "x6");
    dup.adapters.push(dup.adapters[0].clone());
    assert!(export_bundle(&dup).is_err());
    no_partial_dirs(&f.root);
}

/// `--quantize int8|bf16`: the bundle stores the quantised weights (smaller backbone file, the
/// precision in the manifest), loads at that precision, and serves exactly the predictions of
/// the same backbone quantised in memory; with `--merge`, the LoRA is folded in before
/// quantising.
#[test]
fn quantized_bundles_serve_like_the_in_memory_quantized_engine() {
    let f = fixture();
    let size = |dir: &Path| {
        std::fs::metadata(dir.join("model/model.safetensors"))
            .unwrap()
            .len()
    };
    export_bundle(&opts(&f.root, &["tc"], None, "plain")).unwrap();
    let f32_size = size(&f.root.join("plain"));
    for (p, out) in [(Precision::Int8, "int8"), (Precision::Bf16, "bf16")] {
        let mut o = opts(&f.root, &["ner", "tc", "tc-head"], None, out);
        o.quantize = p;
        let m = export_bundle(&o).unwrap();
        assert_eq!(m.precision, p);
        let b = f.root.join(out);
        assert!(size(&b) < f32_size, "{p}: {} vs f32 {f32_size}", size(&b));
        let text = std::fs::read_to_string(b.join("manifest.json")).unwrap();
        assert!(text.contains(&format!("\"precision\": \"{p}\"")), "{text}");
        let bundle = load_bundle(&b).unwrap();
        assert_eq!(bundle.precision(), p);
        let mem = Engine::load(f.root.join("model")).unwrap();
        mem.prepare_inference(p).unwrap();
        for n in ["ner", "tc", "tc-head"] {
            mem.register(n, &f.root.join("a").join(n)).unwrap();
            assert_eq!(predictions(&bundle, n), predictions(&mem, n), "{p} {n}");
        }
    }
    // f32 weights packed for inference (what `serve` does by default) serve exactly the
    // predictions of the plain f32 bundle, adapters registered after packing included.
    export_bundle(&opts(&f.root, &["ner", "tc", "tc-head"], None, "f32")).unwrap();
    let plain = load_bundle(&f.root.join("f32")).unwrap();
    let packed = Engine::load(f.root.join("model")).unwrap();
    packed.prepare_inference(Precision::F32).unwrap();
    assert_eq!(packed.precision(), Precision::F32);
    for n in ["ner", "tc", "tc-head"] {
        packed.register(n, &f.root.join("a").join(n)).unwrap();
        assert_eq!(
            predictions(&plain, n),
            predictions(&packed, n),
            "packed f32 {n}"
        );
    }
    // Merge, then quantise: the merged single-task model at int8.
    let mut o = opts(&f.root, &["ner"], Some("ner"), "merged-int8");
    o.quantize = Precision::Int8;
    let m = export_bundle(&o).unwrap();
    assert_eq!(
        (m.precision, m.merged.as_deref()),
        (Precision::Int8, Some("ner"))
    );
    let merged = load_bundle(&f.root.join("merged-int8")).unwrap();
    assert!(!merged.adapter("ner").unwrap().has_lora);
    let orig = Engine::load(f.root.join("model")).unwrap();
    orig.register("ner", &f.root.join("a/ner")).unwrap();
    json_close(
        &predictions(&merged, "ner"),
        &predictions(&orig, "ner"),
        0.05,
    )
    .unwrap();
    no_partial_dirs(&f.root);
}
