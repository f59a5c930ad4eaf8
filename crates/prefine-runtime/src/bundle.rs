//! Self-contained deployment bundles: the backbone, its tokenizer and any number of adapters
//! (LoRA pairs, heads, label maps) in one directory, with a `manifest.json` that lists every
//! file with its size and sha256.
//!
//! ```text
//! BUNDLE/manifest.json             format, backbone, adapters, files (path, bytes, sha256)
//! BUNDLE/model/                    config.json, model.safetensors, tokenizer files
//! BUNDLE/adapters/NAME/            adapter.json, labels.json, head.safetensors,
//!                                  adapter_config.json + adapter_model.safetensors (LoRA)
//! ```
//!
//! A bundle is written into a temporary sibling directory, loaded back and checked, and only
//! then renamed into place: a crash never leaves a half-written bundle under the final name.
//! With `merge`, one adapter's LoRA group is folded into the backbone weights: the bundle is a
//! single-task model whose adapter keeps only its head. With `quantize`, the backbone's linear
//! weights are stored as int8 (+ f32 per-channel scales) or bf16 (after any merge), see
//! [`prefine_model::quant`]; the manifest records the precision.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::artifact::{read_adapter_dir, ArtifactManifest, Mode, TaskKind};
use prefine_model::peft::{load_adapter, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use prefine_model::weights::write_atomic;
use prefine_model::{Encoder, Precision};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::{validate_name, Engine};
use crate::error::{Error, Result};

/// The `format` value of a bundle manifest.
pub const BUNDLE_FORMAT: &str = "prefine-bundle";
/// The manifest file name.
pub const MANIFEST: &str = "manifest.json";

const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    /// Path relative to the bundle root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
}

/// One adapter of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleAdapter {
    /// The name it is served under.
    pub name: String,
    /// Its directory, relative to the bundle root.
    pub path: String,
    /// Task family.
    pub task: TaskKind,
    /// Whether it carries a LoRA group (false for the merged one).
    pub has_lora: bool,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleManifest {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The backbone directory, relative to the bundle root.
    pub backbone: String,
    /// The backbone it was exported from.
    pub source_model: PathBuf,
    /// The adapter whose LoRA group is folded into the backbone weights, if any.
    pub merged: Option<String>,
    /// Backbone parameters (elements).
    pub backbone_parameters: usize,
    /// The number format of the backbone's linear weights (`f32` in bundles written before
    /// quantisation existed).
    #[serde(default)]
    pub precision: Precision,
    /// The adapters.
    pub adapters: Vec<BundleAdapter>,
    /// Every file but the manifest.
    pub files: Vec<BundleFile>,
    /// Sum of the file sizes in bytes.
    pub total_bytes: u64,
}

/// What [`export_bundle`] writes.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The backbone directory.
    pub model_dir: PathBuf,
    /// `(name, adapter directory)` pairs.
    pub adapters: Vec<(String, PathBuf)>,
    /// Fold this adapter's LoRA group into the backbone (it must be the only adapter).
    pub merge: Option<String>,
    /// Store the backbone's linear weights at this precision (`F32`: unchanged).
    pub quantize: Precision,
    /// The bundle directory to create (must not exist).
    pub out: PathBuf,
}

/// Whether `dir` holds a bundle manifest.
pub fn is_bundle(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::file(path, e)
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((n, hex))
}

/// Copies a file and flushes it to disk.
fn copy_synced(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(io(from))?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(io(to))
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(v).expect("manifest types serialise")
}

