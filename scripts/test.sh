#!/usr/bin/env bash
# The project's test command.
#
#   bash scripts/test.sh          build the package in place (incremental: seconds when
#                                 nothing changed), then the core crate's tests and the
#                                 Python tests
#   bash scripts/test.sh --full   what CI runs: the release wheel is built and installed
#                                 instead, and besides: formatting and lints (cargo fmt,
#                                 clippy, ruff), the bindings'
#                                 tests, the NVRTC compile tests of the CUDA kernels (installs
#                                 NVIDIA's compiler packages), the aarch64 tests under qemu,
#                                 the Windows tests under wine, and the wheel in a fresh
#                                 environment without Rust
#
# Outside a virtual environment it makes and uses .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
full=0
[ "${1:-}" = "--full" ] && full=1
step() { echo "=== $1 (at ${SECONDS}s)"; }
if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -d .venv ] || python3 -m venv .venv
    . .venv/bin/activate
fi
python -m pip install -q --upgrade pip "maturin>=1.5,<2"
if [ $full = 1 ]; then
    step "release wheel"
    rm -f dist/vmamba_rt-*x86_64*.whl
    bash scripts/build_wheels.sh x86_64
    wheel=$(ls dist/vmamba_rt-*x86_64*.whl)
    python -m pip install -q --force-reinstall --no-deps "$wheel"
    python -m pip install -q "$wheel[test,ray,nvrtc]"
else
    maturin develop --release -q -E test,ray
fi
step "core crate tests"
cargo test -q -p vmamba-rt
if [ $full = 1 ]; then
    step "format and lints"
    cargo fmt --all --check
    cargo clippy --all-targets -q -- -D warnings
    python -m pip install -q "ruff>=0.6"
    ruff check python tests bench fuzz scripts
    # The core without image decoding (what a Rust app embeds with default-features = false).
    cargo clippy -p vmamba-rt --no-default-features -q -- -D warnings
    step "bindings tests"
    cargo test -q -p vmamba-rt-py
    step "aarch64"
    bash scripts/test_aarch64.sh --install
    cargo clippy -p vmamba-rt --all-targets --target aarch64-unknown-linux-gnu -q -- -D warnings
    bash scripts/check_arm_simd.sh
    step "windows"
    bash scripts/test_windows.sh --install
    step "the wheel without Rust"
    bash scripts/test_wheel.sh "$wheel"
fi
step "Python tests"
python -m pytest -q tests
