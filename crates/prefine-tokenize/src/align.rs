//! Word ↔ subword alignment for token classification, with overlapping windows so that no word
//! is ever dropped: each word is *owned* by exactly one window (the one where it has the most
//! context), gets its label on its first subword there, and is predicted from there.

use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;

/// One model input built from a slice of a word sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct WordWindow {
    /// Subword ids with the special tokens (`[CLS] ... [SEP]`).
    pub ids: Vec<u32>,
    /// For each subword: `Some(word index)` when it is the first subword of a word this window
    /// owns (that position carries the word's label and prediction), else `None`.
    pub owner_word: Vec<Option<usize>>,
    /// For each subword: `Some(p)`, its position in the sentence's [`Subwords`], when it belongs
    /// to a word this window owns (every subword of the word, not only the first), else `None`.
    pub owned_subword: Vec<Option<usize>>,
}

/// The subwords of a pre-split sentence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subwords {
    /// Token ids (no special tokens).
    pub ids: Vec<u32>,
    /// The word each subword belongs to.
    pub word_of: Vec<usize>,
    /// Byte offsets of each subword within its word (the whole word for an `[UNK]` stand-in).
    pub offsets: Vec<(usize, usize)>,
}

/// Settings of the windowing.
#[derive(Debug, Clone, Copy)]
pub struct WindowConfig {
    /// Maximum subword tokens per window, special tokens included.
    pub max_length: usize,
    /// Subword tokens shared by consecutive windows.
    pub stride: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            max_length: 512,
            stride: 128,
        }
    }
}

/// Subwords of a pre-split sentence: ids and, per subword, its word index. Words that the
/// tokenizer turns into no subword at all (e.g. lone control characters) get `[UNK]`, so that
/// every word has at least one position.
pub fn subwords(tok: &TextTokenizer, words: &[&str]) -> Result<(Vec<u32>, Vec<usize>)> {
    let s = subwords_with_offsets(tok, words)?;
    Ok((s.ids, s.word_of))
}

/// [`subwords`] with each subword's byte offsets within its word.
pub fn subwords_with_offsets(tok: &TextTokenizer, words: &[&str]) -> Result<Subwords> {
    if words.is_empty() {
        return Err(Error::BadText {
            index: 0,
            reason: "no words".into(),
        });
    }
    let enc = tok
        .inner()
        .encode(words.to_vec(), false)
        .map_err(|e| Error::Encode(e.to_string()))?;
    let unk = tok
        .token_to_id("[UNK]")
        .or_else(|| tok.token_to_id("<unk>"))
        .unwrap_or(0);
    let mut ids = Vec::with_capacity(enc.get_ids().len());
    let mut word_of = Vec::with_capacity(enc.get_ids().len());
    let mut offsets = Vec::with_capacity(enc.get_ids().len());
    let mut next_word = 0usize;
    let whole = |w: usize| (0, words[w].len());
    for ((&id, w), &(s, e)) in enc
        .get_ids()
        .iter()
        .zip(enc.get_word_ids())
        .zip(enc.get_offsets())
    {
        let Some(w) = w.map(|w| w as usize) else {
            continue;
        };
        // Words skipped by the tokenizer get an [UNK] so they are not lost.
        while next_word < w {
            ids.push(unk);
            word_of.push(next_word);
            offsets.push(whole(next_word));
            next_word += 1;
        }
        ids.push(id);
        word_of.push(w);
        // Offsets of a pre-split input are relative to the word; clamp to be safe.
        let len = words.get(w).map_or(0, |x| x.len());
        let (s, e) = (s.min(len), e.min(len));
        offsets.push(if s < e { (s, e) } else { whole(w) });
        next_word = next_word.max(w + 1);
    }
    while next_word < words.len() {
        ids.push(unk);
        word_of.push(next_word);
        offsets.push(whole(next_word));
        next_word += 1;
    }
    Ok(Subwords {
        ids,
        word_of,
        offsets,
    })
}

