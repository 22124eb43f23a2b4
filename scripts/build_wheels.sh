#!/usr/bin/env bash
# Build the release artefacts into dist/: abi3 manylinux2014 wheels (CPython 3.9+)
# for x86_64 and aarch64, and an sdist. Cross-linking uses zig (from PyPI), which
# links against glibc 2.17 whatever the build machine has; maturin then checks
# every wheel against the manylinux policy it claims (its built-in auditwheel).
#   bash scripts/build_wheels.sh [x86_64] [aarch64]     (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
arches=("$@")
[ ${#arches[@]} -eq 0 ] && arches=(x86_64 aarch64)
python -m pip install -q "maturin>=1.5,<2" ziglang
mkdir -p dist
for arch in "${arches[@]}"; do
    target="$arch-unknown-linux-gnu"
    rustup target add "$target" >/dev/null 2>&1 || true
    start=$SECONDS
    maturin build --release --target "$target" --zig --compatibility manylinux2014 --auditwheel check -o dist
    echo "$arch wheel: $((SECONDS - start)) s"
done
maturin sdist -o dist
ls -l dist