/// Every regular file under `root`, as sorted `/`-separated relative paths.
fn list_files(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            let p = e.path();
            let ft = e.file_type().map_err(io(&p))?;
            if ft.is_dir() {
                walk(root, &p, out)?;
            } else if ft.is_file() {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// Writes a bundle (see the module docs) and returns its manifest.
pub fn export_bundle(opts: &ExportOptions) -> Result<BundleManifest> {
    if opts.out.exists() {
        return Err(Error::file(
            &opts.out,
            "already exists; choose a new bundle directory",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, _) in &opts.adapters {
        validate_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(Error::BadRequest(format!("adapter {name:?} given twice")));
        }
    }
    if let Some(m) = &opts.merge {
        if !seen.contains(m.as_str()) {
            return Err(Error::BadRequest(format!(
                "--merge {m:?} names no --adapter"
            )));
        }
        if opts.adapters.len() != 1 {
            return Err(Error::BadRequest(
                "--merge makes a single-task model: give exactly one --adapter".into(),
            ));
        }
    }
    let parent = opts
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let leaf = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::file(&opts.out, "not a directory name"))?;
    let tmp = parent.join(format!(".{leaf}.{}.partial", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    let res = write_bundle(opts, &tmp).and_then(|manifest| {
        // Load it back (checksums, backbone, every adapter) before it gets its name.
        load_bundle(&tmp)?;
        std::fs::rename(&tmp, &opts.out).map_err(io(&opts.out))?;
        Ok(manifest)
    });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res
}

fn write_bundle(opts: &ExportOptions, root: &Path) -> Result<BundleManifest> {
    let model_out = root.join("model");
    std::fs::create_dir_all(&model_out).map_err(io(&model_out))?;
    let (mut encoder, _) = Encoder::from_model_dir(&opts.model_dir)?;
    let mut adapters = Vec::new();
    for (name, dir) in &opts.adapters {
        let parts = read_adapter_dir(dir)?;
        let merged = opts.merge.as_deref() == Some(name.as_str());
        let rel = format!("adapters/{name}");
        let out = root.join(&rel);
        std::fs::create_dir_all(&out).map_err(io(&out))?;
        let mut manifest: ArtifactManifest = parts.manifest;
        for f in ["labels.json", "head.safetensors"] {
            copy_synced(&dir.join(f), &out.join(f))?;
        }
        if merged {
            if !manifest.has_lora {
                return Err(Error::Adapter {
                    path: dir.clone(),
                    reason: "--merge: this adapter has no LoRA group to fold in".into(),
                });
            }
            load_adapter(&mut encoder, dir, "merge").map_err(|source| Error::AdapterLoad {
                path: dir.clone(),
                source,
            })?;
            encoder.bake_group("merge")?;
            manifest.has_lora = false;
            manifest.mode = Mode::Head;
        } else if manifest.has_lora {
            for f in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
                copy_synced(&dir.join(f), &out.join(f))?;
            }
        }
        write_atomic(&out.join("adapter.json"), &json_bytes(&manifest))?;
        adapters.push(BundleAdapter {
            name: name.clone(),
            path: rel,
            task: manifest.task,
            has_lora: manifest.has_lora,
        });
    }
    if opts.quantize != Precision::F32 {
        encoder.quantize(opts.quantize)?;
        encoder.save_quantized(&model_out, Some(&opts.model_dir))?;
    } else if opts.merge.is_some() {
        encoder.save_pretrained(&model_out, Some(&opts.model_dir))?;
    } else {
        copy_synced(
            &opts.model_dir.join("config.json"),
            &model_out.join("config.json"),
        )?;
        copy_synced(
            &opts.model_dir.join("model.safetensors"),
            &model_out.join("model.safetensors"),
        )?;
        for f in TOKENIZER_FILES {
            let p = opts.model_dir.join(f);
            if p.is_file() {
                copy_synced(&p, &model_out.join(f))?;
            }
        }
    }
    if !model_out.join("tokenizer.json").is_file() {
        return Err(Error::file(
            opts.model_dir.join("tokenizer.json"),
            "the backbone has no tokenizer.json",
        ));
    }
    let mut files = Vec::new();
    for rel in list_files(root)? {
        let (bytes, sha256) = sha256_file(&root.join(&rel))?;
        files.push(BundleFile {
            path: rel,
            bytes,
            sha256,
        });
    }
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT.into(),
        version: 1,
        backbone: "model".into(),
        source_model: std::fs::canonicalize(&opts.model_dir)
            .unwrap_or_else(|_| opts.model_dir.clone()),
        merged: opts.merge.clone(),
        backbone_parameters: encoder.num_base_parameters(),
        precision: encoder.precision(),
        adapters,
        total_bytes: files.iter().map(|f| f.bytes).sum(),
        files,
    };
    write_atomic(&root.join(MANIFEST), &json_bytes(&manifest))?;
    Ok(manifest)
}

/// Reads `manifest.json` and checks every listed file's size and sha256 (and that no
/// listed path leaves the bundle).
pub fn verify_bundle(dir: &Path) -> Result<BundleManifest> {
    let bad = |reason: String| Error::Bundle {
        path: dir.to_path_buf(),
        reason,
    };
    let mpath = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&mpath).map_err(io(&mpath))?;
    let m: BundleManifest =
        serde_json::from_str(&text).map_err(|e| bad(format!("{MANIFEST}: {e}")))?;
    if m.format != BUNDLE_FORMAT {
        return Err(bad(format!(
            "format {:?} is not {BUNDLE_FORMAT:?}",
            m.format
        )));
    }
    let safe = |p: &str| {
        !p.is_empty()
            && Path::new(p)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
    };
    for f in &m.files {
        if !safe(&f.path) {
            return Err(bad(format!("file path {:?} leaves the bundle", f.path)));
        }
        let (bytes, sha) = sha256_file(&dir.join(&f.path))?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(bad(format!(
                "{}: {bytes} bytes, sha256 {sha}; the manifest says {} bytes, {}",
                f.path, f.bytes, f.sha256
            )));
        }
    }
    for p in std::iter::once(&m.backbone).chain(m.adapters.iter().map(|a| &a.path)) {
        if !safe(p) {
            return Err(bad(format!("path {p:?} leaves the bundle")));
        }
    }
    Ok(m)
}

/// Verifies a bundle and loads it: the backbone once, every adapter registered by name.
pub fn load_bundle(dir: &Path) -> Result<Engine> {
    let m = verify_bundle(dir)?;
    let engine = Engine::load(dir.join(&m.backbone))?;
    if engine.precision() != m.precision {
        return Err(Error::Bundle {
            path: dir.to_path_buf(),
            reason: format!(
                "the manifest says precision {}, the backbone's weights are {}",
                m.precision,
                engine.precision()
            ),
        });
    }
    for a in &m.adapters {
        engine.register(&a.name, &dir.join(&a.path))?;
    }
    Ok(engine)
}
