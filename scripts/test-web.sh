#!/usr/bin/env bash
# The browser test: the kernel tests on SIMD128 (wasm32-wasip1 under Node.js), then builds the wasm package and a demo bundle (scripts/build-web.sh, small
# training), writes the native outputs with the CLI, installs Debian's Chromium and npm's
# puppeteer-core when missing, and runs tests/web/browser.test.mjs in headless Chromium.
# Fails (never skips) when something cannot be installed. Screenshot and results:
# target/web-test/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="$ROOT/models/all-MiniLM-L6-v2"
OUT="$ROOT/target/web-test"

echo "== prefine-kernels on wasm32 (SIMD128) under Node.js's WASI"
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $ROOT/scripts/wasi-run.mjs" \
  cargo test -q -p prefine-kernels --target wasm32-wasip1 --lib

# The CLI of the test build: `cargo build -p prefine-cli` alone would resolve features
# differently from `cargo test --workspace` and recompile the whole stack (minutes in CI); this
# is a no-op after the test command's `cargo test --workspace`.
cargo test -q --workspace --no-run
export PREFINE_BIN="$ROOT/target/debug/prefine"
PREFINE_WEB_QUICK="${PREFINE_WEB_QUICK:-1}" PREFINE_WEB_PROFILE="${PREFINE_WEB_PROFILE:-wasm-test}" \
  ./scripts/build-web.sh

if ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
command -v node >/dev/null || { echo "test-web: node (Node.js >= 20) is needed" >&2; exit 1; }
(cd tests/web && npm ci --no-audit --no-fund --loglevel=error)

echo "== native outputs (prefine predict / embed, f32 and int8)"
rm -rf "$OUT" && mkdir -p "$OUT/native"
cp tests/web/texts.txt "$OUT/native/texts.txt"
PREFINE="$PREFINE_BIN"
for task in ner tc; do
  adapter="web/bundle/adapters/$([ $task = ner ] && echo ner || echo emotion)"
  "$PREFINE" predict --model "$MODEL" --adapter "$adapter" --input tests/web/texts.txt \
    --aggregation-strategy simple >"$OUT/native/$task-f32.jsonl"
  "$PREFINE" predict --model web/bundle/model --precision int8 --adapter "$adapter" --input tests/web/texts.txt \
    --aggregation-strategy simple >"$OUT/native/$task-int8.jsonl"
done
"$PREFINE" embed --model "$MODEL" --input tests/web/texts.txt >"$OUT/native/embed-f32.jsonl"

echo "== headless Chromium: $(chromium --version 2>/dev/null | head -1)"
node tests/web/browser.test.mjs "$ROOT/web" "$MODEL" "$OUT/native" \
  "$ROOT/../shared/reference/minilm_l6_hello_world.json" "$OUT"
echo "test-web: ok"
