//! Dataset readers for prefine: CoNLL-style NER files (any of IOB2, IOB1, BIOES, BILOU,
//! returned as IOB2), JSON Lines and CSV/TSV text-classification files, stable label sets,
//! deterministic subsampling, and the data-root layout (`ner/<task>/`, `tc/<task>/`).
//!
//! Every reader validates its input and reports problems with the file name and the 1-based
//! line number.
//!
//! ```no_run
//! use prefine_data::{read_conll, read_jsonl, ConllOptions, DataRoot, LabelSet};
//! let root = DataRoot::resolve(None).unwrap();
//! let ner = root.ner_task("conll2003").unwrap();
//! let train = read_conll(&ner.train, &ConllOptions::default()).unwrap();
//! let tags = LabelSet::from_ner(&train.sentences);
//! let sst = root.tc_task("sst2").unwrap();
//! let dev = read_jsonl(&sst.dev).unwrap();
//! assert_eq!(dev.len(), 872);
//! # let _ = tags;
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conll;
mod error;
mod labels;
mod lines;
mod root;
mod sample;
mod tc;

pub use conll::{
    convert_to_iob2, parse_conll, read_conll, split_tag, ConllOptions, NerDataset, NerSentence,
    NerStats, TagScheme,
};
pub use error::{Error, Result};
pub use labels::LabelSet;
pub use root::{
    read_manifest, DataRoot, ManifestEntry, Split, TaskFamily, TaskPaths, DATA_ENV,
    DEFAULT_DATA_ROOT,
};
pub use sample::subsample;
pub use tc::{parse_delimited, parse_jsonl, read_delimited, read_jsonl, TcExample};
