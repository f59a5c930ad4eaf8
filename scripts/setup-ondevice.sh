#!/usr/bin/env bash
# Idempotent set-up for the on-device targets: the Rust targets (aarch64 Linux, aarch64
# Android, wasm32) and Debian's aarch64 cross compiler and user-mode emulator. Called by
# scripts/test.sh; installs only what is missing.
set -euo pipefail
targets=(aarch64-unknown-linux-gnu aarch64-linux-android wasm32-unknown-unknown)
installed="$(rustup target list --installed)"
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
echo "setup-ondevice: targets ${targets[*]}, $(aarch64-linux-gnu-gcc --version | head -1), $(qemu-aarch64 --version | head -1)"
