//! Alignment and windowing on the real default tokenizer.

use std::path::PathBuf;

use prefine_tokenize::{split_words, windows, TextTokenizer, TokenizeConfig, WindowConfig};

fn tokenizer() -> TextTokenizer {
    let dir = std::env::var_os("PREFINE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("tokenizer.json").exists(),
        "run scripts/setup.sh first ({})",
        dir.display()
    );
    TextTokenizer::from_model_dir(dir, TokenizeConfig::default()).unwrap()
}

#[test]
fn first_subword_carries_the_word() {
    let tok = tokenizer();
    let words = [
        "EU",
        "rejects",
        "German",
        "call",
        "to",
        "prefinetuning",
        "British",
        "lamb",
        ".",
    ];
    let w = windows(&tok, &words, WindowConfig::default()).unwrap();
    assert_eq!(w.len(), 1);
    let owned: Vec<usize> = w[0].owner_word.iter().flatten().copied().collect();
    assert_eq!(owned, (0..words.len()).collect::<Vec<_>>());
    assert_eq!(w[0].ids[0], 101);
    assert_eq!(*w[0].ids.last().unwrap(), 102);
    // "prefinetuning" splits into several subwords: only the first is owned.
    assert!(w[0].ids.len() > words.len() + 2);
}

#[test]
fn long_sentences_become_overlapping_windows_and_no_word_is_lost() {
    let tok = tokenizer();
    let words: Vec<String> = (0..300).map(|i| format!("word{i}")).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    let cfg = WindowConfig {
        max_length: 64,
        stride: 16,
    };
    let w = windows(&tok, &refs, cfg).unwrap();
    assert!(w.len() > 5);
    let mut seen = vec![0; words.len()];
    for win in &w {
        assert!(win.ids.len() <= 64);
        for o in win.owner_word.iter().flatten() {
            seen[*o] += 1;
        }
    }
    assert!(
        seen.iter().all(|&c| c == 1),
        "every word owned exactly once: {seen:?}"
    );
}

#[test]
fn words_without_subwords_get_unk() {
    let tok = tokenizer();
    let words = ["a", "\u{200b}", "b"];
    let w = windows(&tok, &words, WindowConfig::default()).unwrap();
    let owned: Vec<usize> = w[0].owner_word.iter().flatten().copied().collect();
    assert_eq!(owned, vec![0, 1, 2]);
}

#[test]
fn raw_text_is_split_with_offsets() {
    let text = "Obama visited Paris, France.";
    let words = split_words(text);
    let got: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
    assert_eq!(got, vec!["Obama", "visited", "Paris", ",", "France", "."]);
    for (w, (s, e)) in words {
        assert_eq!(&text[s..e], w);
    }
}
