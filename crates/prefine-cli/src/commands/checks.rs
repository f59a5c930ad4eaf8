//! Checks shared by the subcommands that run before any data or model is read: a usable output
//! directory, config errors that name their file, a tokenizer that fits the model.

use std::path::Path;

use anyhow::{Context, Result};

/// Makes sure `out` can hold results before any data or model is read: creates it and writes
/// (then removes) a probe file. Nothing already in `out` is touched.
pub fn check_output_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("output directory {}: cannot create it", out.display()))?;
    let probe = out.join(format!(".prefine-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("output directory {}: not writable", out.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Adds the config file's name to a configuration error that does not already name it.
pub fn in_config_file(e: impl Into<anyhow::Error>, file: &Path, with_flags: bool) -> anyhow::Error {
    let e = e.into();
    let shown = file.display().to_string();
    if format!("{e:#}").contains(&shown) {
        e
    } else if with_flags {
        e.context(format!("{shown} (with the command-line flags applied)"))
    } else {
        e.context(shown)
    }
}

/// Checks that every id of the model directory's `tokenizer.json` has a row in the embedding
/// table (`vocab_size` of `config.json`); otherwise the first such token would only fail deep in
/// a forward pass. Directories whose files do not load are left to the loaders to report.
pub fn check_tokenizer_fits_model(model: &Path) -> Result<()> {
    let Ok(cfg) = prefine_model::EncoderConfig::from_model_dir(model) else {
        return Ok(());
    };
    let Ok(tok) = prefine_tokenize::TextTokenizer::from_model_dir(model, Default::default()) else {
        return Ok(());
    };
    let n = tok.inner().get_vocab_size(true);
    if n > cfg.vocab_size {
        anyhow::bail!(
            "{} has {n} tokens but {} says vocab_size = {}: the tokenizer does not belong to this model",
            model.join("tokenizer.json").display(),
            model.join("config.json").display(),
            cfg.vocab_size
        );
    }
    Ok(())
}
