//! `prefine-model`: a trainable encoder (BERT, MiniLM, DistilBERT, ELECTRA) on candle with PyTorch-exact outputs,
//! fused ops with correct gradients, named LoRA groups, task heads and Hugging Face / PEFT I/O.
//!
//! ```no_run
//! use prefine_model::{Encoder, EncoderInput, Forward, LoraConfig, seed_rng};
//! let (mut enc, _report) = Encoder::from_model_dir("models/all-MiniLM-L6-v2").unwrap();
//! let mut rng = seed_rng(0);
//! enc.add_lora_group("ner", &LoraConfig::default().last_layers(2, 6), &mut rng).unwrap();
//! let input = EncoderInput::from_vecs(&[vec![101, 7592, 2088, 102]], &[vec![0; 4]], &[vec![1; 4]]).unwrap();
//! let hidden = enc.forward(&input, Forward::eval(Some("ner"))).unwrap();
//! assert_eq!(hidden.dims(), &[1, 4, 384]);
//! ```

pub mod config;
pub mod encoder;
pub mod error;
pub mod heads;
pub mod input;
pub mod int8_table;
pub mod lora;
pub mod models;
pub mod ops;
pub mod params;
pub mod peft;
pub mod precision;
pub mod quant;
pub mod reader;
pub mod weights;
pub mod zero_shot;

/// The encoder under its former module path (`prefine_model::bert::Pooler`).
pub mod bert {
    pub use crate::encoder::{Encoder, EncoderInput, Forward, LoadReport, Pooler};
}

pub use config::{EncoderConfig, ModelType};
pub use encoder::{Encoder, EncoderInput, Forward, LoadReport, Pooler};
pub use error::{Error, Result};
pub use heads::{Classifier, Pooling, SequenceClassificationHead, TokenClassificationHead};
pub use int8_table::Int8Table;
pub use lora::{LoraConfig, LoraTarget};
pub use params::{seed_rng, Param, SeedRng};
pub use precision::Precision;
pub use quant::QuantizedLinear;
