//! The prefine on-device runtime as WebAssembly: one backbone loaded from fetched bytes, any
//! number of adapters registered and unregistered by name, NER and classification predictions
//! with the JSON shapes of `prefine predict`, and sentence embeddings. Built with
//! `scripts/build-web.sh` (wasm-bindgen, `--target web`); `web/` is the demo page.
//!
//! ```js
//! import init, { Prefine } from "./pkg/prefine_wasm.js";
//! await init();
//! const engine = new Prefine(configBytes, tokenizerBytes, weightBytes);
//! engine.registerAdapter("conll", { "adapter.json": ..., "labels.json": ..., "head.safetensors": ... });
//! const out = engine.predict("conll", ["Barack Obama visited Paris."]);
//! ```
//!
//! Every method checks what JavaScript hands in (strings that are not strings or hold lone
//! surrogates, byte buffers that are not `Uint8Array`s) and throws an `Error` naming the field;
//! no Rust panic is expected, and one would be reported on the console before the instance
//! traps.

use std::collections::BTreeMap;

use js_sys::{Array, Float32Array, JsString, Object, Uint8Array};
use prefine_runtime::{AdapterFiles, Aggregation, BackboneFiles, Engine, Precision};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** An adapter's files by name: `adapter.json`, `labels.json`, `head.safetensors`, and for a
 * LoRA adapter `adapter_config.json` + `adapter_model.safetensors`. */
export type AdapterFileMap = Record<string, Uint8Array>;
/** One entity of an NER prediction. `start`/`end` (end exclusive) count Unicode code points,
 * as `prefine predict` does, not UTF-16 code units: slice with `Array.from(text)`. */
export interface PredictedEntity { start: number; end: number; type: string; text: string; score: number; }
/** What `predict` returns per text: `entities` for an NER adapter, `label` + `scores` for a
 * classification adapter (the JSON lines of `prefine predict`). */
export interface TextPrediction {
  text: string;
  entities?: PredictedEntity[];
  label?: string;
  scores?: Record<string, number>;
  /** A classification text cut to the adapter's `max_length`. */
  truncated?: boolean;
}
/** A registered adapter (`GET /v1/adapters` of `prefine serve`). */
export interface AdapterInfo {
  name: string; task: "ner" | "tc"; mode: string; has_lora: boolean; labels: string[];
  max_length: number; stride: number; path: string; lora_parameters: number;
}
"#;

#[wasm_bindgen]
extern "C" {
    /// A record of adapter files (see `AdapterFileMap`).
    #[wasm_bindgen(typescript_type = "AdapterFileMap")]
    pub type AdapterFileMap;
    /// The texts of a call.
    #[wasm_bindgen(typescript_type = "string[]")]
    pub type TextArray;
    /// `predict`'s result.
    #[wasm_bindgen(typescript_type = "TextPrediction[]")]
    pub type TextPredictionArray;
    /// `adapters`' result.
    #[wasm_bindgen(typescript_type = "AdapterInfo[]")]
    pub type AdapterInfoArray;
    /// `registerAdapter`'s result.
    #[wasm_bindgen(typescript_type = "AdapterInfo")]
    pub type AdapterInfoValue;

    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str);
}

/// Reports a Rust panic on the browser console (the instance traps right after).
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| console_error(&format!("prefine: {info}"))));
}

/// The kernel family the module runs (`simd128` in every current browser).
#[wasm_bindgen(js_name = kernelFamily)]
pub fn kernel_family() -> String {
    prefine_kernels::cpu::isa().name().to_string()
}

/// One backbone with its registered adapters.
#[wasm_bindgen]
pub struct Prefine {
    engine: Engine,
}

#[wasm_bindgen]
impl Prefine {
    /// Loads a backbone from the bytes of its `config.json`, `tokenizer.json` and
    /// `model.safetensors` (f32, or int8/bf16 as `prefine export --quantize` writes it).
    #[wasm_bindgen(constructor)]
    pub fn new(config: &[u8], tokenizer: &[u8], weights: &[u8]) -> Result<Prefine, JsError> {
        let files = BackboneFiles {
            origin: "backbone".into(),
            config: config.to_vec(),
            tokenizer: tokenizer.to_vec(),
            weights: weights.to_vec(),
        };
        let engine = Engine::from_memory(&files).map_err(js_error)?;
        Ok(Prefine { engine })
    }

    /// Switches the backbone's inference precision (`"f32"`, `"bf16"` or `"int8"`): f32
    /// weights are quantised once; adapters stay registered.
    #[wasm_bindgen(js_name = setPrecision)]
    pub fn set_precision(&self, precision: &str) -> Result<(), JsError> {
        let p = Precision::parse(precision).ok_or_else(|| {
            JsError::new(&format!(
                "precision {precision:?}: use \"f32\", \"bf16\" or \"int8\""
            ))
        })?;
        self.engine.prepare_inference(p).map_err(js_error)
    }

    /// The backbone's inference precision.
    #[wasm_bindgen(getter)]
    pub fn precision(&self) -> String {
        precision_name(self.engine.precision()).to_string()
    }

    /// The width of `embed`'s vectors.
    #[wasm_bindgen(getter, js_name = embeddingDim)]
    pub fn embedding_dim(&self) -> usize {
        self.engine.embedding_dim()
    }