/// Splits a sentence into windows of at most `cfg.max_length` subwords (special tokens
/// included) that overlap by `cfg.stride` subwords.
pub fn windows(tok: &TextTokenizer, words: &[&str], cfg: WindowConfig) -> Result<Vec<WordWindow>> {
    Ok(windows_and_subwords(tok, words, cfg)?.0)
}

/// [`windows`], and the sentence's subwords that [`WordWindow::owned_subword`] points into.
pub fn windows_and_subwords(
    tok: &TextTokenizer,
    words: &[&str],
    cfg: WindowConfig,
) -> Result<(Vec<WordWindow>, Subwords)> {
    let cls = tok.token_to_id("[CLS]").or_else(|| tok.token_to_id("<s>"));
    let sep = tok.token_to_id("[SEP]").or_else(|| tok.token_to_id("</s>"));
    let (cls, sep) = match (cls, sep) {
        (Some(c), Some(s)) => (c, s),
        _ => {
            return Err(Error::Encode(
                "the vocabulary has no [CLS]/[SEP] tokens".into(),
            ))
        }
    };
    if cfg.max_length < 3 {
        return Err(Error::Encode(format!(
            "max_length {} leaves no room for tokens",
            cfg.max_length
        )));
    }
    let budget = cfg.max_length - 2;
    if cfg.stride >= budget {
        return Err(Error::Encode(format!(
            "stride {} must be smaller than max_length - 2 = {budget}",
            cfg.stride
        )));
    }
    let sub = subwords_with_offsets(tok, words)?;
    let (ids, word_of) = (&sub.ids, &sub.word_of);
    let n = ids.len();
    // Window spans over subword positions.
    let mut spans = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + budget).min(n);
        spans.push((start, end));
        if end == n {
            break;
        }
        start = end - cfg.stride;
    }
    // Each word is owned by the window where its first subword is farthest from an edge.
    let first_pos: Vec<usize> = {
        let mut f = vec![usize::MAX; words.len()];
        for (p, &w) in word_of.iter().enumerate() {
            if f[w] == usize::MAX {
                f[w] = p;
            }
        }
        f
    };
    let mut owner = vec![0usize; words.len()];
    for (w, &p) in first_pos.iter().enumerate() {
        let mut best = (0usize, 0isize);
        for (i, &(s, e)) in spans.iter().enumerate() {
            if p >= s && p < e {
                let context = (p - s).min(e - 1 - p) as isize;
                if i == 0 || context > best.1 || !(p >= spans[best.0].0 && p < spans[best.0].1) {
                    best = (i, context);
                }
            }
        }
        owner[w] = best.0;
    }
    let wins = spans
        .iter()
        .enumerate()
        .map(|(i, &(s, e))| {
            let mut win_ids = Vec::with_capacity(e - s + 2);
            let mut own = Vec::with_capacity(e - s + 2);
            let mut owned_sub = Vec::with_capacity(e - s + 2);
            win_ids.push(cls);
            own.push(None);
            owned_sub.push(None);
            for p in s..e {
                win_ids.push(ids[p]);
                let w = word_of[p];
                own.push((first_pos[w] == p && owner[w] == i).then_some(w));
                owned_sub.push((owner[w] == i).then_some(p));
            }
            win_ids.push(sep);
            own.push(None);
            owned_sub.push(None);
            WordWindow {
                ids: win_ids,
                owner_word: own,
                owned_subword: owned_sub,
            }
        })
        .collect();
    Ok((wins, sub))
}

/// Splits raw text into words the way BERT's basic tokenizer does (whitespace, then every
/// punctuation character on its own), returning each word with its byte offsets.
pub fn split_words(text: &str) -> Vec<(&str, (usize, usize))> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, ch) in text.char_indices() {
        let punct = ch.is_ascii_punctuation()
            || (!ch.is_alphanumeric() && !ch.is_whitespace() && !ch.is_control());
        if ch.is_whitespace() || ch.is_control() || punct {
            if let Some(s) = start.take() {
                out.push((&text[s..i], (s, i)));
            }
            if punct {
                let e = i + ch.len_utf8();
                out.push((&text[i..e], (i, e)));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push((&text[s..], (s, text.len())));
    }
    out
}
