#!/usr/bin/env bash
# Install the package with its test dependencies, then run the Rust and Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q ".[test]"
cargo test -p vmamba-rt
python -m pytest -q tests
