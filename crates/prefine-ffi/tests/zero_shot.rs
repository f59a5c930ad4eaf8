//! The zero-shot calls of the C ABI, called as C would call them, on the default model (the
//! cosine baseline: any model directory works, a `prefine pretrain` output adds its scorer).

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;

use prefine_ffi::*;

fn model_dir() -> CString {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        d.join("model.safetensors").exists(),
        "run scripts/setup.sh first"
    );
    CString::new(d.to_str().unwrap()).unwrap()
}

/// Takes a string returned by the library (NULL: the last error, as a panic).
fn take(s: *mut c_char) -> serde_json::Value {
    if s.is_null() {
        // SAFETY: the library's last-error string lives until the next call on this thread.
        let err = unsafe { CStr::from_ptr(prefine_last_error()) };
        panic!("call failed: {}", err.to_string_lossy());
    }
    // SAFETY: a NUL-terminated string from the library, freed once below.
    let v = serde_json::from_str(unsafe { CStr::from_ptr(s) }.to_str().unwrap()).unwrap();
    // SAFETY: returned by the library, not yet freed.
    unsafe { prefine_string_free(s) };
    v
}

#[test]
fn zero_shot_ner_and_classification_through_the_c_abi() {
    let dir = model_dir();
    // SAFETY: a NUL-terminated path.
    let zs = unsafe { prefine_zero_shot_open(dir.as_ptr()) };
    assert!(!zs.is_null());
    let texts = [
        CString::new("Angela Merkel visited Paris last week.").unwrap(),
        CString::new("The film was a delight from start to finish.").unwrap(),
    ];
    let ptrs: Vec<*const c_char> = texts.iter().map(|t| t.as_ptr()).collect();
    let types = CString::new("person, city").unwrap();
    // SAFETY: a live handle, two NUL-terminated texts, NUL-terminated names.
    let ner = take(unsafe { prefine_zero_shot_ner(zs, ptrs.as_ptr(), 2, types.as_ptr(), 0.0) });
    assert_eq!(ner.as_array().unwrap().len(), 2, "{ner}");
    assert!(ner[0]["entities"].is_array(), "{ner}");
    let labels = CString::new("positive, negative").unwrap();
    let template = CString::new("This review is {}.").unwrap();
    // SAFETY: as above; the template is NUL-terminated.
    let tc = take(unsafe {
        prefine_zero_shot_classify(zs, ptrs.as_ptr(), 2, labels.as_ptr(), template.as_ptr())
    });
    let scores = tc[1]["scores"]
        .as_object()
        .unwrap_or_else(|| panic!("{tc}"));
    let total: f64 = scores.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-4, "{tc}");
    // Bad input is an error with a message, never a crash.
    let none = CString::new(" , ").unwrap();
    // SAFETY: as above.
    let bad = unsafe {
        prefine_zero_shot_classify(zs, ptrs.as_ptr(), 2, none.as_ptr(), std::ptr::null())
    };
    assert!(bad.is_null());
    // SAFETY: the last-error string is valid until the next call.
    let msg = unsafe { CStr::from_ptr(prefine_last_error()) }
        .to_string_lossy()
        .into_owned();
    assert!(!msg.is_empty());
    // SAFETY: a NULL handle is refused with an error.
    assert!(unsafe {
        prefine_zero_shot_ner(std::ptr::null(), ptrs.as_ptr(), 2, types.as_ptr(), 0.5)
    }
    .is_null());
    // SAFETY: freed once; NULL is ignored.
    unsafe {
        prefine_zero_shot_free(zs);
        prefine_zero_shot_free(std::ptr::null_mut());
    }
}
