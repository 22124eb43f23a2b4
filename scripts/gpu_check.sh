#!/usr/bin/env bash
# The checks a change to the CUDA path needs on an NVIDIA GPU machine: the GPU
# test suite, then bench/bench_cuda.py, optionally beside a baseline wheel in
# the same run (timings are only comparable on one machine).
#
#   bash scripts/gpu_check.sh WHEEL [BASE_WHEEL BASE_BENCH_SCRIPT]
#
# Installs each wheel into its own folder (no network needed: numpy, Pillow,
# safetensors, CuPy and pytest must be there already); logs go to $OUT (or
# ./gpu-check) as tests.log, parity.log, bench.log, bench.json and base-bench.*.
set -uo pipefail
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
install() { rm -rf "$2" && "$py" -m pip install -q --no-index --no-deps --no-compile --target "$2" "$1"; }
install "$1" /tmp/vmamba-new || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# The CUDA tests, and every test that runs on each device (the `device` fixture).
PYTHONPATH=/tmp/vmamba-new "$py" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_variants.py \
    tests/test_golden.py tests/test_inputs.py tests/test_usage.py 2>&1 | tee "$out/tests.log" | tail -25
status=${PIPESTATUS[0]}
PYTHONPATH=/tmp/vmamba-new "$py" bench/parity_cuda.py 2>&1 | tee "$out/parity.log" | tail -5
if [ $# -ge 3 ]; then
    install "$2" /tmp/vmamba-base || exit 1
    PYTHONPATH=/tmp/vmamba-base "$py" "$3" --json "$out/base-bench.json" 2>&1 | tee "$out/base-bench.log"
fi
PYTHONPATH=/tmp/vmamba-new "$py" bench/bench_cuda.py --json "$out/bench.json" 2>&1 | tee "$out/bench.log"
exit "$status"
