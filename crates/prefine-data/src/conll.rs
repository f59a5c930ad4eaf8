//! CoNLL-style NER files: one token per line (`token<TAB>tag`, or several space- or
//! TAB-separated columns with the token first and the tag last), blank lines between sentences.
//!
//! Whatever the scheme on disk, tags are returned in IOB2 (BIO).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::lines::{elide, is_blank, lines, read_bytes};

/// How many `file:line` locations of suspicious tag transitions a warning lists.
const MAX_REPORTED_LOCATIONS: usize = 5;

/// The tagging scheme of an NER file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagScheme {
    /// IOB2 / BIO: an entity starts with `B-X` and continues with `I-X`.
    #[default]
    Iob2,
    /// IOB1: entity tokens are `I-X`; `B-X` only starts an entity that directly follows another
    /// entity of the same type.
    Iob1,
    /// BIOES / IOBES: `B-X` begin, `I-X` inside, `E-X` end, `S-X` single-token entity.
    Bioes,
    /// BILOU: `B-X` begin, `I-X` inside, `L-X` last, `U-X` unit (single-token entity).
    Bilou,
    /// Detect the scheme from the file's tags: `E-`/`S-` mean BIOES, `L-`/`U-` mean BILOU;
    /// otherwise IOB1 when no entity begins with `B-` but some begin with `I-`, else IOB2.
    Auto,
}

impl TagScheme {
    /// The prefixes (besides `O`) this scheme allows.
    fn allowed_prefixes(self) -> &'static [char] {
        match self {
            TagScheme::Iob2 | TagScheme::Iob1 => &['B', 'I'],
            TagScheme::Bioes => &['B', 'I', 'E', 'S'],
            TagScheme::Bilou => &['B', 'I', 'L', 'U'],
            TagScheme::Auto => &['B', 'I', 'E', 'S', 'L', 'U'],
        }
    }

    /// Human-readable list of the tag shapes this scheme accepts.
    fn expected(self) -> &'static str {
        match self {
            TagScheme::Iob2 | TagScheme::Iob1 => "O, B-X or I-X",
            TagScheme::Bioes => "O, B-X, I-X, E-X or S-X",
            TagScheme::Bilou => "O, B-X, I-X, L-X or U-X",
            TagScheme::Auto => "O, B-X, I-X, E-X, S-X, L-X or U-X",
        }
    }
}

impl fmt::Display for TagScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TagScheme::Iob2 => "IOB2",
            TagScheme::Iob1 => "IOB1",
            TagScheme::Bioes => "BIOES",
            TagScheme::Bilou => "BILOU",
            TagScheme::Auto => "auto",
        })
    }
}

impl FromStr for TagScheme {
    type Err = Error;

    /// Parses `iob2`/`bio`, `iob1`/`iob`, `bioes`/`iobes`, `bilou` or `auto` (any case).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "iob2" | "bio" => Ok(TagScheme::Iob2),
            "iob1" | "iob" => Ok(TagScheme::Iob1),
            "bioes" | "iobes" => Ok(TagScheme::Bioes),
            "bilou" => Ok(TagScheme::Bilou),
            "auto" => Ok(TagScheme::Auto),
            other => Err(Error::InvalidArgument(format!(
                "unknown tag scheme '{other}' (expected iob2, bio, iob1, bioes, iobes, bilou or auto)"
            ))),
        }
    }
}

/// Options for [`read_conll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConllOptions {
    /// The scheme of the file on disk (default IOB2). Tags are always returned as IOB2.
    pub scheme: TagScheme,
    /// Convert an `I-X` that follows `O`, a different type or the sentence start into `B-X`.
    /// When false (the default) such tags are kept, counted and reported with a warning.
    pub repair: bool,
}

/// One sentence of an NER dataset, tags in IOB2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NerSentence {
    /// The words of the sentence.
    pub tokens: Vec<String>,
    /// One IOB2 tag per word (`O`, `B-X` or `I-X`).
    pub tags: Vec<String>,
}

