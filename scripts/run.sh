#!/usr/bin/env bash
# The main job, set-up included: install the default backbone, build prefine, then run the
# budgeted end-to-end pipeline of configs/quickstart.toml (pre-finetune MTPF-TPL for 100 steps,
# fine-tune heads for the base and the TPL backbone on 2 NER + 2 TC shared tasks at 100% and 10%
# of the capped training data) and print the table. Outputs land in runs/quickstart/ (table.md,
# table.csv, suite.svg, suite.png, results.jsonl); re-running skips finished work.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/setup.sh
cargo build --release -q -p prefine-cli
./target/release/prefine suite --config configs/quickstart.toml "$@"
