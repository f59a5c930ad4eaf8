//! `include/prefine.h` is what cbindgen generates from the crate today (run with
//! `PREFINE_BLESS=1` to rewrite it after changing the API).

use std::path::Path;

#[test]
fn header_matches_cbindgen() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen runs")
        .write(&mut generated);
    let path = crate_dir.join("include/prefine.h");
    if std::env::var_os("PREFINE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date: run PREFINE_BLESS=1 cargo test -p prefine-ffi --test header",
        path.display()
    );
}