/// Counts gathered while reading an NER file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NerStats {
    /// Number of sentences.
    pub sentences: usize,
    /// Number of tokens over all sentences.
    pub tokens: usize,
    /// Number of entity mentions (chunks starting with `B-X`, plus unrepaired stray `I-X` starts).
    pub entities: usize,
    /// The scheme the file was read as (the detected one for [`TagScheme::Auto`]).
    pub scheme: TagScheme,
    /// Number of `I-X` tags (after conversion to IOB2) that follow `O`, another type or the
    /// sentence start.
    pub invalid_transitions: usize,
    /// How many of those were converted to `B-X` (all of them with `repair`, else 0).
    pub repaired: usize,
    /// The entity types seen (tag suffixes), sorted.
    pub entity_types: BTreeSet<String>,
}

/// The contents of one NER file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NerDataset {
    /// The file it was read from.
    pub path: PathBuf,
    /// Its sentences, in file order, tags in IOB2.
    pub sentences: Vec<NerSentence>,
    /// Counts gathered while reading.
    pub stats: NerStats,
}

impl NerDataset {
    /// Number of sentences.
    pub fn len(&self) -> usize {
        self.sentences.len()
    }

    /// True when there are no sentences (never the case for a dataset returned by [`read_conll`]).
    pub fn is_empty(&self) -> bool {
        self.sentences.is_empty()
    }

    /// All tags of all sentences, in order.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.sentences
            .iter()
            .flat_map(|s| s.tags.iter().map(String::as_str))
    }
}

/// Splits a tag into its prefix and entity type: `O` gives `('O', "")`, `B-PER` gives
/// `('B', "PER")`. Returns `None` for anything else (unknown prefix, missing type, lowercase).
pub fn split_tag(tag: &str) -> Option<(char, &str)> {
    if tag == "O" {
        return Some(('O', ""));
    }
    let (prefix, ty) = tag.split_once('-')?;
    let mut chars = prefix.chars();
    let c = chars.next()?;
    if chars.next().is_some() || ty.is_empty() || !matches!(c, 'B' | 'I' | 'E' | 'S' | 'L' | 'U') {
        return None;
    }
    Some((c, ty))
}

/// Reads a CoNLL-style NER file and returns its sentences with IOB2 tags.
///
/// Accepted lines: `token<TAB>tag`, or several TAB- or space-separated columns (CoNLL-2003's
/// `token POS chunk tag`): the first column is the token, the last one the tag. Blank lines end a
/// sentence, `-DOCSTART-` lines are skipped, trailing whitespace and CRLF line ends are tolerated.
///
/// Errors name the file and the 1-based line: a token without a tag, a tag the scheme does not
/// allow, bytes that are not UTF-8; an empty file or one without sentences is an error too.
/// An `I-X` after `O` or another type is kept (and reported with `tracing::warn!`) unless
/// `opts.repair` is set, in which case it becomes `B-X`.
pub fn read_conll(path: impl AsRef<Path>, opts: &ConllOptions) -> Result<NerDataset> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    parse_conll(&bytes, path, opts)
}

