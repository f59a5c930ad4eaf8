#!/usr/bin/env bash
# Cross tests for aarch64 under qemu-user (issue 21 item 4). Needs the Rust target
# aarch64-unknown-linux-gnu (`rustup target add aarch64-unknown-linux-gnu`) and Debian's
# gcc-aarch64-linux-gnu and qemu-user. Timings under emulation mean nothing: tests only.
#
#   scripts/test-aarch64.sh
#
# Kernels: prefine-kernels' tests run on every family the emulated CPU supports (scalar, NEON,
# and NEON with SDOT on qemu's default `max` CPU), then once more on a Cortex-A53 model
# (ARMv8.0: NEON without `dotprod`) for the int8 tests, so both int8 paths run.
# The runtime, the C ABI and the C example on aarch64 are tested by scripts/test-ffi.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET=aarch64-unknown-linux-gnu
SYSROOT="${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER:-qemu-aarch64 -L $SYSROOT}"
for tool in aarch64-linux-gnu-gcc qemu-aarch64; do
  command -v "$tool" >/dev/null || { echo "test-aarch64: $tool missing (apt-get install gcc-aarch64-linux-gnu qemu-user)" >&2; exit 1; }
done

echo "== prefine-kernels on aarch64 (qemu default CPU: NEON + dotprod)" >&2
cargo test -q -p prefine-kernels --target "$TARGET"
echo "== prefine-kernels on aarch64 without dotprod (QEMU_CPU=cortex-a53)" >&2
QEMU_CPU=cortex-a53 cargo test -q -p prefine-kernels --target "$TARGET" --lib -- qgemm cpu::
