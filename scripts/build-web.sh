#!/usr/bin/env bash
# Builds the browser package and the demo bundle that web/index.html loads:
#   web/pkg/     prefine_wasm.js + prefine_wasm_bg.wasm + prefine_wasm.d.ts (wasm-bindgen, --target web)
#   web/bundle/  an int8 export bundle: the backbone, an NER adapter (LoRA, CoNLL-2003) and a
#                classification adapter (LoRA, emotion), trained here on the shared data
# Then serve web/ with any static file server (see the README, "In the browser").
#
# Environment:
#   PREFINE_DATA          the shared datasets (default ../shared/data)
#   PREFINE_WEB_PROFILE   cargo profile of the wasm build: wasm (default: fat LTO, smallest and
#                         fastest) or wasm-test (no LTO: quicker to build, what the tests use)
#   PREFINE_BIN           the `prefine` binary to train and export with (default: built here)
#   PREFINE_WEB_QUICK=1   train the two adapters on 600 examples for 2 epochs (tests: the outputs
#                         are compared with native ones; they find entities, CoNLL dev F1 ~0.35)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="${PREFINE_DATA:-$ROOT/../shared/data}"
PROFILE="${PREFINE_WEB_PROFILE:-wasm}"
MODEL="$ROOT/models/all-MiniLM-L6-v2"
WORK="$ROOT/target/web"

./scripts/setup.sh
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# wasm-bindgen's CLI must be the exact version of the wasm-bindgen crate in Cargo.lock.
WB_VERSION="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)"
WB_ROOT="$ROOT/target/tools/wasm-bindgen-$WB_VERSION"
WB="$WB_ROOT/bin/wasm-bindgen"
if [ ! -x "$WB" ]; then
  echo "build-web: installing wasm-bindgen-cli $WB_VERSION from crates.io into $WB_ROOT"
  # A debug build of the tool: it compiles in half the time and runs in about a second.
  cargo install -q --debug wasm-bindgen-cli --version "=$WB_VERSION" --root "$WB_ROOT"
fi

echo "build-web: prefine-wasm (profile $PROFILE)"
cargo build -q -p prefine-wasm --target wasm32-unknown-unknown --profile "$PROFILE"
rm -rf web/pkg.partial
"$WB" --target web --out-dir web/pkg.partial "target/wasm32-unknown-unknown/$PROFILE/prefine_wasm.wasm"
rm -rf web/pkg
mv web/pkg.partial web/pkg
WASM="web/pkg/prefine_wasm_bg.wasm"
echo "build-web: $WASM $(stat -c %s "$WASM") bytes, $(gzip -9 -c "$WASM" | wc -c) gzipped"

# The two adapters (reused when their settings have not changed).
if [ -n "${PREFINE_BIN:-}" ]; then
  PREFINE="$PREFINE_BIN"
else
  cargo build -q -p prefine-cli
  PREFINE="$ROOT/target/debug/prefine"
fi
if [ "${PREFINE_WEB_QUICK:-0}" = 1 ]; then
  TRAIN=(--max-train 600 --max-eval 100 --epochs 2 --lr 3e-3)
else
  TRAIN=(--max-train 3000 --max-eval 300 --epochs 2 --lr 2e-3)
fi
train() { # NAME TASK DATASET
  local out="$WORK/adapters/$1" stamp="${TRAIN[*]}"
  if [ -f "$out/metrics.json" ] && [ "$(cat "$out.settings" 2>/dev/null)" = "$stamp" ]; then
    echo "build-web: adapter $1 up to date ($out)"
    return
  fi
  rm -rf "$out"
  mkdir -p "$WORK/adapters"
  echo "build-web: training adapter $1 ($2 on $3, LoRA, ${TRAIN[*]})"
  "$PREFINE" finetune --model "$MODEL" --task "$2" --mode lora --data "$DATA/$2/$3" "${TRAIN[@]}" \
    --out "$out" >"$out.log" 2>&1 || { tail -20 "$out.log" >&2; exit 1; }
  echo "$stamp" >"$out.settings"
}
train ner ner conll2003
train emotion tc emotion

rm -rf "$WORK/bundle" web/bundle
"$PREFINE" export --model "$MODEL" --adapter "ner=$WORK/adapters/ner" \
  --adapter "emotion=$WORK/adapters/emotion" --quantize int8 --out "$WORK/bundle" >/dev/null
cp -r "$WORK/bundle" web/bundle.partial
mv web/bundle.partial web/bundle
echo "build-web: web/bundle ($(du -sh web/bundle | cut -f1)); serve web/ and open index.html"
