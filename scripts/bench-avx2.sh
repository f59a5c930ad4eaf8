#!/usr/bin/env bash
# Issue 21 item 6: prefine's inference with the AVX2+FMA kernels forced (PREFINE_ISA=avx2) back
# to back with PyTorch forced to its AVX2 kernels (ATEN_CPU_CAPABILITY=avx2), on the standard
# workloads infer_b1 and infer_b32 (../shared/bench/WORKLOAD.md); f32 and int8 prefine runs
# against PyTorch f32. Prints each run and the speed ratios (PyTorch latency / prefine latency
# for infer_b1, prefine tokens/s / PyTorch tokens/s for infer_b32; above 1 = prefine faster).
# Goals: f32 >= 1.5x, int8 >= 2x. Where the CPU has AVX-VNNI, int8 also runs on
# PREFINE_ISA=avx2-vnni (the AVX2 family's vpdpbusd tiles). A second anchor, pytorch-avx2-mkl, also restricts MKL and
# oneDNN (which PyTorch's matmuls use) to AVX2.
#
#   scripts/bench-avx2.sh          # ROUNDS=2 alternations, medians reported
#
# Environment as scripts/bench-anchors.sh: ANCHOR_VENV / ANCHOR_PYTHON, ROUNDS, MODEL_DIR,
# PREFINE_SHARED, CARGO_TARGET_DIR. Timings need the machine to themselves.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SHARED="${PREFINE_SHARED:-$ROOT/../shared}"
ROUNDS="${ROUNDS:-2}"
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
RAW="$BENCH_OUT/avx2.jsonl"
: > "$RAW"
run() {
  local engine="$1"; shift
  local line
  if ! line="$("$@" 2>"$BENCH_OUT/last.err" | tail -n 1)" || [[ -z "$line" ]]; then
    echo "bench-avx2: $engine failed: $*" >&2
    cat "$BENCH_OUT/last.err" >&2
    exit 1
  fi
  printf '{"engine":"%s","run":%s}\n' "$engine" "$line" >> "$RAW"
  echo "  $engine: $line" >&2
}
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for w in infer_b1 infer_b32; do
    run pytorch-avx2 env ATEN_CPU_CAPABILITY=avx2 "$PY" "$SHARED/bench/pytorch_anchor.py" "$w"
    # ATEN_CPU_CAPABILITY covers ATen's own kernels only: the matmuls go to MKL (and oneDNN),
    # which keep AVX-512 unless told otherwise. This anchor restricts them to AVX2 as well.
    run pytorch-avx2-mkl env ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
      ONEDNN_MAX_CPU_ISA=AVX2 "$PY" "$SHARED/bench/pytorch_anchor.py" "$w"
    run prefine-avx2 env PREFINE_ISA=avx2 "$PREFINE" --threads 2 bench "$w" --model "$MODEL_DIR"
    run prefine-avx2-int8 env PREFINE_ISA=avx2 "$PREFINE" --threads 2 bench "$w" \
      --model "$MODEL_DIR" --precision int8
    if grep -qw avx_vnni /proc/cpuinfo; then
      run prefine-avx2-vnni-int8 env PREFINE_ISA=avx2-vnni "$PREFINE" --threads 2 bench "$w" \
        --model "$MODEL_DIR" --precision int8
    fi
  done
done
"$PY" - "$RAW" <<'PYEOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(engine, workload, field):
    vals = [r["run"][field] for r in runs
            if r["engine"] == engine and r["run"].get("workload") == workload and field in r["run"]]
    return statistics.median(vals) if vals else None
print("| workload | engine | value | anchor | anchor value | speed ratio | goal |")
print("|---|---|---|---|---|---|---|")
for w, field, unit in [("infer_b1", "step_ms_median", "ms"), ("infer_b32", "tokens_per_s", "tokens/s")]:
    for anchor in ("pytorch-avx2", "pytorch-avx2-mkl"):
        peer = med(anchor, w, field)
        for engine, goal in [("prefine-avx2", 1.5), ("prefine-avx2-int8", 2.0),
                             ("prefine-avx2-vnni-int8", 2.0)]:
            v = med(engine, w, field)
            if v is None or peer is None:
                if engine != "prefine-avx2-vnni-int8":
                    print(f"| {w} | {engine} | missing | {anchor} | | | |")
                continue
            ratio = peer / v if unit == "ms" else v / peer
            print(f"| {w} | {engine} | {v:.2f} {unit} | {anchor} | {peer:.2f} {unit} | "
                  f"{ratio:.2f}x | >= {goal}x {'met' if ratio >= goal else 'NOT met'} |")
PYEOF
echo "raw runs: $RAW" >&2
