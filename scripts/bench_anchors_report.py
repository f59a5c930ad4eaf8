#!/usr/bin/env python3
"""Ratio table for scripts/bench-anchors.sh (standard library only).

Reads the tagged JSON lines the script collected ({"engine": ..., "run": {...}}), takes the
median of each engine's runs per workload, and writes issue 7's comparisons as markdown and
JSON; with --benchmarks, the markdown also replaces the text between the `bench-anchors`
markers of that file (appended as a new section when the markers are missing).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys

BEGIN = "<!-- bench-anchors:begin -->"
END = "<!-- bench-anchors:end -->"

# (workload, engine, peer, metric, target, what the target means)
# metric "tps": tokens/s, ratio = prefine / peer (higher is better);
# "ms": latency, ratio = peer / prefine (speed, higher is better);
# "rss": peak RSS, ratio = prefine / peer (lower is better).
COMPARISONS = [
    ("train_full", "prefine", "pytorch", "tps", 1.15, ">= 1.15x PyTorch"),
    ("train_full", "prefine", "pytorch", "rss", 0.6, "<= 0.6x PyTorch"),
    ("train_lora", "prefine", "pytorch", "tps", 1.15, ">= 1.15x PyTorch"),
    ("train_lora", "prefine", "pytorch", "rss", 0.6, "<= 0.6x PyTorch"),
    ("infer_b1", "prefine", "pytorch", "ms", None, "-"),
    ("infer_b1", "prefine", "onnxruntime-best", "ms", 1 / 1.05, "latency <= 1.05x ORT"),
    ("infer_b32", "prefine", "pytorch", "tps", None, "-"),
    ("infer_b32", "prefine", "onnxruntime-best", "tps", 0.95, ">= 0.95x ORT"),
    ("infer_b1", "prefine-int8", "onnxruntime-int8", "ms", 1.15, ">= 1.15x ORT int8"),
    ("infer_b32", "prefine-int8", "onnxruntime-int8", "tps", 1.15, ">= 1.15x ORT int8"),
    ("infer_b1", "prefine-bf16", "pytorch-bf16", "ms", 1.2, ">= 1.2x PyTorch bf16"),
    ("infer_b32", "prefine-bf16", "pytorch-bf16", "tps", 1.2, ">= 1.2x PyTorch bf16"),
    # bf16 mixed-precision training (bf16 matmul operands, f32 accumulation and weights)
    # against PyTorch's bf16 autocast.
    ("train_full", "prefine-bf16", "pytorch-bf16", "tps", 1.2, ">= 1.2x PyTorch bf16"),
    ("train_lora", "prefine-bf16", "pytorch-bf16", "tps", 1.2, ">= 1.2x PyTorch bf16"),
]
FIELD = {"tps": "tokens_per_s", "ms": "step_ms_median", "rss": "peak_rss_mb"}
UNIT = {"tps": "tokens/s", "ms": "ms", "rss": "peak RSS MB"}


def medians(path):
    runs = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                engine, run = rec["engine"], rec["run"]
                key = (run["workload"], engine)
            except (ValueError, KeyError) as e:
                sys.exit(f"{path}:{n}: not a tagged benchmark line ({e})")
            runs.setdefault(key, []).append(run)
    med = {}
    for key, rs in runs.items():
        med[key] = {
            f: statistics.median(r[f] for r in rs)
            for f in FIELD.values()
            if all(f in r for r in rs)
        }
        med[key]["runs"] = len(rs)
    # The faster ONNX Runtime graph (plain or optimised) per workload: the stricter peer.
    for w in ("infer_b1", "infer_b32"):
        cands = [med[(w, e)] | {"engine": e} for e in ("onnxruntime", "onnxruntime-opt") if (w, e) in med]
        if cands:
            best = max(cands, key=lambda m: m["tokens_per_s"])
            med[(w, "onnxruntime-best")] = best
    return med


def compare(med):
    rows = []
    for w, eng, peer, metric, target, meaning in COMPARISONS:
        a, b = med.get((w, eng)), med.get((w, peer))
        if not a or not b or FIELD[metric] not in a or FIELD[metric] not in b:
            continue
        x, y = a[FIELD[metric]], b[FIELD[metric]]
        ratio = y / x if metric == "ms" else x / y
        met = None
        if target is not None:
            met = ratio <= target if metric == "rss" else ratio >= target
        rows.append({
            "workload": w,
            "metric": UNIT[metric],
            "engine": eng,
            "value": round(x, 2),
            "peer": b.get("engine", peer),
            "peer_value": round(y, 2),
            "ratio": round(ratio, 3),
            "ratio_means": "peer / prefine latency (speed)" if metric == "ms"
            else "prefine / peer",
            "target": meaning,
            "met": met,
        })
    return rows


def markdown(rows, meta):
    out = [
        f"Run of {meta['date']} at commit {meta['commit']} on {meta['machine']}, "
        f"{meta['rounds']} alternating round(s), medians (`scripts/bench-anchors.sh`):",
        "",
        "| workload | metric | engine | value | peer | peer value | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = {True: "yes", False: "no", None: "-"}[r["met"]]
        suffix = " speed" if r["metric"] == "ms" else ""
        out.append(
            f"| {r['workload']} | {r['metric']} | {r['engine']} | {r['value']} | {r['peer']} | "
            f"{r['peer_value']} | {r['ratio']:.2f}x{suffix} | {r['target']} | {met} |"
        )
    out.append("")
    out.append("Ratios: tokens/s and RSS are prefine / peer; latency rows are peer latency / "
               "prefine latency (above 1 = prefine faster). `onnxruntime-best` is the faster of "
               "ONNX Runtime's plain and optimised graphs.")
    return "\n".join(out) + "\n"


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--md", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--benchmarks")
    a = ap.parse_args()
    med = medians(a.raw)
    rounds = max((m["runs"] for m in med.values()), default=0)
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": a.commit,
        "machine": f"{cpu}, {os.cpu_count()} vCPU, {platform.system()}",
        "rounds": rounds,
    }
    rows = compare(med)
    md = markdown(rows, meta)
    write_atomic(a.md, md)
    write_atomic(a.json, json.dumps({
        "meta": meta,
        "medians": [{"workload": w, "engine": e, **m} for (w, e), m in sorted(med.items())],
        "comparisons": rows,
    }, indent=2) + "\n")
    if a.benchmarks:
        text = open(a.benchmarks).read()
        block = f"{BEGIN}\n{md}{END}"
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            text = head + block + rest.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n## Side by side with every anchor (issue 7)\n\n" + block + "\n"
        write_atomic(a.benchmarks, text)
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
