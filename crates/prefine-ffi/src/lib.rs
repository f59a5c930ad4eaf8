//! The C ABI of the prefine on-device runtime: open a backbone (directory, export bundle or
//! bytes in memory), register adapters by name (directory or bytes), predict as JSON, embed.
//! `include/prefine.h` is generated from this file by cbindgen (a test keeps it in sync).
//!
//! Every function catches panics (none may unwind into C), checks its pointers and UTF-8, and
//! reports failures through a NULL / non-zero return plus [`prefine_last_error`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use prefine_runtime::zero_shot::{parse_name_list, ZeroShot, ZeroShotConfig};
use prefine_runtime::{report, AdapterFiles, Aggregation, BackboneFiles, Engine, Precision};

/// An opened backbone with its registered adapters (opaque to C).
pub struct PrefineEngine {
    engine: Engine,
}

/// One file of an in-memory adapter: its name (`adapter.json`, `labels.json`,
/// `head.safetensors`, `adapter_config.json`, `adapter_model.safetensors`) and bytes.
#[repr(C)]
pub struct PrefineFile {
    /// NUL-terminated file name.
    pub name: *const c_char,
    /// The file's bytes.
    pub data: *const u8,
    /// Number of bytes.
    pub len: usize,
}

/// Status: success.
pub const PREFINE_OK: i32 = 0;
/// Status: failure; see `prefine_last_error()`.
pub const PREFINE_ERROR: i32 = -1;

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_error(msg: impl Into<String>) {
    let mut m = msg.into().into_bytes();
    m.retain(|&b| b != 0);
    let c = CString::new(m).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(c));
}

/// Runs `f`, turning an error or a panic into `fallback` plus the thread's last error.
fn guard<T>(fallback: T, f: impl FnOnce() -> Result<T, String>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => {
            LAST_ERROR.with(|e| *e.borrow_mut() = None);
            v
        }
        Ok(Err(msg)) => {
            set_error(msg);
            fallback
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            set_error(format!("internal error (panic): {what}"));
            fallback
        }
    }
}

/// A borrowed C string as UTF-8; `what` names the argument in errors.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, String> {
    if p.is_null() {
        return Err(format!("{what} is NULL"));
    }
    // SAFETY: non-null, and the caller guarantees a NUL-terminated string alive for the call.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|e| format!("{what} is not valid UTF-8 ({e})"))
}

/// A borrowed byte buffer; `what` names the argument in errors.
///
/// # Safety
/// `p` is NULL (only with `len == 0`) or points to `len` readable bytes valid for the call.
unsafe fn bytes_arg<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], String> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(format!("{what} is NULL but its length is {len}"));
    }
    // SAFETY: non-null, and the caller guarantees `len` readable bytes alive for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// An array of `n` C strings as owned UTF-8 texts.
///
/// # Safety
/// `texts` is NULL (only with `n == 0`) or points to `n` pointers, each as for [`str_arg`].
unsafe fn texts_arg(texts: *const *const c_char, n: usize) -> Result<Vec<String>, String> {
    if n == 0 {
        return Err("no texts (n is 0)".into());
    }
    if texts.is_null() {
        return Err("texts is NULL".into());
    }
    // SAFETY: non-null, and the caller guarantees `n` readable pointers alive for the call.
    let ptrs = unsafe { std::slice::from_raw_parts(texts, n) };
    ptrs.iter()
        .enumerate()
        // SAFETY: each pointer is NULL or a NUL-terminated string (caller's contract).
        .map(|(i, &p)| unsafe { str_arg(p, &format!("texts[{i}]")) }.map(str::to_string))
        .collect()
}

/// The engine behind a handle.
///
/// # Safety
/// `e` is NULL or a handle from `prefine_engine_open*` not yet freed.
unsafe fn engine<'a>(e: *const PrefineEngine) -> Result<&'a Engine, String> {
    if e.is_null() {
        return Err("engine is NULL".into());
    }
    // SAFETY: non-null handle created by Box::into_raw and not freed (caller's contract).
    Ok(unsafe { &(*e).engine })
}

fn into_c_string(s: String) -> Result<*mut c_char, String> {
    CString::new(s)
        .map(CString::into_raw)
        .map_err(|e| format!("output holds a NUL byte ({e})"))
}

fn boxed(engine: Engine) -> *mut PrefineEngine {
    Box::into_raw(Box::new(PrefineEngine { engine }))
}

