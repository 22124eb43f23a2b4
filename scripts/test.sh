#!/usr/bin/env bash
# The project's test command.
#
#   bash scripts/test.sh          build the package in place (incremental: seconds when
#                                 nothing changed), then the core crate's tests and the
#                                 Python tests
#   bash scripts/test.sh --full   also formatting and lints, the bindings' tests, the NVRTC
#                                 compile tests of the CUDA kernels (installs NVIDIA's
#                                 compiler packages), the aarch64 tests under qemu, the
#                                 Windows tests under wine, and the built wheel in a fresh
#                                 environment without Rust (what CI runs)
#
# Outside a virtual environment it makes and uses .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
[ "${1:-}" = "--full" ] && full=1
if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -d .venv ] || python3 -m venv .venv
    . .venv/bin/activate
fi
python -m pip install -q --upgrade pip "maturin>=1.5,<2"
extras=test,ray
[ $full = 1 ] && extras=test,ray,nvrtc
maturin develop --release -q -E "$extras"
cargo test -q -p vmamba-rt
if [ $full = 1 ]; then
    cargo fmt --all --check
    cargo clippy --all-targets -q -- -D warnings
    cargo test -q -p vmamba-rt-py
    bash scripts/test_aarch64.sh --install
    bash scripts/check_arm_simd.sh
    bash scripts/test_windows.sh --install
    bash scripts/test_wheel.sh
fi
python -m pytest -q tests
