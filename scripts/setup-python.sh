#!/usr/bin/env bash
# Builds and installs the Python package (bindings/python, module `prefine`) into the current
# python3 with pip: maturin (the build backend), numpy (the package's one runtime dependency)
# and pytest from PyPI, then the package from this repository (nothing is downloaded at run
# time). Release build by default; PREFINE_PY_PROFILE=dev builds the dev profile instead, which
# reuses what `cargo test --workspace` left in target/debug (the test command does this).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v python3 >/dev/null || { echo "setup-python: python3 (with pip) is needed" >&2; exit 1; }
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install --quiet "maturin>=1.9.4,<2" numpy pytest
if [ "${PREFINE_PY_PROFILE:-release}" = dev ]; then
  export MATURIN_PEP517_ARGS="--profile dev --strip"   # stripped: a 16 MB wheel, not 260 MB
fi
# --no-build-isolation: build with the maturin installed above instead of fetching it again.
python3 -m pip install --quiet --no-build-isolation --no-deps --force-reinstall "$ROOT/bindings/python"
python3 -c 'import prefine; print(f"setup-python: prefine {prefine.__version__} installed")'