/// Opens a backbone from a directory: a Hugging Face model directory (`config.json`,
/// `tokenizer.json`, `model.safetensors`; f32 or quantised) or a `prefine export` bundle (its
/// adapters are registered under their bundle names). Returns NULL on failure.
///
/// # Safety
/// `dir` is a NUL-terminated path.
#[no_mangle]
pub unsafe extern "C" fn prefine_engine_open(dir: *const c_char) -> *mut PrefineEngine {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded caller contract.
        let dir = Path::new(unsafe { str_arg(dir, "dir") }?);
        let engine = if prefine_runtime::is_bundle(dir) {
            prefine_runtime::load_bundle(dir)
        } else {
            Engine::load(dir)
        }
        .map_err(|e| report(&e))?;
        Ok(boxed(engine))
    })
}

/// Opens a backbone from its three files held in memory (`config.json`, `tokenizer.json`,
/// `model.safetensors` f32 or quantised). The bytes are copied; the caller may free them after
/// the call. Returns NULL on failure.
///
/// # Safety
/// Each pointer addresses the given number of readable bytes.
#[no_mangle]
pub unsafe extern "C" fn prefine_engine_open_memory(
    config: *const u8,
    config_len: usize,
    tokenizer: *const u8,
    tokenizer_len: usize,
    weights: *const u8,
    weights_len: usize,
) -> *mut PrefineEngine {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded caller contract for the three buffers.
        let files = unsafe {
            BackboneFiles {
                origin: "<memory>".into(),
                config: bytes_arg(config, config_len, "config")?.to_vec(),
                tokenizer: bytes_arg(tokenizer, tokenizer_len, "tokenizer")?.to_vec(),
                weights: bytes_arg(weights, weights_len, "weights")?.to_vec(),
            }
        };
        let engine = Engine::from_memory(&files).map_err(|e| report(&e))?;
        Ok(boxed(engine))
    })
}

/// Converts the backbone's linear weights for inference: `"f32"` (packed once), `"bf16"` or
/// `"int8"`. Adapters stay registered. Returns 0, or -1 on failure.
///
/// # Safety
/// `engine` is a live handle; `precision` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn prefine_engine_set_precision(
    engine: *const PrefineEngine,
    precision: *const c_char,
) -> i32 {
    guard(PREFINE_ERROR, || {
        // SAFETY: forwarded caller contract.
        let (e, p) = unsafe { (self::engine(engine)?, str_arg(precision, "precision")?) };
        let p =
            Precision::parse(p).ok_or_else(|| format!("precision {p:?}: use f32, bf16 or int8"))?;
        e.prepare_inference(p).map_err(|e| report(&e))?;
        Ok(PREFINE_OK)
    })
}

/// Registers the adapter directory `dir` (a `prefine finetune` output or a PEFT adapter with
/// `labels.json`) under `name`. Returns 0, or -1 on failure.
///
/// # Safety
/// `engine` is a live handle; `name` and `dir` NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn prefine_adapter_register(
    engine: *const PrefineEngine,
    name: *const c_char,
    dir: *const c_char,
) -> i32 {
    guard(PREFINE_ERROR, || {
        // SAFETY: forwarded caller contract.
        let (e, name, dir) = unsafe {
            (
                self::engine(engine)?,
                str_arg(name, "name")?,
                str_arg(dir, "dir")?,
            )
        };
        e.register(name, Path::new(dir)).map_err(|e| report(&e))?;
        Ok(PREFINE_OK)
    })
}

/// Registers an adapter from `n` files held in memory under `name` (the bytes are copied).
/// Returns 0, or -1 on failure.
///
/// # Safety
/// `engine` is a live handle; `name` a NUL-terminated string; `files` points to `n` entries
/// whose names are NUL-terminated and whose data pointers address `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn prefine_adapter_register_memory(
    engine: *const PrefineEngine,
    name: *const c_char,
    files: *const PrefineFile,
    n: usize,
) -> i32 {
    guard(PREFINE_ERROR, || {
        // SAFETY: forwarded caller contract.
        let (e, name) = unsafe { (self::engine(engine)?, str_arg(name, "name")?) };
        if files.is_null() || n == 0 {
            return Err("files is NULL or empty".into());
        }
        // SAFETY: non-null, `n` entries (caller's contract).
        let entries = unsafe { std::slice::from_raw_parts(files, n) };
        let mut map = BTreeMap::new();
        for (i, f) in entries.iter().enumerate() {
            // SAFETY: each entry follows the caller's contract.
            let (fname, data) = unsafe {
                (
                    str_arg(f.name, &format!("files[{i}].name"))?,
                    bytes_arg(f.data, f.len, &format!("files[{i}].data"))?,
                )
            };
            map.insert(fname.to_string(), data.to_vec());
        }
        let files = AdapterFiles::from_memory(format!("<memory:{name}>"), map);
        e.register_files(name, &files).map_err(|e| report(&e))?;
        Ok(PREFINE_OK)
    })
}

