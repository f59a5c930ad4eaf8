#!/usr/bin/env bash
# Inference scaling study (issue 7): forward-only tokens/s of `prefine bench` for sequence
# lengths 32/64/128/256 and batch sizes 1/8/32, each followed by the same shape in PyTorch
# (scripts/pytorch_infer_scaling.py) when ANCHOR_PYTHON is set, back to back. Prints JSON lines,
# then a markdown table (cost per token in microseconds) on stderr.
# SEQS / BATCHES override the grid; PRECISION (f32|bf16|int8) the prefine precision.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MODEL_DIR="${MODEL_DIR:-$ROOT/models/all-MiniLM-L6-v2}"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/prefine"
"$ROOT/scripts/setup.sh" >&2
cargo build --release -q -p prefine-cli --manifest-path "$ROOT/Cargo.toml"
OUT="$(mktemp)"
for seq in ${SEQS:-32 64 128 256}; do
  for batch in ${BATCHES:-1 8 32}; do
    # Small shapes get more runs (as infer_b1: 5 warm-up, 50 timed); large ones as infer_b32.
    if (( batch * seq <= 512 )); then w=infer_b1; runs="5 50"; else w=infer_b32; runs="2 10"; fi
    "$BIN" --threads 2 bench "$w" --batch "$batch" --seq "$seq" --precision "${PRECISION:-f32}" \
      --model "$MODEL_DIR" 2>/dev/null | tee -a "$OUT"
    if [[ -n "${ANCHOR_PYTHON:-}" ]]; then
      "$ANCHOR_PYTHON" "$ROOT/scripts/pytorch_infer_scaling.py" "$batch" "$seq" $runs 2>/dev/null \
        | tee -a "$OUT"
    fi
  done
done
python3 - "$OUT" >&2 <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault((r["seq_len"], r["batch"]), {})[r["framework"]] = r["tokens_per_s"]
print("| seq | batch | prefine tokens/s | µs/token | PyTorch tokens/s | µs/token | ratio |")
print("|---|---|---|---|---|---|---|")
for (seq, batch), v in sorted(rows.items()):
    p, t = v.get("prefine"), v.get("pytorch")
    cell = lambda x: f"{x:.0f} | {1e6 / x:.1f}" if x else "- | -"
    ratio = f"{p / t:.2f}x" if p and t else "-"
    print(f"| {seq} | {batch} | {cell(p)} | {cell(t)} | {ratio} |")
PY
rm -f "$OUT"