/// Like [`read_conll`], for file contents already in memory; `path` is only used in messages.
pub fn parse_conll(bytes: &[u8], path: &Path, opts: &ConllOptions) -> Result<NerDataset> {
    if is_blank(bytes) {
        return Err(Error::file(path, "empty file"));
    }
    let mut raw = read_raw_sentences(bytes, path, opts.scheme)?;
    if raw.is_empty() {
        return Err(Error::file(
            path,
            "no sentences (only blank or -DOCSTART- lines)",
        ));
    }
    let scheme = match opts.scheme {
        TagScheme::Auto => detect_scheme(&raw, path)?,
        s => s,
    };

    let mut stats = NerStats {
        scheme,
        ..NerStats::default()
    };
    let mut locations = Vec::new();
    for sentence in &mut raw {
        to_iob2(&mut sentence.tags, scheme);
        for i in 0..sentence.tags.len() {
            let Some((prefix, ty)) = split_tag(&sentence.tags[i]) else {
                continue;
            };
            if prefix == 'O' {
                continue;
            }
            stats.entity_types.insert(ty.to_string());
            if prefix == 'B' {
                stats.entities += 1;
                continue;
            }
            // prefix is 'I' after conversion.
            let continues = i > 0
                && matches!(split_tag(&sentence.tags[i - 1]), Some((p, t)) if p != 'O' && t == ty);
            if !continues {
                stats.invalid_transitions += 1;
                if locations.len() < MAX_REPORTED_LOCATIONS {
                    locations.push(format!("{}:{}", path.display(), sentence.lines[i]));
                }
                if opts.repair {
                    sentence.tags[i] = format!("B-{ty}");
                    stats.repaired += 1;
                    stats.entities += 1;
                } else {
                    stats.entities += 1;
                }
            }
        }
    }
    if stats.invalid_transitions > 0 {
        let more = if stats.invalid_transitions > locations.len() {
            ", ..."
        } else {
            ""
        };
        if opts.repair {
            tracing::info!(
                "{}: converted {} I- tag(s) that followed O or another type to B- (at {}{more})",
                path.display(),
                stats.invalid_transitions,
                locations.join(", ")
            );
        } else {
            tracing::warn!(
                "{}: {} I- tag(s) follow O or another type (at {}{more}); kept as is (set repair to convert them to B-)",
                path.display(),
                stats.invalid_transitions,
                locations.join(", ")
            );
        }
    }

    let sentences: Vec<NerSentence> = raw
        .into_iter()
        .map(|s| NerSentence {
            tokens: s.tokens,
            tags: s.tags,
        })
        .collect();
    stats.sentences = sentences.len();
    stats.tokens = sentences.iter().map(|s| s.tokens.len()).sum();
    Ok(NerDataset {
        path: path.to_path_buf(),
        sentences,
        stats,
    })
}

/// A sentence as read, before scheme conversion, with the line number of each token.
#[derive(Default)]
struct RawSentence {
    tokens: Vec<String>,
    tags: Vec<String>,
    lines: Vec<usize>,
}

/// Splits the file into sentences, checking every tag against `scheme`'s allowed prefixes.
fn read_raw_sentences(bytes: &[u8], path: &Path, scheme: TagScheme) -> Result<Vec<RawSentence>> {
    let mut sentences = Vec::new();
    let mut current = RawSentence::default();
    let flush = |current: &mut RawSentence, sentences: &mut Vec<RawSentence>| {
        if !current.tokens.is_empty() {
            sentences.push(std::mem::take(current));
        }
    };
    for item in lines(bytes, path) {
        let (line_no, line) = item?;
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() {
            flush(&mut current, &mut sentences);
            continue;
        }
        let fields: Vec<&str> = if line.contains('\t') {
            line.split('\t')
                .map(|f| f.trim_matches(' '))
                .filter(|f| !f.is_empty())
                .collect()
        } else {
            line.split(' ').filter(|f| !f.is_empty()).collect()
        };
        if fields[0] == "-DOCSTART-" {
            flush(&mut current, &mut sentences);
            continue;
        }
        if fields.len() < 2 {
            return Err(Error::parse(
                path,
                line_no,
                format!(
                    "token '{}' has no tag (expected 'token<TAB>tag' or space-separated columns ending with the tag)",
                    elide(fields[0])
                ),
            ));
        }
        let tag = fields[fields.len() - 1];
        let valid = match split_tag(tag) {
            Some(('O', _)) => true,
            Some((p, _)) => scheme.allowed_prefixes().contains(&p),
            None => false,
        };
        if !valid {
            return Err(Error::parse(
                path,
                line_no,
                format!(
                    "invalid tag '{}' for scheme {scheme} (expected {})",
                    elide(tag),
                    scheme.expected()
                ),
            ));
        }
        current.tokens.push(fields[0].to_string());
        current.tags.push(tag.to_string());
        current.lines.push(line_no);
    }
    flush(&mut current, &mut sentences);
    Ok(sentences)
}

