//! Writes two synthetic adapters for a backbone, for demos and cross-target checks (the C
//! example, the aarch64 and browser parity runs): `OUT/ner` (LoRA + token head) and `OUT/tc`
//! (LoRA + mean-pooled sequence head). Random weights: the predictions mean nothing, but every
//! adapter visibly changes the outputs.
//!
//! With a count N, writes `OUT/a0` .. `OUT/a{N-1}` instead, alternating NER and TC.
//!
//! `cargo run -p prefine-runtime --example synthetic_adapters -- MODEL_DIR OUT [N]`

use std::path::PathBuf;

use prefine_model::Encoder;
use prefine_runtime::synthetic::{write_synthetic_adapter, SyntheticSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, out, count) = match args.as_slice() {
        [m, o] => (m, o, None),
        [m, o, n] => (m, o, Some(n.parse::<u64>()?)),
        _ => return Err("usage: synthetic_adapters MODEL_DIR OUT [N]".into()),
    };
    let (model, out) = (PathBuf::from(model), PathBuf::from(out));
    let (base, _) = Encoder::from_model_dir(&model)?;
    if let Some(n) = count {
        for i in 0..n {
            let mut spec = if i % 2 == 0 {
                SyntheticSpec::ner(true, 100 + i)
            } else {
                SyntheticSpec::tc(true, 100 + i)
            };
            spec.max_length = 128;
            spec.stride = 32;
            write_synthetic_adapter(&base, &model, &out.join(format!("a{i}")), spec)?;
        }
        println!("wrote {n} adapters under {}", out.display());
        return Ok(());
    }
    let mut ner = SyntheticSpec::ner(true, 7);
    ner.max_length = 128;
    ner.stride = 32;
    let mut tc = SyntheticSpec::tc(true, 8);
    tc.max_length = 128;
    write_synthetic_adapter(&base, &model, &out.join("ner"), ner)?;
    write_synthetic_adapter(&base, &model, &out.join("tc"), tc)?;
    println!(
        "wrote {} and {}",
        out.join("ner").display(),
        out.join("tc").display()
    );
    Ok(())
}
