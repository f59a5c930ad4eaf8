#!/usr/bin/env bash
# Runs the PyTorch anchor and `prefine bench` back to back on this machine, for every standard
# workload, and prints one JSON line per run (anchor first). Needs a Python venv with
# torch/transformers/peft (ANCHOR_PYTHON, default .venv-anchor/bin/python) and ../shared/bench.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ANCHOR_PYTHON:-$ROOT/.venv-anchor/bin/python}"
SHARED="${PREFINE_SHARED:-$ROOT/../shared}"
export MODEL_DIR="${MODEL_DIR:-$ROOT/models/all-MiniLM-L6-v2}"
export BENCH_OUT="${BENCH_OUT:-$(mktemp -d)}"
"$ROOT/scripts/setup.sh" >&2
cargo build --release -q -p prefine-cli --manifest-path "$ROOT/Cargo.toml"
for w in ${WORKLOADS:-train_full train_lora infer_b1 infer_b32}; do
  "$PY" "$SHARED/bench/pytorch_anchor.py" "$w" 2>/dev/null
  "${CARGO_TARGET_DIR:-$ROOT/target}/release/prefine" --threads 2 bench "$w" --model "$MODEL_DIR" 2>/dev/null
done
