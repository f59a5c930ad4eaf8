//! Adapters in Hugging Face PEFT's on-disk format: `adapter_config.json` plus
//! `adapter_model.safetensors` with PEFT's key names
//! (`base_model.model.[bert.]encoder.layer.5.attention.self.query.lora_A.weight`).
//! Task heads (`classifier.*`, `pooler.*`) are saved in the same file, as PEFT's
//! `modules_to_save` does, so that loading an adapter gives back the whole application.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::Tensor;
use serde_json::{json, Value};

use crate::config::ModelType;
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::lora::{LoraConfig, LoraPair, LoraTarget};
use crate::models::Naming;
use crate::params::Param;
use crate::weights::{load_safetensors_bytes, save_safetensors, write_atomic};

/// PEFT's file names.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's weights file name.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const KEY_ROOT: &str = "base_model.model.";

/// PEFT task types we read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftTaskType {
    /// A bare encoder adapter (`BertModel`): keys without the `bert.` prefix.
    FeatureExtraction,
    /// `BertForTokenClassification`.
    TokenCls,
    /// `BertForSequenceClassification`.
    SeqCls,
}

impl PeftTaskType {
    fn as_peft(&self) -> Value {
        match self {
            Self::FeatureExtraction => Value::Null,
            Self::TokenCls => json!("TOKEN_CLS"),
            Self::SeqCls => json!("SEQ_CLS"),
        }
    }
    fn from_peft(v: &Value) -> Self {
        match v.as_str() {
            Some("TOKEN_CLS") => Self::TokenCls,
            Some("SEQ_CLS") => Self::SeqCls,
            _ => Self::FeatureExtraction,
        }
    }
}

/// What [`load_adapter`] found.
#[derive(Debug, Clone)]
pub struct LoadedAdapter {
    /// The LoRA hyper-parameters recovered from the files.
    pub config: LoraConfig,
    /// The PEFT task type.
    pub task_type: PeftTaskType,
    /// Non-LoRA tensors (head, pooler), with `base_model.model.` and the model prefix removed,
    /// e.g. `classifier.weight`, `pooler.dense.weight`.
    pub extra: BTreeMap<String, Tensor>,
    /// The raw `adapter_config.json`.
    pub raw_config: Value,
}

fn peft_module_names(model_type: ModelType, targets: &BTreeSet<LoraTarget>) -> Vec<&'static str> {
    let naming = Naming(model_type);
    let mut names: Vec<&'static str> = targets
        .iter()
        .filter_map(|&t| naming.peft_name(t))
        .collect();
    // ModernBERT's two output projections are both `Wo`: PEFT's short name covers the pair.
    if names.contains(&"attn.Wo") && names.contains(&"mlp.Wo") {
        names.retain(|n| !n.ends_with(".Wo"));
        let at = names.iter().position(|n| *n == "Wi").unwrap_or(names.len());
        names.insert(at, "Wo");
    }
    names
}

/// `target_modules` as PEFT understands it: a list of module-name suffixes when that selects
/// exactly our layers, otherwise one full-match regular expression.
fn target_modules(
    enc: &Encoder,
    targets: &BTreeSet<LoraTarget>,
    layers: &BTreeSet<usize>,
) -> (Value, Value) {
    let names = peft_module_names(enc.config().model_type, targets);
    let all_layers = layers.len() == enc.config().num_hidden_layers;
    let layers_json = if all_layers {
        Value::Null
    } else {
        json!(layers.iter().collect::<Vec<_>>())
    };
    // BERT's "output.dense" is also a suffix of "attention.output.dense"; MobileBERT's
    // "intermediate.dense" and "output.dense" are also those of its extra feed-forwards.
    let ambiguous = match enc.config().model_type {
        ModelType::Bert | ModelType::Electra => {
            targets.contains(&LoraTarget::Output) && !targets.contains(&LoraTarget::AttentionOutput)
        }
        ModelType::MobileBert => true,
        ModelType::Distilbert | ModelType::ModernBert => false,
    };
    if !ambiguous {
        return (json!(names), layers_json);
    }
    let layer_alt = layers
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("|");
    let module_alt = targets
        .iter()
        .map(|&t| {
            let path = enc.naming().linear(0, t);
            path.trim_start_matches("encoder.layer.0.")
                .replace('.', r"\.")
        })
        .collect::<Vec<_>>()
        .join("|");
    (
        json!(format!(r".*encoder\.layer\.({layer_alt})\.({module_alt})")),
        Value::Null,
    )
}

