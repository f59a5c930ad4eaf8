#!/usr/bin/env bash
# The Python package's call overhead (docs/BENCHMARKS.md, "Python call overhead"): `predict` on
# one short text through `prefine.Backbone.predict` against `Engine::predict` called from Rust,
# both release builds, same backbone (f32, packed), same synthetic adapters (NER and TC, LoRA
# r=8), same thread count, N calls after warm-up; prints one JSON line per path and adapter and
# the overhead. Needs the machine to itself. Usage: scripts/bench-python.sh [N] [TEXT]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${1:-2000}"
TEXT="${2:-Barack Obama visited Paris.}"
MODEL="${PREFINE_MODEL:-$ROOT/models/all-MiniLM-L6-v2}"
OUT="$ROOT/target/bench-python"
rm -rf "$OUT"; mkdir -p "$OUT"
# A private environment (numpy, maturin and pytest from the system's site-packages), so that no
# other install of the package into the system's python3 swaps the build under the benchmark.
python3 -m venv --system-site-packages "$OUT/venv"
export PATH="$OUT/venv/bin:$PATH"
./scripts/setup-python.sh >/dev/null              # release build of the package
cargo build -q --release -p prefine-runtime --example predict_latency --example synthetic_adapters
target/release/examples/synthetic_adapters "$MODEL" "$OUT/adapters" >/dev/null
target/release/examples/predict_latency "$MODEL" "$TEXT" "$N" \
  ner="$OUT/adapters/ner" tc="$OUT/adapters/tc" | tee "$OUT/rust.jsonl"
python3 - "$MODEL" "$TEXT" "$N" "$OUT" <<'PY' | tee "$OUT/python.jsonl"
import json, statistics, sys, time
import prefine
model, text, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
b = prefine.Backbone.from_pretrained(model, precision="f32")
for name in ("ner", "tc"):
    b.load_adapter(name, f"{out}/adapters/{name}")
    for _ in range(min(n, 200)):
        b.predict(text, name)
    us = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        b.predict(text, name)
        us.append((clock() - t) / 1e3)
    print(json.dumps({"via": "python", "adapter": name, "calls": n,
                      "median_us": statistics.median(us), "mean_us": sum(us) / n}))
PY
python3 - "$OUT" <<'PY'
import json, sys
rows = {}
for via in ("rust", "python"):
    for line in open(f"{sys.argv[1]}/{via}.jsonl"):
        r = json.loads(line)
        rows[(via, r["adapter"])] = r
for ad in ("ner", "tc"):
    r, p = rows[("rust", ad)]["median_us"], rows[("python", ad)]["median_us"]
    d = p - r
    goal = max(0.05 * r, 100.0)
    print(f"{ad}: rust {r:.1f} us, python {p:.1f} us per call (medians): overhead {d:+.1f} us "
          f"({100 * d / r:+.2f}%), goal <= {goal:.1f} us: {'met' if d <= goal else 'NOT met'}")
PY
