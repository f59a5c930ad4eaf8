#!/usr/bin/env bash
# The on-device budgets of docs/BENCHMARKS.md ("On-device"): the stripped aarch64 FFI library,
# the int8 bundle of the backbone, each adapter's size (a head; a LoRA r=8 on q,v), peak RSS
# after loading the int8 backbone with 10 adapters and predicting once with each, and the time
# from process start to the first prediction. Needs the machine to itself for the timings.
# Usage: scripts/bench-ondevice.sh [HEAD_ADAPTER_DIR LORA_ADAPTER_DIR]  (prefine finetune outputs)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${PREFINE_MODEL:-$ROOT/models/all-MiniLM-L6-v2}"
OUT="$ROOT/target/ondevice"
rm -rf "$OUT"; mkdir -p "$OUT"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
cargo build -q --release -p prefine-cli
cargo build -q --release -p prefine-runtime --example ondevice_budget --example synthetic_adapters
# The device profile (Cargo.toml): fat LTO, one codegen unit, glue code optimised for size.
cargo build -q --profile device -p prefine-ffi --target aarch64-unknown-linux-gnu
so=target/aarch64-unknown-linux-gnu/device/libprefine_ffi.so
aarch64-linux-gnu-strip -o "$OUT/libprefine_ffi.so" "$so"
target/release/examples/synthetic_adapters "$MODEL" "$OUT/adapters" 10 >/dev/null
target/release/prefine export --adapter a0="$OUT/adapters/a0" --quantize int8 --out "$OUT/bundle-int8" >/dev/null
bundle_bytes=$(du -sb "$OUT/bundle-int8" | cut -f1)
backbone_bytes=$(du -sb "$OUT/bundle-int8/model" | cut -f1)
sizes=""
if [ $# -eq 2 ]; then
  sizes="head adapter $(du -sb --exclude='*.jsonl' --exclude='*.svg' --exclude='*.toml' --exclude=metrics.json "$1" | cut -f1) B; lora r=8 q,v adapter $(du -sb --exclude='*.jsonl' --exclude='*.svg' --exclude='*.toml' --exclude=metrics.json "$2" | cut -f1) B"
fi
adapters=("$OUT"/adapters/a*)
for i in 1 2 3; do
  target/release/examples/ondevice_budget "$OUT/bundle-int8" "${adapters[@]}" >"$OUT/budget-$i.json"
done
python3 - "$OUT" "$bundle_bytes" "$backbone_bytes" "$(stat -c %s "$OUT/libprefine_ffi.so")" "$sizes" <<'PY'
import json, sys, statistics
out, bundle, backbone, so, sizes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
runs = [json.load(open(f"{out}/budget-{i}.json")) for i in (1, 2, 3)]
rss = statistics.median(r["peak_rss_bytes"] for r in runs)
first = statistics.median(r["first_prediction_ms"] for r in runs)
load = statistics.median(r["load_ms"] for r in runs)
mb = lambda b: b / 1e6
print(f"| stripped libprefine_ffi.so (aarch64) | {mb(so):.2f} MB | goal <= 6 MB |")
print(f"| int8 bundle (backbone + tokenizer + manifest + 1 adapter) | {mb(bundle):.2f} MB (backbone dir {mb(backbone):.2f} MB) | goal <= 24 MB |")
print(f"| peak RSS: int8 backbone + 10 adapters + 1 prediction each | {mb(rss):.1f} MB = {rss / bundle:.2f}x the bundle | goal <= 1.5x |")
print(f"| process start -> backbone loaded / first prediction | {load:.0f} ms / {first:.0f} ms (median of 3) | |")
if sizes:
    print(f"| adapter sizes | {sizes} | |")
PY
