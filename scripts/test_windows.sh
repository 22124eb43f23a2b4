#!/usr/bin/env bash
# The core crate's tests for Windows (x86_64-pc-windows-gnu), cross-compiled with
# Debian's mingw-w64 and run under wine. `--install` first installs the Rust
# target, mingw-w64 and wine (Debian/Ubuntu, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--install" ]; then
    rustup target add x86_64-pc-windows-gnu
    if ! command -v x86_64-w64-mingw32-gcc >/dev/null || ! command -v wine >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-mingw-w64-x86-64 wine64
    fi
fi
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
export WINEDEBUG=-all WINEPREFIX="${WINEPREFIX:-$PWD/target/wineprefix}"
cargo test -q -p vmamba-rt --target x86_64-pc-windows-gnu --no-run
# Wine 8 lacks bcryptprimitives.dll (ProcessPrng), which Rust's std needs: a stand-in beside the tests.
x86_64-w64-mingw32-gcc -O2 -shared -o target/x86_64-pc-windows-gnu/debug/deps/bcryptprimitives.dll \
    scripts/windows/bcryptprimitives.c -ladvapi32
[ -d "$WINEPREFIX" ] || wine wineboot --init
cargo test -p vmamba-rt --target x86_64-pc-windows-gnu --lib --tests  # doctests run on the host
