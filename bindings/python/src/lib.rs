//! `prefine` for Python: a thin PyO3 layer over the Rust core, as the HF `tokenizers` package
//! is. Inference (`Backbone`) runs on `prefine-runtime`; training (`finetune`, `pretrain`) on
//! `prefine-train` with the TOML config keys as keyword arguments. Errors are Python exceptions
//! (`errors`); no panic crosses the boundary (PyO3 turns one into `PanicException`, the training
//! thread catches its own). The Python package (`python/prefine`) re-exports this module and
//! carries the type stubs.

mod backbone;
mod config;
mod data;
mod errors;
mod training;

use pyo3::prelude::*;

/// The native module `prefine._prefine`.
#[pymodule]
fn _prefine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<backbone::Backbone>()?;
    m.add_function(wrap_pyfunction!(training::finetune, m)?)?;
    m.add_function(wrap_pyfunction!(training::pretrain, m)?)?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