/// Guesses the scheme of already-validated raw sentences (see [`TagScheme::Auto`]).
fn detect_scheme(sentences: &[RawSentence], path: &Path) -> Result<TagScheme> {
    let mut first_es: Option<usize> = None;
    let mut first_lu: Option<usize> = None;
    let mut b_starts = 0usize;
    let mut i_starts = 0usize;
    for s in sentences {
        let mut prev: Option<(char, &str)> = None;
        for (tag, &line) in s.tags.iter().zip(&s.lines) {
            let Some((p, ty)) = split_tag(tag) else {
                continue;
            };
            match p {
                'E' | 'S' => {
                    first_es.get_or_insert(line);
                }
                'L' | 'U' => {
                    first_lu.get_or_insert(line);
                }
                _ => {}
            }
            let follows_same = matches!(prev, Some((pp, pt)) if pp != 'O' && pt == ty);
            if !follows_same {
                match p {
                    'B' => b_starts += 1,
                    'I' => i_starts += 1,
                    _ => {}
                }
            }
            prev = Some((p, ty));
        }
    }
    match (first_es, first_lu) {
        (Some(es), Some(lu)) => Err(Error::parse(
            path,
            es.max(lu),
            format!(
                "cannot detect the tag scheme: BIOES tags (E-/S-, first at line {es}) and BILOU tags (L-/U-, first at line {lu}) are mixed; pass an explicit scheme"
            ),
        )),
        (Some(_), None) => Ok(TagScheme::Bioes),
        (None, Some(_)) => Ok(TagScheme::Bilou),
        (None, None) if b_starts == 0 && i_starts > 0 => Ok(TagScheme::Iob1),
        (None, None) => Ok(TagScheme::Iob2),
    }
}

/// Converts one sentence's tags from `scheme` to IOB2 in place. Tags must have been validated.
fn to_iob2(tags: &mut [String], scheme: TagScheme) {
    match scheme {
        TagScheme::Iob2 | TagScheme::Auto => {}
        TagScheme::Iob1 => {
            let mut prev_type: Option<String> = None;
            for tag in tags.iter_mut() {
                let (p, ty) = match split_tag(tag) {
                    Some((p, ty)) if p != 'O' => (p, ty.to_string()),
                    _ => {
                        prev_type = None;
                        continue;
                    }
                };
                if p == 'I' && prev_type.as_deref() != Some(ty.as_str()) {
                    *tag = format!("B-{ty}");
                }
                prev_type = Some(ty);
            }
        }
        TagScheme::Bioes | TagScheme::Bilou => {
            for tag in tags.iter_mut() {
                if let Some((p, ty)) = split_tag(tag) {
                    let new = match p {
                        'S' | 'U' => Some(format!("B-{ty}")),
                        'E' | 'L' => Some(format!("I-{ty}")),
                        _ => None,
                    };
                    if let Some(new) = new {
                        *tag = new;
                    }
                }
            }
        }
    }
}

