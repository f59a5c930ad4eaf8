#!/usr/bin/env python3
"""Issue 27 ablation tables from a run directory (default /work/runs-science): per variant,
the pre-finetuning time and losses (pt/<v>/done.json) and the DEV family averages per training
fraction (suite/results.jsonl; the latest line of a cell wins). Test averages are printed in a
separate table for the record only: variants are chosen on dev."""
import json
import os
import statistics
import sys
from collections import defaultdict

runs = sys.argv[1] if len(sys.argv) > 1 else "/work/runs-science"
# Optional: also write every cell (variant, task, fraction, seed, dev, test, seconds) as CSV.
cells_csv = sys.argv[2] if len(sys.argv) > 2 else None
cells = {}
path = os.path.join(runs, "suite", "results.jsonl")
if os.path.exists(path):
    for line in open(path):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        cells[(r["variant"], r["task"], r["fraction"], r["seed"])] = r

variants = list(dict.fromkeys(k[0] for k in cells))
fractions = sorted({k[2] for k in cells}, reverse=True)


def fam_avg(v, fam, frac, key):
    """Mean over seeds of the task-average score (percent), its seed std, and the task count."""
    by_seed = defaultdict(list)
    for (vv, task, f, seed), r in cells.items():
        if vv == v and f == frac and r["family"] == fam and r["status"] == "ok" and r[key] is not None:
            by_seed[seed].append(100 * r[key])
    if not by_seed:
        return None
    n = {len(x) for x in by_seed.values()}
    avgs = [statistics.mean(x) for x in by_seed.values()]
    std = statistics.stdev(avgs) if len(avgs) > 1 else None
    return statistics.mean(avgs), std, max(n), len(avgs)


def fmt(x, base=None):
    if x is None:
        return "-"
    m, std, n, s = x
    out = f"{m:.1f}"
    if std is not None:
        out += f" ± {std:.1f}"
    if base is not None:
        out += f" ({m - base[0]:+.1f})"
    if n != 4:
        out += f" [{n} tasks]"
    return out


print("### Pre-finetuning (300 steps, seed 42)\n")
print("| variant | wall s | s/step | NER loss (last 100) | TC loss (last 100) |")
print("|---|---|---|---|---|")
for v in variants:
    done = os.path.join(runs, "pt", v, "done.json")
    if not os.path.exists(done):
        continue
    d = json.load(open(done))
    ll = d.get("last_loss", {})
    g = lambda k: f"{ll[k]:.4f}" if k in ll else "-"
    print(f"| {v} | {d['seconds']:.0f} | {d['seconds'] / max(d['steps'], 1):.2f} | {g('ner')} | {g('tc')} |")

for key, title in [("dev_score", "DEV"), ("score", "test (for the record, not used to choose)")]:
    print(f"\n### {title} family averages (percent; delta against `base`)\n")
    print("| variant | " + " | ".join(f"NER f={f} | TC f={f}" for f in fractions) + " |")
    print("|---|" + "---|---|" * len(fractions))
    for v in variants:
        row = []
        for f in fractions:
            for fam in ["ner", "tc"]:
                row.append(fmt(fam_avg(v, fam, f, key), fam_avg("base", fam, f, key) if v != "base" else None))
        print(f"| {v} | " + " | ".join(row) + " |")

print("\n### DEV per task (percent)\n")
tasks = sorted({k[1] for k in cells})
for f in fractions:
    print(f"\nfraction {f}\n")
    print("| variant | " + " | ".join(t.split("/")[1] for t in tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    for v in variants:
        vals = []
        for t in tasks:
            xs = [100 * r["dev_score"] for (vv, tt, ff, s), r in cells.items()
                  if vv == v and tt == t and ff == f and r["status"] == "ok" and r["dev_score"] is not None]
            vals.append(f"{statistics.mean(xs):.1f}" if xs else "-")
        print(f"| {v} | " + " | ".join(vals) + " |")

if cells_csv:
    with open(cells_csv, "w") as f:
        f.write("variant,task,fraction,seed,dev_score,test_score,seconds\n")
        for (v, t, fr, seed), r in sorted(cells.items()):
            g = lambda x: "" if x is None else f"{x:.4f}"
            f.write(f"{v},{t},{fr},{seed},{g(r['dev_score'])},{g(r['score'])},{r['seconds']:.1f}\n")
