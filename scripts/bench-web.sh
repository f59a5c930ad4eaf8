#!/usr/bin/env bash
# prefine in the browser against ONNX Runtime Web (npm onnxruntime-web, wasm backend with SIMD)
# in the same headless Chromium, on the same model (the ONNX export of
# ../shared/bench/onnxruntime_anchor.py and its int8 quantize_dynamic version, written by
# scripts/onnxruntime_int8_anchor.py) and the same token ids: latency at batch 1 x 32 tokens
# and throughput at batch 32 x 128, f32 and int8; ONNX Runtime Web with 1 and 2 threads
# (prefine runs single-threaded). Prints a markdown table; JSON in target/bench-web/.
#
# Environment: ROUNDS (default 3 alternations; medians), ANCHOR_VENV / ANCHOR_PYTHON (as
# scripts/bench-anchors.sh), BENCH_QUICK=1 (one short round, a smoke test). Timings need the
# machine to themselves.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SHARED="${PREFINE_SHARED:-$ROOT/../shared}"
export MODEL_DIR="$ROOT/models/all-MiniLM-L6-v2"
export BENCH_OUT="$ROOT/target/bench-web/onnx"
mkdir -p "$BENCH_OUT"

PREFINE_WEB_PROFILE="${PREFINE_WEB_PROFILE:-wasm}" ./scripts/build-web.sh >&2
if [[ -z "${ANCHOR_PYTHON:-}" ]]; then
  VENV="${ANCHOR_VENV:-$ROOT/.venv-anchor}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch transformers peft safetensors onnx onnxruntime
  fi
  ANCHOR_PYTHON="$VENV/bin/python"
fi
[ -f "$BENCH_OUT/minilm.onnx" ] || "$ANCHOR_PYTHON" "$SHARED/bench/onnxruntime_anchor.py" export >&2
[ -f "$BENCH_OUT/minilm.int8.onnx" ] ||
  BENCH_QUICK=1 "$ANCHOR_PYTHON" scripts/onnxruntime_int8_anchor.py infer_b1 >/dev/null
(cd scripts/bench-web && npm ci --no-audit --no-fund --loglevel=error >&2)

WASM=web/pkg/prefine_wasm_bg.wasm
echo "prefine wasm: $(stat -c %s $WASM) bytes, $(gzip -9 -c $WASM | wc -c) gzipped (gzip -9)"
ORT=scripts/bench-web/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm
echo "onnxruntime-web wasm: $(stat -c %s $ORT) bytes, $(gzip -9 -c $ORT | wc -c) gzipped"
node scripts/bench-web/bench.mjs "$ROOT/web" "$MODEL_DIR" "$BENCH_OUT" "$ROOT/target/bench-web/results.json"
