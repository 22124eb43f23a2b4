#!/usr/bin/env bash
# The project's test command: install the package with its test dependencies,
# check the Rust code (format, lints), then run the Rust and the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q ".[test]"
cargo fmt --all --check
cargo clippy --all-targets -q -- -D warnings
cargo test -p vmamba-rt -p vmamba-rt-py
python -m pytest -q tests
