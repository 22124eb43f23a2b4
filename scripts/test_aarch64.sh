#!/usr/bin/env bash
# The core crate's tests for 64-bit ARM: cross-compiled with Debian's aarch64 gcc
# as the linker and run under qemu-user. `--install` first installs the Rust
# target, the cross compiler and qemu (Debian/Ubuntu, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--install" ]; then
    rustup target add aarch64-unknown-linux-gnu
    if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
    fi
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test -p vmamba-rt --target aarch64-unknown-linux-gnu
