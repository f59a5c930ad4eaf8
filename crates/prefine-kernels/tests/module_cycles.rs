//! No import cycles between the modules of a crate (issue 24): a small checker over the
//! workspace's sources, run with the tests.
//!
//! A module's edges are the `crate::a::b` and `super::x` paths in its file (comments and the
//! trailing `#[cfg(test)] mod tests` block left out), resolved to the longest module they name.
//! A module's own descendants do not count (a parent re-exporting its children is not a
//! cycle). The crates in [`STRICT`] must have no cycle; the cycles of the others are printed
//! (add a crate to the list once its cycles are gone).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates (or one module subtree, `crate/ops`) that must be free of cycles.
const STRICT: &[&str] = &[
    "prefine-kernels",
    "prefine-model/ops",
    "prefine-tokenize",
    "prefine-data",
    "prefine-eval",
    "prefine-train",
    "prefine-ffi",
    "prefine-serve",
    "prefine-runtime",
    "prefine-suite",
    "prefine-cli",
];

/// Module path (`a::b`) -> file, for every `.rs` file under `src`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            if parts.first().is_some_and(|p| p == "bin") {
                continue;
            }
            out.insert(parts.join("::"), path);
        }
    }
    out
}

/// The code of a file without comments, string literals' contents or a trailing test module.
fn code(text: &str) -> String {
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    let text = &text[..cut];
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i = text[i..].find("*/").map_or(b.len(), |e| i + e + 2);
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The paths following each `prefix` (`crate::` or `super::`), braces expanded one level.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|p| {
                p.trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|p| !p.is_empty())
            .collect()
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            out.extend(group[..end].split(',').map(ident));
        } else {
            // `a::b::{c, d}`: the common part names the module.
            out.push(ident(rest.split('{').next().unwrap_or(rest)));
        }
    }
    out
}

/// Edges `module -> module` of one crate.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let resolve = |path: &[String]| -> Option<String> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].join("::"))
            .find(|m| mods.contains_key(m))
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, file) in &mods {
        let code = code(&std::fs::read_to_string(file).unwrap());
        let parent: Vec<String> = {
            let mut p: Vec<String> = name.split("::").map(String::from).collect();
            p.pop();
            p
        };
        let mut targets: Vec<Vec<String>> = paths_after(&code, "crate::");
        for p in paths_after(&code, "super::") {
            targets.push(parent.iter().cloned().chain(p).collect());
        }
        let set = edges.entry(name.clone()).or_default();
        for t in targets {
            if let Some(m) = resolve(&t) {
                let descendant = m == *name || m.starts_with(&format!("{name}::"));
                if !descendant && !(name.is_empty()) {
                    set.insert(m);
                }
            }
        }
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_checker_finds_a_cycle_and_ignores_comments_and_descendants() {
    let dir = std::env::temp_dir().join(format!("prefine-cycles-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("ops")).unwrap();
    let write = |f: &str, s: &str| std::fs::write(dir.join(f), s).unwrap();
    write("lib.rs", "mod a; mod b; mod c; mod ops;\n");
    write("a.rs", "use crate::b::X;\n");
    write("b.rs", "use crate::{c::Y, a};\n");
    write(
        "c.rs",
        "// use crate::a;\nfn f() { let _ = \"crate::a\"; }\n",
    );
    write("ops/mod.rs", "pub use crate::ops::k::Z;\n");
    write("ops/k.rs", "use super::super::a::W;\nuse super::W2;\n");
    let found = cycles(&graph(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found, vec![vec!["a".to_string(), "b".to_string()]]);
}

#[test]
fn no_import_cycles_within_a_crate() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut failures = Vec::new();
    let mut newly_clean = Vec::new();
    for entry in std::fs::read_dir(crates).unwrap() {
        let dir = entry.unwrap().path();
        let src = dir.join("src");
        if !src.is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let found = cycles(&graph(&src));
        for comp in &found {
            eprintln!("{name}: import cycle {}", comp.join(" <-> "));
        }
        if STRICT.contains(&name.as_str()) {
            if !found.is_empty() {
                failures.push(format!("{name}: {found:?}"));
            }
        } else if found.is_empty() {
            newly_clean.push(name.clone());
        }
        // Strict subtrees (`crate/module`): the cycles among that module's descendants.
        for strict in STRICT {
            if let Some(sub) = strict.strip_prefix(&format!("{name}/")) {
                let inside: Vec<_> = found
                    .iter()
                    .filter(|c| c.iter().all(|m| m.starts_with(&format!("{sub}::"))))
                    .collect();
                if !inside.is_empty() {
                    failures.push(format!("{strict}: {inside:?}"));
                }
            }
        }
    }
    if !newly_clean.is_empty() {
        eprintln!("{newly_clean:?} have no cycles: they may join STRICT");
    }
    assert!(failures.is_empty(), "import cycles: {failures:?}");
}