/// Unregisters an adapter; calls already running with it finish normally. Returns 0, or -1
/// when no adapter has that name.
///
/// # Safety
/// `engine` is a live handle; `name` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn prefine_adapter_unregister(
    engine: *const PrefineEngine,
    name: *const c_char,
) -> i32 {
    guard(PREFINE_ERROR, || {
        // SAFETY: forwarded caller contract.
        let (e, name) = unsafe { (self::engine(engine)?, str_arg(name, "name")?) };
        e.unregister(name).map_err(|e| report(&e))?;
        Ok(PREFINE_OK)
    })
}

/// Predicts with adapter `adapter` for `n` texts; returns a JSON array with one object per text
/// in `prefine predict`'s shape (NER: `{"text", "entities": [{"start", "end", "type", "text",
/// "score"}]}` with character offsets; TC: `{"text", "label", "scores"}`), to be freed with
/// `prefine_string_free`. `aggregation` (NULL = `"first"`) is the NER aggregation strategy:
/// `none`, `simple`, `first`, `average` or `max`. Returns NULL on failure.
///
/// # Safety
/// `engine` is a live handle; `adapter`, `aggregation` (or NULL) NUL-terminated; `texts`
/// points to `n` NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn prefine_predict(
    engine: *const PrefineEngine,
    adapter: *const c_char,
    texts: *const *const c_char,
    n: usize,
    aggregation: *const c_char,
) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded caller contract.
        let (e, adapter, texts) = unsafe {
            (
                self::engine(engine)?,
                str_arg(adapter, "adapter")?,
                texts_arg(texts, n)?,
            )
        };
        let agg = if aggregation.is_null() {
            Aggregation::default()
        } else {
            // SAFETY: non-null NUL-terminated string (caller's contract).
            unsafe { str_arg(aggregation, "aggregation") }?.parse()?
        };
        let out = e
            .predict_with(adapter, &texts, agg)
            .map_err(|e| report(&e))?;
        into_c_string(serde_json::to_string(&out).map_err(|e| report(&e))?)
    })
}

/// The width of the vectors `prefine_embed` writes (the backbone's hidden size), or 0 when
/// `engine` is NULL.
///
/// # Safety
/// `engine` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn prefine_embedding_dim(engine: *const PrefineEngine) -> usize {
    // SAFETY: forwarded caller contract.
    guard(0, || Ok(unsafe { self::engine(engine) }?.embedding_dim()))
}

/// Sentence embeddings (mean pooling, L2-normalised, as sentence-transformers) of `n` texts,
/// written row by row into `out`, which holds `out_len` floats (at least
/// `n * prefine_embedding_dim(engine)`). `adapter` (or NULL) applies that adapter's LoRA group.
/// Returns 0, or -1 on failure (then `out` is left unspecified).
///
/// # Safety
/// `engine` is a live handle; `texts` points to `n` NUL-terminated strings; `adapter` is NULL
/// or NUL-terminated; `out` points to `out_len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn prefine_embed(
    engine: *const PrefineEngine,
    texts: *const *const c_char,
    n: usize,
    adapter: *const c_char,
    out: *mut f32,
    out_len: usize,
) -> i32 {
    guard(PREFINE_ERROR, || {
        // SAFETY: forwarded caller contract.
        let (e, texts) = unsafe { (self::engine(engine)?, texts_arg(texts, n)?) };
        let adapter = if adapter.is_null() {
            None
        } else {
            // SAFETY: non-null NUL-terminated string (caller's contract).
            Some(unsafe { str_arg(adapter, "adapter") }?)
        };
        let need = n * e.embedding_dim();
        if out.is_null() || out_len < need {
            return Err(format!(
                "out holds {out_len} floats, {need} needed ({n} texts x {})",
                e.embedding_dim()
            ));
        }
        let rows = e.embed(&texts, adapter).map_err(|e| report(&e))?;
        // SAFETY: `out` is non-null with at least `need` writable floats (checked above and
        // the caller's contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(out, need) };
        for (chunk, row) in dst.chunks_mut(e.embedding_dim()).zip(rows) {
            chunk.copy_from_slice(&row);
        }
        Ok(PREFINE_OK)
    })
}

/// The registered adapters as a JSON array of `{"name", "task", "mode", "labels", ...}`, to be
/// freed with `prefine_string_free`; NULL on failure.
///
/// # Safety
/// `engine` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn prefine_adapters(engine: *const PrefineEngine) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded caller contract.
        let e = unsafe { self::engine(engine) }?;
        into_c_string(serde_json::to_string(&e.adapters()).map_err(|e| report(&e))?)
    })
}

/// The message of this thread's last failure, or NULL if the last call succeeded. The pointer
/// stays valid until this thread's next prefine call; do not free it.
#[no_mangle]
pub extern "C" fn prefine_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ref().map_or(std::ptr::null(), |c| c.as_ptr()))
}

