#!/usr/bin/env bash
# The main job, set-up included. For now: install the default backbone, build prefine, and embed
# a few sentences with it (one JSON line per sentence). Later issues extend this to the full
# pre-finetuning + evaluation pipeline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
cargo build --release -q -p prefine-cli
./target/release/prefine embed --model models/all-MiniLM-L6-v2 \
  "prefine turns one small encoder into a shared backbone for NER and classification." \
  "Barack Obama visited Paris in 2015." \
  "I love this phone, the battery lasts for days."
