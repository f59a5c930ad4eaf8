#!/usr/bin/env bash
# The C ABI end to end, on x86-64 and on aarch64 under qemu: builds prefine-ffi (static
# library), compiles examples/c/main.c against include/prefine.h with the native and the
# aarch64 cross compiler, runs both on the real backbone with two synthetic adapters (one
# registered from a directory, one from bytes), and checks that the aarch64 (NEON) outputs
# equal the x86-64 ones: same entity spans and labels, numbers within 1e-4. Then the runtime's
# parity tests run under qemu-aarch64, and the FFI crate is checked for aarch64-linux-android.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="${PREFINE_MODEL:-$ROOT/models/all-MiniLM-L6-v2}"
OUT="$ROOT/target/ffi-test"
mkdir -p "$OUT"
A64=aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"

echo "== synthetic adapters"
cargo run -q -p prefine-runtime --example synthetic_adapters -- "$MODEL" "$OUT/adapters"

echo "== x86-64: C example"
cargo build -q -p prefine-ffi
cc -O1 -Wall -Werror examples/c/main.c -Icrates/prefine-ffi/include target/debug/libprefine_ffi.a \
  -lm -lpthread -ldl -o "$OUT/c-example-x86_64"
"$OUT/c-example-x86_64" "$MODEL" "$OUT/adapters/ner" "$OUT/adapters/tc" >"$OUT/x86_64.out"

echo "== aarch64: C example under qemu"
cargo build -q -p prefine-ffi --target $A64
aarch64-linux-gnu-gcc -O1 -Wall -Werror examples/c/main.c -Icrates/prefine-ffi/include \
  target/$A64/debug/libprefine_ffi.a -lm -lpthread -ldl -o "$OUT/c-example-aarch64"
qemu-aarch64 -L /usr/aarch64-linux-gnu "$OUT/c-example-aarch64" "$MODEL" "$OUT/adapters/ner" \
  "$OUT/adapters/tc" >"$OUT/aarch64.out"

python3 - "$OUT/x86_64.out" "$OUT/aarch64.out" <<'PY'
import json, sys
a, b = (open(p).read().splitlines() for p in sys.argv[1:3])
assert len(a) == len(b) == 5, (a, b)
ja, jb = json.loads(a[0]), json.loads(b[0])
worst = 0.0
def close(x, y, path):
    global worst
    if isinstance(x, dict):
        assert x.keys() == y.keys(), path
        for k in x: close(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, list):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)): close(u, v, f"{path}[{i}]")
    elif isinstance(x, float) or isinstance(y, float):
        worst = max(worst, abs(x - y))
        assert abs(x - y) <= 1e-4, f"{path}: {x} vs {y}"
    else:
        assert x == y, f"{path}: {x!r} vs {y!r}"
close(ja, jb, "$")
assert a[1:] == b[1:], (a[1:], b[1:])
ents = sum(len(t["entities"]) for t in ja["ner"])
print(f"C example: x86-64 and aarch64 agree (max abs diff {worst:.2e}; {ents} entities, "
      f"{len(ja['embedding'])} embedding values; {len(a) - 1} error messages identical)")
for line in a[1:]:
    print("  ", line)
PY

echo "== aarch64: runtime parity tests under qemu"
cargo test -q -p prefine-runtime --target $A64 --test parity

echo "== aarch64-linux-android: prefine-ffi (cargo check: no Android linker in the package registries)"
cargo check -q -p prefine-ffi --target aarch64-linux-android
echo "test-ffi: ok"