/// Frees a string returned by this library (NULL is ignored).
///
/// # Safety
/// `s` is NULL or a string returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn prefine_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from CString::into_raw in this library (caller's contract).
        drop(unsafe { CString::from_raw(s) });
    }
}

/// Frees an engine (NULL is ignored). No call on it may be running.
///
/// # Safety
/// `engine` is NULL or a handle from `prefine_engine_open*` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn prefine_engine_free(engine: *mut PrefineEngine) {
    if !engine.is_null() {
        // SAFETY: the handle came from Box::into_raw and is freed once (caller's contract).
        drop(unsafe { Box::from_raw(engine) });
    }
}

/// A zero-shot model (opaque to C): a `prefine pretrain` output, whose NER scorer and TC
/// adapter find entity types and classes named at call time, or a plain model directory (the
/// cosine baseline).
pub struct PrefineZeroShot {
    zero_shot: ZeroShot,
}

/// Opens a zero-shot model from a directory (see `PrefineZeroShot`). Returns NULL on failure.
///
/// # Safety
/// `dir` is a NUL-terminated path.
#[no_mangle]
pub unsafe extern "C" fn prefine_zero_shot_open(dir: *const c_char) -> *mut PrefineZeroShot {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded caller contract.
        let dir = Path::new(unsafe { str_arg(dir, "dir") }?);
        let zero_shot = ZeroShot::load(dir, ZeroShotConfig::default()).map_err(|e| report(&e))?;
        Ok(Box::into_raw(Box::new(PrefineZeroShot { zero_shot })))
    })
}

/// # Safety
/// `zs` is NULL or a live handle.
unsafe fn zero_shot<'a>(zs: *const PrefineZeroShot) -> Result<&'a ZeroShot, String> {
    if zs.is_null() {
        return Err("zero-shot model is NULL".into());
    }
    // SAFETY: non-null handle created by Box::into_raw and not freed (caller's contract).
    Ok(unsafe { &(*zs).zero_shot })
}

/// Zero-shot NER: the entities of the types named in `entity_types` (comma-separated, e.g.
/// `"person, organisation, book title"`), as JSON in the `prefine predict` shape. `threshold`
/// <= 0 (or NaN) takes the model's default. Returns NULL on failure; free the string with
/// `prefine_string_free`.
///
/// # Safety
/// `zs` is a live handle; `entity_types` is NUL-terminated; `texts` points to `n`
/// NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn prefine_zero_shot_ner(
    zs: *const PrefineZeroShot,
    texts: *const *const c_char,
    n: usize,
    entity_types: *const c_char,
    threshold: f32,
) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded caller contract.
        let (z, texts, types) = unsafe {
            (
                zero_shot(zs)?,
                texts_arg(texts, n)?,
                str_arg(entity_types, "entity_types")?,
            )
        };
        let threshold = (threshold > 0.0).then_some(threshold);
        let out = z
            .predict_ner(&texts, &parse_name_list(types), threshold)
            .map_err(|e| report(&e))?;
        into_c_string(serde_json::to_string(&out).map_err(|e| report(&e))?)
    })
}

/// Zero-shot classification: softmax scores over the labels named in `labels`
/// (comma-separated), each embedded through `template` (e.g. `"This text is about {}."`; NULL:
/// the bare name), as JSON in the `prefine predict` shape. Returns NULL on failure; free the
/// string with `prefine_string_free`.
///
/// # Safety
/// `zs` is a live handle; `labels` and `template` (or NULL) are NUL-terminated; `texts` points
/// to `n` NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn prefine_zero_shot_classify(
    zs: *const PrefineZeroShot,
    texts: *const *const c_char,
    n: usize,
    labels: *const c_char,
    template: *const c_char,
) -> *mut c_char {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded caller contract.
        let (z, texts, labels) = unsafe {
            (
                zero_shot(zs)?,
                texts_arg(texts, n)?,
                str_arg(labels, "labels")?,
            )
        };
        let template = if template.is_null() {
            None
        } else {
            // SAFETY: non-null NUL-terminated string (caller's contract).
            Some(unsafe { str_arg(template, "template") }?)
        };
        let out = z
            .predict_tc(&texts, &parse_name_list(labels), template)
            .map_err(|e| report(&e))?;
        into_c_string(serde_json::to_string(&out).map_err(|e| report(&e))?)
    })
}

/// Frees a zero-shot model (NULL is ignored). No call on it may be running.
///
/// # Safety
/// `zs` is NULL or a handle from `prefine_zero_shot_open` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn prefine_zero_shot_free(zs: *mut PrefineZeroShot) {
    if !zs.is_null() {
        // SAFETY: the handle came from Box::into_raw and is freed once (caller's contract).
        drop(unsafe { Box::from_raw(zs) });
    }
}