/// Saves LoRA group `group` (and optional head tensors, named like `classifier.weight` or
/// `pooler.dense.weight`) as a PEFT adapter directory. Files are written atomically.
pub fn save_adapter(
    enc: &Encoder,
    group: &str,
    task_type: PeftTaskType,
    head: &BTreeMap<String, Tensor>,
    base_model_name: &str,
    dir: &Path,
) -> Result<()> {
    let cfg = enc
        .group_config(group)
        .ok_or_else(|| Error::UnknownGroup(group.to_string()))?
        .clone();
    let module_prefix = match task_type {
        PeftTaskType::FeatureExtraction => KEY_ROOT.to_string(),
        _ => format!("{KEY_ROOT}{}", enc.naming().model_prefix()),
    };
    let mut tensors = BTreeMap::new();
    let mut targets = BTreeSet::new();
    let mut layers = BTreeSet::new();
    for (path, (layer, t), pair) in enc.group_pairs(group) {
        targets.insert(t);
        layers.insert(layer);
        tensors.insert(
            format!("{module_prefix}{path}.lora_A.weight"),
            pair.a.t().detach(),
        );
        tensors.insert(
            format!("{module_prefix}{path}.lora_B.weight"),
            pair.b.t().detach(),
        );
    }
    let mut modules_to_save = BTreeSet::new();
    for (name, t) in head {
        let key = if name.starts_with("pooler.") {
            format!("{KEY_ROOT}{}{name}", enc.naming().model_prefix())
        } else {
            format!("{KEY_ROOT}{name}")
        };
        modules_to_save.insert(name.split('.').next().unwrap_or(name).to_string());
        tensors.insert(key, t.detach());
    }
    let (target_modules, layers_to_transform) = target_modules(enc, &targets, &layers);
    let config = json!({
        "peft_type": "LORA",
        "task_type": task_type.as_peft(),
        "base_model_name_or_path": base_model_name,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": target_modules,
        "layers_to_transform": layers_to_transform,
        "layers_pattern": Value::Null,
        "modules_to_save": if modules_to_save.is_empty() { Value::Null } else { json!(modules_to_save) },
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": cfg.use_rslora,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": Value::Null,
        "exclude_modules": Value::Null,
    });
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_safetensors(&dir.join(ADAPTER_WEIGHTS), &tensors)?;
    let text = serde_json::to_vec_pretty(&config).expect("json value serialises");
    write_atomic(&dir.join(ADAPTER_CONFIG), &text)
}

/// Checks `target_modules` of an adapter config against the linear layers of `enc`, with PEFT's
/// rule (a list entry matches a module whose path equals it or ends with `.entry`). A string is a
/// regular expression and is not checked here: the tensors decide. Returns the reason on failure.
fn check_target_modules(model_type: ModelType, v: &Value) -> std::result::Result<(), String> {
    let entries = match v {
        Value::Null | Value::String(_) => return Ok(()),
        Value::Array(a) => a,
        other => {
            return Err(format!(
                "field target_modules: {other} is neither a list of module names nor a regular expression"
            ))
        }
    };
    let naming = Naming(model_type);
    let paths: Vec<String> = naming
        .targets()
        .into_iter()
        .map(|t| naming.linear(0, t))
        .collect();
    let mut unknown = Vec::new();
    for e in entries {
        let Some(name) = e.as_str() else {
            return Err(format!("field target_modules: {e} is not a module name"));
        };
        let hit = paths
            .iter()
            .any(|p| p == name || p.ends_with(&format!(".{name}")));
        if !hit {
            unknown.push(format!("{name:?}"));
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "field target_modules: {} match no linear layer of this {:?} model (its layers: {})",
        unknown.join(", "),
        model_type,
        peft_module_names(model_type, &naming.targets().into_iter().collect()).join(", ")
    ))
}

