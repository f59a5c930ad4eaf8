#!/usr/bin/env python3
"""Fails when a module imports, through `use crate::...` or `crate::` paths, a module that
imports it back (directly or through others), within any crate of the workspace.

A module is a file under `src/` (`a/mod.rs` is module `a`, `a/b.rs` is `a::b`); an edge
`m -> n` is any `crate::n...` path in `m` (`use` lines and inline paths) where `n` is the
longest module prefix of that path, and `n` is neither `m` nor one of `m`'s ancestors (a child
reaching its parent's items through `super` or `crate::parent` is the module tree, not a
cycle). Run: `python3 scripts/check-cycles.py` (the test command runs it)."""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def modules(src):
    mods = {}
    for f in src.rglob("*.rs"):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        if parts and parts[0] == "bin":
            continue
        mods["::".join(parts)] = f
    return mods


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    # Test modules may import anything of the crate.
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
    return text[: cut.start()] if cut else text


def paths(text):
    """Every `crate::a::b::c` path, with `use crate::a::{b, c::d}` groups expanded."""
    out = []
    for m in re.finditer(r"\bcrate((?:::\w+)+)(::\{)?", text):
        base = m.group(1).strip(":").split("::")
        if m.group(2):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            inner = text[m.end(): i - 1]
            for item in re.split(r",(?![^{]*\})", inner):
                item = re.sub(r"\{.*", "", item).strip()
                if item and item != "self":
                    out.append(base + [p for p in item.split("::") if p])
                elif item == "self":
                    out.append(base)
        else:
            out.append(base)
    return out


def target(mods, path):
    for k in range(len(path), 0, -1):
        name = "::".join(path[:k])
        if name in mods:
            return name
    return ""


def sccs(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    bad = 0
    crates = sorted(ROOT.glob("crates/*/src")) + sorted(ROOT.glob("bindings/*/src"))
    for src in crates:
        mods = modules(src)
        graph = {}
        for m, f in mods.items():
            ancestors = {"::".join(m.split("::")[:k]) for k in range(len(m.split("::")) + 1)}
            edges = set()
            for p in paths(strip(f.read_text())):
                t = target(mods, p)
                if t and t not in ancestors and not t.startswith(m + "::"):
                    edges.add(t)
            graph[m] = edges
        for comp in sccs(graph):
            bad += 1
            print(f"{src.parent.name}: import cycle among {', '.join(comp)}")
            for a in comp:
                for b in sorted(graph[a] & set(comp)):
                    print(f"    {a} -> {b}")
    if bad:
        sys.exit(1)
    print(f"no import cycles in {len(crates)} crates")


main()