/// Converts a tag sequence from `scheme` to IOB2 (for [`TagScheme::Auto`], IOB2 is assumed).
///
/// Tags that are not valid in any scheme are left untouched; use [`read_conll`] for validation.
pub fn convert_to_iob2(tags: &[String], scheme: TagScheme) -> Vec<String> {
    let mut out = tags.to_vec();
    to_iob2(&mut out, scheme);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_tmp(name: &str, contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(contents).unwrap();
        (dir, path)
    }

    fn read(contents: &str, opts: ConllOptions) -> Result<NerDataset> {
        let (_dir, path) = write_tmp("sample.conll", contents.as_bytes());
        read_conll(&path, &opts)
    }

    fn err_of(name: &str, contents: &[u8], opts: ConllOptions) -> String {
        let (_dir, path) = write_tmp(name, contents);
        read_conll(&path, &opts).unwrap_err().to_string()
    }

    fn tags(ds: &NerDataset) -> Vec<Vec<&str>> {
        ds.sentences
            .iter()
            .map(|s| s.tags.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn reads_tab_separated_iob2() {
        let ds = read(
            "EU\tB-ORG\nrejects\tO\nGerman\tB-MISC\ncall\tO\n\nPeter\tB-PER\nBlackburn\tI-PER\n",
            ConllOptions::default(),
        )
        .unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.sentences[0].tokens, ["EU", "rejects", "German", "call"]);
        assert_eq!(tags(&ds)[1], ["B-PER", "I-PER"]);
        assert_eq!(ds.stats.sentences, 2);
        assert_eq!(ds.stats.tokens, 6);
        assert_eq!(ds.stats.entities, 3);
        assert_eq!(ds.stats.invalid_transitions, 0);
        assert_eq!(ds.stats.scheme, TagScheme::Iob2);
        let types: Vec<&str> = ds.stats.entity_types.iter().map(String::as_str).collect();
        assert_eq!(types, ["MISC", "ORG", "PER"]);
    }

    #[test]
    fn reads_multicolumn_space_separated_with_docstart_crlf_and_trailing_space() {
        let text = "-DOCSTART- -X- -X- O\r\n\r\nEU NNP B-NP B-ORG  \r\nrejects VBZ B-VP O\r\n\r\n\r\n-DOCSTART- -X- O O\r\nJapan NNP B-NP B-LOC\t \r\n";
        let ds = read(text, ConllOptions::default()).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.sentences[0].tokens, ["EU", "rejects"]);
        assert_eq!(tags(&ds), vec![vec!["B-ORG", "O"], vec!["B-LOC"]]);
    }

    #[test]
    fn docstart_separates_sentences_and_missing_final_newline_is_fine() {
        let ds = read("A\tO\n-DOCSTART-\tO\nB\tB-X", ConllOptions::default()).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(tags(&ds)[1], ["B-X"]);
    }

    #[test]
    fn tab_separated_tokens_may_contain_spaces_and_bom_is_stripped() {
        let ds = read("\u{feff}New York\tB-LOC\n", ConllOptions::default()).unwrap();
        assert_eq!(ds.sentences[0].tokens, ["New York"]);
    }

    #[test]
    fn iob1_to_iob2() {
        let text = "a\tI-PER\nb\tI-PER\nc\tB-PER\nd\tO\ne\tI-LOC\nf\tI-ORG\ng\tI-ORG\n";
        let opts = ConllOptions {
            scheme: TagScheme::Iob1,
            ..Default::default()
        };
        let ds = read(text, opts).unwrap();
        assert_eq!(
            tags(&ds)[0],
            ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"]
        );
        assert_eq!(ds.stats.invalid_transitions, 0);
        assert_eq!(ds.stats.entities, 4);
        // Auto detects IOB1 (no B- starts an entity after O).
        let auto = read(
            text,
            ConllOptions {
                scheme: TagScheme::Auto,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(auto.stats.scheme, TagScheme::Iob1);
        assert_eq!(tags(&auto), tags(&ds));
    }

    #[test]
    fn bioes_to_iob2() {
        let text = "a\tS-PER\nb\tB-ORG\nc\tI-ORG\nd\tE-ORG\ne\tO\nf\tB-LOC\ng\tE-LOC\nh\tS-LOC\n";
        let opts = ConllOptions {
            scheme: TagScheme::Bioes,
            ..Default::default()
        };
        let ds = read(text, opts).unwrap();
        let want = [
            "B-PER", "B-ORG", "I-ORG", "I-ORG", "O", "B-LOC", "I-LOC", "B-LOC",
        ];
        assert_eq!(tags(&ds)[0], want);
        assert_eq!(ds.stats.entities, 4);
        let auto = read(
            text,
            ConllOptions {
                scheme: TagScheme::Auto,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(auto.stats.scheme, TagScheme::Bioes);
        assert_eq!(tags(&auto)[0], want);
    }

    #[test]
    fn bilou_to_iob2() {
        let text = "a\tU-PER\nb\tB-ORG\nc\tI-ORG\nd\tL-ORG\ne\tO\nf\tB-LOC\ng\tL-LOC\nh\tU-LOC\n";
        let opts = ConllOptions {
            scheme: TagScheme::Bilou,
            ..Default::default()
        };
        let ds = read(text, opts).unwrap();
        let want = [
            "B-PER", "B-ORG", "I-ORG", "I-ORG", "O", "B-LOC", "I-LOC", "B-LOC",
        ];
        assert_eq!(tags(&ds)[0], want);
        let auto = read(
            text,
            ConllOptions {
                scheme: TagScheme::Auto,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(auto.stats.scheme, TagScheme::Bilou);
        assert_eq!(tags(&auto)[0], want);
    }

    #[test]
    fn auto_detects_iob2_when_entities_start_with_b() {
        let ds = read(
            "a\tB-PER\nb\tI-PER\nc\tO\nd\tI-LOC\n",
            ConllOptions {
                scheme: TagScheme::Auto,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(ds.stats.scheme, TagScheme::Iob2);
        assert_eq!(ds.stats.invalid_transitions, 1);
    }

    #[test]
    fn invalid_transitions_are_counted_or_repaired() {
        let text = "a\tO\nb\tI-PER\nc\tI-PER\nd\tI-LOC\n\ne\tI-ORG\nf\tB-ORG\ng\tI-ORG\n";
        let kept = read(text, ConllOptions::default()).unwrap();
        assert_eq!(kept.stats.invalid_transitions, 3);
        assert_eq!(kept.stats.repaired, 0);
        assert_eq!(kept.stats.entities, 4);
        assert_eq!(
            tags(&kept),
            vec![
                vec!["O", "I-PER", "I-PER", "I-LOC"],
                vec!["I-ORG", "B-ORG", "I-ORG"]
            ]
        );
        let repaired = read(
            text,
            ConllOptions {
                repair: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(repaired.stats.invalid_transitions, 3);
        assert_eq!(repaired.stats.repaired, 3);
        assert_eq!(repaired.stats.entities, 4);
        assert_eq!(
            tags(&repaired),
            vec![
                vec!["O", "B-PER", "I-PER", "B-LOC"],
                vec!["B-ORG", "B-ORG", "I-ORG"]
            ]
        );
    }

    #[test]
    fn repair_applies_after_bioes_conversion() {
        // O then E-X gives O I-X in IOB2: an invalid transition.
        let ds = read(
            "a\tO\nb\tE-PER\n",
            ConllOptions {
                scheme: TagScheme::Bioes,
                repair: true,
            },
        )
        .unwrap();
        assert_eq!(tags(&ds)[0], ["O", "B-PER"]);
        assert_eq!(ds.stats.repaired, 1);
    }

    #[test]
    fn token_without_tag_names_file_and_line() {
        let msg = err_of(
            "notag.conll",
            b"a\tO\n\nb\tB-PER\nlonely\nc\tO\n",
            ConllOptions::default(),
        );
        assert!(msg.contains("notag.conll:4:"), "{msg}");
        assert!(msg.contains("'lonely' has no tag"), "{msg}");
    }

    #[test]
    fn invalid_tags_name_file_and_line() {
        for (bad, line) in [
            ("X-PER", 2),
            ("B-", 2),
            ("b-PER", 2),
            ("PER", 2),
            ("BB-PER", 2),
        ] {
            let text = format!("a\tO\nb\t{bad}\n");
            let msg = err_of("badtag.conll", text.as_bytes(), ConllOptions::default());
            assert!(msg.contains(&format!("badtag.conll:{line}:")), "{msg}");
            assert!(msg.contains(&format!("invalid tag '{bad}'")), "{msg}");
        }
    }

    #[test]
    fn tags_outside_the_scheme_are_errors() {
        let msg = err_of(
            "scheme.conll",
            b"a\tB-PER\nb\tE-PER\n",
            ConllOptions::default(),
        );
        assert!(msg.contains("scheme.conll:2:"), "{msg}");
        assert!(msg.contains("scheme IOB2"), "{msg}");
        let msg = err_of(
            "scheme.conll",
            b"a\tB-PER\n\nb\tU-PER\n",
            ConllOptions {
                scheme: TagScheme::Bioes,
                ..Default::default()
            },
        );
        assert!(msg.contains("scheme.conll:3:"), "{msg}");
        let msg = err_of(
            "scheme.conll",
            b"a\tS-PER\nb\tO\nc\tU-PER\n",
            ConllOptions {
                scheme: TagScheme::Auto,
                ..Default::default()
            },
        );
        assert!(msg.contains("scheme.conll:3:"), "{msg}");
        assert!(msg.contains("mixed"), "{msg}");
    }

    #[test]
    fn empty_file_and_file_without_sentences_are_errors() {
        let msg = err_of("empty.conll", b"", ConllOptions::default());
        assert!(msg.contains("empty.conll"), "{msg}");
        assert!(msg.contains("empty file"), "{msg}");
        let msg = err_of("blank.conll", b"\n \n\r\n", ConllOptions::default());
        assert!(msg.contains("blank.conll"), "{msg}");
        let msg = err_of(
            "docstart.conll",
            b"-DOCSTART- -X- -X- O\n\n",
            ConllOptions::default(),
        );
        assert!(msg.contains("docstart.conll"), "{msg}");
        assert!(msg.contains("no sentences"), "{msg}");
    }

    #[test]
    fn non_utf8_names_file_and_line() {
        let msg = err_of(
            "latin1.conll",
            b"a\tO\nb\tO\n\ncaf\xe9\tB-LOC\n",
            ConllOptions::default(),
        );
        assert!(msg.contains("latin1.conll:4:"), "{msg}");
        assert!(msg.contains("UTF-8"), "{msg}");
    }

    #[test]
    fn missing_file_names_it() {
        let err = read_conll("/nonexistent/dir/x.conll", &ConllOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/dir/x.conll"));
    }

    #[test]
    fn scheme_names_parse() {
        assert_eq!("BIO".parse::<TagScheme>().unwrap(), TagScheme::Iob2);
        assert_eq!("iobes".parse::<TagScheme>().unwrap(), TagScheme::Bioes);
        assert_eq!("bilou".parse::<TagScheme>().unwrap(), TagScheme::Bilou);
        assert_eq!("iob1".parse::<TagScheme>().unwrap(), TagScheme::Iob1);
        assert_eq!("Auto".parse::<TagScheme>().unwrap(), TagScheme::Auto);
        assert!("xyz".parse::<TagScheme>().is_err());
    }

    #[test]
    fn convert_to_iob2_on_vectors() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            convert_to_iob2(&v(&["S-A", "B-B", "E-B"]), TagScheme::Bioes),
            v(&["B-A", "B-B", "I-B"])
        );
        assert_eq!(
            convert_to_iob2(&v(&["I-A", "B-A", "O", "I-A"]), TagScheme::Iob1),
            v(&["B-A", "B-A", "O", "B-A"])
        );
    }

    #[test]
    fn huge_tokens_and_tags_are_not_echoed_in_full() {
        let huge = "x".repeat(100_000);
        for text in [
            format!("EU\tB-ORG\n{huge}\n"),
            format!("EU\tB-ORG\nw\tQ{huge}\n"),
        ] {
            let msg = read(&text, ConllOptions::default())
                .unwrap_err()
                .to_string();
            assert!(msg.contains(":2: "), "{msg}");
            assert!(msg.len() < 400, "{} bytes", msg.len());
            assert!(msg.contains("characters)"), "{msg}");
        }
    }
}