/// The fields of an `adapter_config.json` that [`load_adapter`] uses, read and checked.
#[derive(Debug, Clone)]
pub struct AdapterConfigFile {
    /// `r`: the LoRA rank (positive).
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout`, in [0, 1) (0 when absent).
    pub dropout: f64,
    /// `use_rslora` (false when absent).
    pub use_rslora: bool,
    /// `task_type`.
    pub task_type: PeftTaskType,
    /// The whole parsed JSON value.
    pub raw: Value,
}

/// Parses and checks the text of an `adapter_config.json` (as [`load_adapter`] does, before it
/// reads any tensor) for a model of family `model_type`. `path` is only used in messages. Any
/// bytes give `Ok` or an error naming `path` and the field; never a panic.
pub fn parse_adapter_config(
    text: &[u8],
    path: &Path,
    model_type: ModelType,
) -> Result<AdapterConfigFile> {
    let bad = |path: &Path, reason: String| Error::Adapter {
        path: path.to_path_buf(),
        reason,
    };
    let raw: Value = serde_json::from_slice(text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let field = |k: &str| raw.get(k).cloned().unwrap_or(Value::Null);
    if field("peft_type").as_str() != Some("LORA") {
        return Err(bad(
            path,
            format!("field peft_type: {} is not \"LORA\"", field("peft_type")),
        ));
    }
    if field("fan_in_fan_out").as_bool() == Some(true) {
        return Err(bad(
            path,
            "field fan_in_fan_out: true is not supported for BERT".into(),
        ));
    }
    if field("use_dora").as_bool() == Some(true) {
        return Err(bad(
            path,
            "field use_dora: DoRA adapters are not supported".into(),
        ));
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if field(k).as_object().is_some_and(|o| !o.is_empty()) {
            return Err(bad(
                path,
                format!("field {k}: per-module patterns are not supported"),
            ));
        }
    }
    let rank = field("r")
        .as_u64()
        .filter(|&r| r > 0)
        .ok_or_else(|| bad(path, "field r: missing or not a positive integer".into()))?
        as usize;
    let alpha = field("lora_alpha")
        .as_f64()
        .ok_or_else(|| bad(path, "field lora_alpha: missing or not a number".into()))?;
    let dropout = match field("lora_dropout") {
        Value::Null => 0.0,
        v => v
            .as_f64()
            .filter(|p| (0.0..1.0).contains(p))
            .ok_or_else(|| bad(path, format!("field lora_dropout: {v} is not in [0, 1)")))?,
    };
    match field("bias") {
        Value::Null => {}
        Value::String(b) if b == "none" => {}
        v => {
            return Err(bad(
                path,
                format!(
                    "field bias: {v} is not supported (only \"none\": LoRA without trained biases)"
                ),
            ))
        }
    }
    check_target_modules(model_type, &field("target_modules")).map_err(|r| bad(path, r))?;
    let use_rslora = field("use_rslora").as_bool().unwrap_or(false);
    let task_type = PeftTaskType::from_peft(&field("task_type"));
    Ok(AdapterConfigFile {
        rank,
        alpha,
        dropout,
        use_rslora,
        task_type,
        raw,
    })
}

/// Loads a PEFT LoRA adapter directory into `enc` as group `group` (frozen) and returns its
/// config and any head tensors it carries.
pub fn load_adapter(enc: &mut Encoder, dir: &Path, group: &str) -> Result<LoadedAdapter> {
    let bad = |path: &Path, reason: String| Error::Adapter {
        path: path.to_path_buf(),
        reason,
    };
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let w_path = dir.join(ADAPTER_WEIGHTS);
    if !w_path.exists() && dir.join("adapter_model.bin").exists() {
        return Err(bad(
            &w_path,
            "only safetensors adapters are supported (found adapter_model.bin)".into(),
        ));
    }
    let weights = std::fs::read(&w_path).map_err(|e| Error::io(&w_path, e))?;
    load_adapter_bytes(enc, &text, &weights, dir, group)
}

/// [`load_adapter`] from the bytes of `adapter_config.json` and `adapter_model.safetensors`
/// held in memory; `dir` names them in error messages.
pub fn load_adapter_bytes(
    enc: &mut Encoder,
    config: &[u8],
    weights: &[u8],
    dir: &Path,
    group: &str,
) -> Result<LoadedAdapter> {
    let bad = |path: &Path, reason: String| Error::Adapter {
        path: path.to_path_buf(),
        reason,
    };
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let text = config;
    let AdapterConfigFile {
        rank,
        alpha,
        dropout,
        use_rslora,
        task_type,
        raw,
    } = parse_adapter_config(text, &cfg_path, enc.config().model_type)?;

    let w_path = dir.join(ADAPTER_WEIGHTS);
    let tensors = load_safetensors_bytes(weights, &w_path)?;
    let naming = enc.naming();
    let mut pairs: BTreeMap<(usize, LoraTarget), (Option<Tensor>, Option<Tensor>)> =
        BTreeMap::new();
    let mut extra = BTreeMap::new();
    for (key, t) in tensors {
        let k = key.strip_prefix(KEY_ROOT).unwrap_or(&key);
        let k = k.strip_prefix(naming.model_prefix()).unwrap_or(k);
        let (module, which) = if let Some(m) = k.strip_suffix(".lora_A.weight") {
            (m, 'A')
        } else if let Some(m) = k.strip_suffix(".lora_B.weight") {
            (m, 'B')
        } else {
            if k.contains("lora_") {
                return Err(bad(
                    &w_path,
                    format!("tensor {key}: unsupported LoRA tensor"),
                ));
            }
            extra.insert(k.to_string(), t);
            continue;
        };
        let (layer, target) = naming.parse_linear(module).ok_or_else(|| {
            bad(
                &w_path,
                format!("tensor {key}: {module:?} is not a linear layer of this model"),
            )
        })?;
        if layer >= enc.config().num_hidden_layers {
            return Err(bad(
                &w_path,
                format!("tensor {key}: layer {layer} does not exist"),
            ));
        }
        let e = pairs.entry((layer, target)).or_default();
        if which == 'A' {
            e.0 = Some(t);
        } else {
            e.1 = Some(t);
        }
    }
    if pairs.is_empty() {
        return Err(bad(&w_path, "no LoRA tensors found".into()));
    }
    let mut targets = BTreeSet::new();
    let mut layers = BTreeSet::new();
    let scale = if use_rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    };
    let mut built = Vec::new();
    for ((layer, target), (a, b)) in pairs {
        let path = naming.linear(layer, target);
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(bad(
                    &w_path,
                    format!("{path}: lora_A and lora_B must both be present"),
                ))
            }
        };
        let Some((out, inp)) = enc
            .linears()
            .into_iter()
            .find_map(|(id, l)| (id == (layer, target)).then(|| l.dims()))
        else {
            return Err(bad(
                &w_path,
                format!("{path}: this model has no such layer"),
            ));
        };
        if a.dims() != [rank, inp] || b.dims() != [out, rank] {
            return Err(bad(
                &w_path,
                format!(
                    "{path}: lora_A {:?} / lora_B {:?} do not fit r={rank} on a [{out}, {inp}] layer",
                    a.dims(),
                    b.dims()
                ),
            ));
        }
        targets.insert(target);
        layers.insert(layer);
        built.push((
            layer,
            target,
            LoraPair {
                a: Param::new(&a)?,
                b: Param::new(&b)?,
                scale,
                dropout,
            },
        ));
    }
    let n_layers = enc.config().num_hidden_layers;
    let config = LoraConfig {
        rank,
        alpha,
        dropout,
        targets: targets.into_iter().collect(),
        layers: if layers.len() == n_layers {
            None
        } else {
            Some(layers.into_iter().collect())
        },
        use_rslora,
    };
    enc.register_group(group, config.clone())?;
    for (layer, target, pair) in built {
        enc.insert_lora_pair(group, layer, target, pair)?;
    }
    Ok(LoadedAdapter {
        config,
        task_type,
        extra,
        raw_config: raw,
    })
}