    /// Registers an adapter from its files (a `prefine finetune` output, a PEFT adapter with
    /// `labels.json`, or a bundle's `adapters/NAME/`) under `name`; returns its description.
    #[wasm_bindgen(js_name = registerAdapter)]
    pub fn register_adapter(
        &self,
        name: &str,
        files: &AdapterFileMap,
    ) -> Result<AdapterInfoValue, JsError> {
        let files = adapter_files(name, files)?;
        let info = self.engine.register_files(name, &files).map_err(js_error)?;
        Ok(to_js(&info)?.unchecked_into())
    }

    /// Removes a registered adapter.
    #[wasm_bindgen(js_name = unregisterAdapter)]
    pub fn unregister_adapter(&self, name: &str) -> Result<(), JsError> {
        self.engine.unregister(name).map_err(js_error)
    }

    /// The registered adapters.
    pub fn adapters(&self) -> Result<AdapterInfoArray, JsError> {
        Ok(to_js(&self.engine.adapters())?.unchecked_into())
    }

    /// Predictions of adapter `adapter` for `texts`: NER entities as character spans (with the
    /// transformers pipeline's `aggregation`: `none`, `simple`, `first` (default), `average`,
    /// `max`), or classification scores.
    pub fn predict(
        &self,
        adapter: &str,
        texts: &TextArray,
        aggregation: Option<String>,
    ) -> Result<TextPredictionArray, JsError> {
        let texts = strings(texts, "texts")?;
        let aggregation = match aggregation.as_deref() {
            None => Aggregation::default(),
            Some(a) => a.parse::<Aggregation>().map_err(|e| JsError::new(&e))?,
        };
        let out = self
            .engine
            .predict_with(adapter, &texts, aggregation)
            .map_err(js_error)?;
        Ok(to_js(&out)?.unchecked_into())
    }

    /// The backbone's last hidden states for `batch x seq` token ids (row-major, every
    /// position attended): `batch x seq x hidden` values, like an ONNX export of the backbone.
    #[wasm_bindgen(js_name = hiddenStates)]
    pub fn hidden_states(
        &self,
        input_ids: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<Float32Array, JsError> {
        let h = self
            .engine
            .hidden_states(input_ids, batch, seq)
            .map_err(js_error)?;
        Ok(Float32Array::from(h.as_slice()))
    }

    /// Sentence embeddings of `texts` (mean pooling, L2-normalised), row-major:
    /// `texts.length x embeddingDim` values; with `adapter`, that adapter's LoRA group is on.
    pub fn embed(
        &self,
        texts: &TextArray,
        adapter: Option<String>,
    ) -> Result<Float32Array, JsError> {
        let texts = strings(texts, "texts")?;
        let rows = self
            .engine
            .embed(&texts, adapter.as_deref())
            .map_err(js_error)?;
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        Ok(Float32Array::from(flat.as_slice()))
    }
}

fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::Bf16 => "bf16",
        Precision::Int8 => "int8",
    }
}

fn js_error(e: prefine_runtime::Error) -> JsError {
    JsError::new(&prefine_runtime::report(&e))
}

/// A Rust value as a plain JS value (through JSON: the exact shapes `prefine predict` prints).
fn to_js<T: serde::Serialize + ?Sized>(value: &T) -> Result<JsValue, JsError> {
    let json = serde_json::to_string(value).map_err(|e| JsError::new(&e.to_string()))?;
    js_sys::JSON::parse(&json).map_err(|_| JsError::new("internal error: JSON.parse failed"))
}

/// The strings of a JS array, refusing non-strings and lone surrogates (which a conversion to
/// UTF-8 would silently replace).
fn strings(value: &JsValue, field: &str) -> Result<Vec<String>, JsError> {
    if !Array::is_array(value) {
        return Err(JsError::new(&format!(
            "{field}: expected an array of strings"
        )));
    }
    let array: &Array = value.unchecked_ref();
    let mut out = Vec::with_capacity(array.length() as usize);
    for (i, v) in array.iter().enumerate() {
        let Some(s) = v.dyn_ref::<JsString>() else {
            return Err(JsError::new(&format!("{field}[{i}]: expected a string")));
        };
        if !s.is_valid_utf16() {
            return Err(JsError::new(&format!(
                "{field}[{i}]: not valid UTF-16 (a lone surrogate)"
            )));
        }
        out.push(String::from(s));
    }
    Ok(out)
}

/// An adapter's files from a `{name: Uint8Array}` record.
fn adapter_files(name: &str, files: &JsValue) -> Result<AdapterFiles, JsError> {
    if !files.is_object() {
        return Err(JsError::new(
            "files: expected an object of file name -> Uint8Array",
        ));
    }
    let mut map = BTreeMap::new();
    for entry in Object::entries(files.unchecked_ref()).iter() {
        let pair: Array = entry.unchecked_into();
        let key = pair
            .get(0)
            .as_string()
            .ok_or_else(|| JsError::new("files: a key is not a string"))?;
        let bytes = pair.get(1);
        let Some(bytes) = bytes.dyn_ref::<Uint8Array>() else {
            return Err(JsError::new(&format!(
                "files[{key:?}]: expected a Uint8Array"
            )));
        };
        map.insert(key, bytes.to_vec());
    }
    Ok(AdapterFiles::from_memory(format!("adapter {name}"), map))
}
