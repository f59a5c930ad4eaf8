#!/usr/bin/env bash
# The whole test suite, set-up included: Rust crates (cargo), the default model (pip), the
# on-device targets (rustup targets, Debian's aarch64 cross compiler and qemu-user), then
# formatting, lints, every test of the workspace, the Python package (pip) and its pytest suite,
# the aarch64 kernel tests under qemu, the C ABI end to end on x86-64 and aarch64, and the
# WebAssembly package in headless Chromium (Debian's chromium, npm's puppeteer-core). Extra
# arguments go to `cargo test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$SECONDS
# Each step's start, with the minutes elapsed (the whole run must stay under 35 minutes on 2
# cores).
step() { printf '\n== test.sh [%s, +%d min] %s\n' "$(date +%T)" $(((SECONDS - START) / 60)) "$*"; }
step setup
./scripts/setup.sh
./scripts/setup-ondevice.sh
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi
step fmt
cargo fmt --all -- --check
step import cycles
python3 scripts/check-cycles.py
step clippy
cargo clippy --workspace --all-targets -q -- -D warnings
step cargo test
cargo test --workspace "$@"
# The Python package, built in the dev profile on the artifacts above, and its pytest suite.
step python
PREFINE_PY_PROFILE=dev ./scripts/setup-python.sh
python3 -m pytest -q bindings/python/tests
step aarch64
./scripts/test-aarch64.sh
step ffi
./scripts/test-ffi.sh
step web
./scripts/test-web.sh
step done
