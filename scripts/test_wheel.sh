#!/usr/bin/env bash
# Install the x86_64 wheel into a fresh virtual environment on a PATH without
# cargo or rustc, then run the README's quick start and the Python tests there.
#   bash scripts/test_wheel.sh [WHEEL]     (default: build it with scripts/build_wheels.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=${1:-}
if [ -z "$wheel" ]; then
    rm -f dist/vmamba_rt-*x86_64*.whl
    bash scripts/build_wheels.sh x86_64
    wheel=$(ls dist/vmamba_rt-*x86_64*.whl)
fi
env_dir=$(mktemp -d)
trap 'rm -rf "$env_dir"' EXIT
python3 -m venv "$env_dir/venv"
# Only the venv and the system's own folders: no ~/.cargo/bin.
clean_path="$env_dir/venv/bin:/usr/local/bin:/usr/bin:/bin"
run() { env -i HOME="$env_dir" PATH="$clean_path" LANG=C.UTF-8 "$@"; }
if run sh -c 'command -v cargo || command -v rustc'; then
    echo "test_wheel: a Rust toolchain is on the clean PATH; the test would prove nothing" >&2
    exit 1
fi
run python -m pip install -q "$wheel" pytest pyyaml
echo "--- quick start from the wheel:"
run vmamba-rt classify examples/images/digit_3.png
echo "--- Python tests against the installed wheel:"
# A copy of the tests, away from the source tree, so that only the installed package is importable.
cp -r tests examples README.md "$env_dir/"
(cd "$env_dir" && run python -m pytest -q -p no:cacheprovider tests)
