#!/usr/bin/env bash
# Issue 7's side-by-side harness: the PyTorch (f32, bf16 autocast), ONNX Runtime (plain,
# optimised graph, int8) and prefine (f32, bf16, int8) runs of every standard workload
# (../shared/bench/WORKLOAD.md),
# alternated on this machine, then a ratio table as markdown and JSON:
#   docs/bench-anchors.md, docs/bench-anchors.json, and the table between the
#   `bench-anchors` markers of docs/BENCHMARKS.md.
#
#   scripts/bench-anchors.sh            # ROUNDS=3 alternations, medians reported
#
# Environment: ANCHOR_VENV (default .venv-anchor; created with torch transformers peft onnx
# onnxruntime when missing) or ANCHOR_PYTHON (an existing interpreter), ROUNDS (default 3),
# MODEL_DIR (default models/all-MiniLM-L6-v2), PREFINE_SHARED (default ../shared),
# CARGO_TARGET_DIR. Timings need the machine to themselves: nothing else heavy may run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SHARED="${PREFINE_SHARED:-$ROOT/../shared}"
ROUNDS="${ROUNDS:-3}"
export MODEL_DIR="${MODEL_DIR:-$ROOT/models/all-MiniLM-L6-v2}"
export BENCH_OUT="${BENCH_OUT:-$(mktemp -d)}"
if [[ -z "${ANCHOR_PYTHON:-}" ]]; then
  VENV="${ANCHOR_VENV:-$ROOT/.venv-anchor}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch transformers peft safetensors onnx onnxruntime
  fi
  ANCHOR_PYTHON="$VENV/bin/python"
fi
PY="$ANCHOR_PYTHON"
./scripts/setup.sh >&2
cargo build --release -q -p prefine-cli
PREFINE="${CARGO_TARGET_DIR:-$ROOT/target}/release/prefine"
RAW="$BENCH_OUT/raw.jsonl"
: > "$RAW"
# One-time ONNX export (not timed, kept out of the timed runs' peak RSS).
"$PY" "$SHARED/bench/onnxruntime_anchor.py" export >&2
# Each run prints one JSON line; tag it with the engine so the report can pair them.
run() {
  local engine="$1"; shift
  local line
  if ! line="$("$@" 2>"$BENCH_OUT/last.err" | tail -n 1)" || [[ -z "$line" ]]; then
    echo "bench-anchors: $engine failed: $*" >&2
    cat "$BENCH_OUT/last.err" >&2
    exit 1
  fi
  printf '{"engine":"%s","run":%s}\n' "$engine" "$line" >> "$RAW"
  echo "  $engine: $line" >&2
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for w in train_full train_lora; do
    run pytorch "$PY" "$SHARED/bench/pytorch_anchor.py" "$w"
    run prefine "$PREFINE" --threads 2 bench "$w" --model "$MODEL_DIR"
    run prefine-bf16 "$PREFINE" --threads 2 bench "$w" --model "$MODEL_DIR" --precision bf16
    run pytorch-bf16 "$PY" scripts/pytorch_bf16_anchor.py "$w"
  done
  for w in infer_b1 infer_b32; do
    run pytorch "$PY" "$SHARED/bench/pytorch_anchor.py" "$w"
    run onnxruntime "$PY" "$SHARED/bench/onnxruntime_anchor.py" "$w"
    run onnxruntime-opt "$PY" "$SHARED/bench/onnxruntime_anchor.py" "$w" --opt
    run prefine "$PREFINE" --threads 2 bench "$w" --model "$MODEL_DIR"
    run onnxruntime-int8 "$PY" scripts/onnxruntime_int8_anchor.py "$w"
    run prefine-int8 "$PREFINE" --threads 2 bench "$w" --model "$MODEL_DIR" --precision int8
    run prefine-bf16 "$PREFINE" --threads 2 bench "$w" --model "$MODEL_DIR" --precision bf16
    run pytorch-bf16 "$PY" scripts/pytorch_bf16_anchor.py "$w"
  done
done
"$PY" scripts/bench_anchors_report.py "$RAW" \
  --commit "$(git rev-parse --short HEAD)" \
  --md docs/bench-anchors.md --json docs/bench-anchors.json --benchmarks docs/BENCHMARKS.md
echo "raw runs: $RAW" >&2
