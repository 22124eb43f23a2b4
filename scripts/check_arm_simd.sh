#!/usr/bin/env bash
# Show that the hot kernels run vectorised on aarch64: disassemble the aarch64
# build of the core crate (made by scripts/test_aarch64.sh) and count the NEON
# floating-point vector instructions (fmul/fadd/fmla/fmax/... on v registers)
# in each kernel. A kernel with none fails the check.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(ls -t target/aarch64-unknown-linux-gnu/debug/deps/vmamba_rt-* 2>/dev/null | grep -v '\.d$' | head -1)
[ -n "$bin" ] || { echo "no aarch64 test binary: run scripts/test_aarch64.sh first" >&2; exit 1; }
dump=$(mktemp)
aarch64-linux-gnu-objdump -d --no-show-raw-insn -C "$bin" > "$dump"
status=0
printf '%-58s %s\n' "kernel (aarch64, $(basename "$bin"))" "NEON float vector instructions"
for kernel in kernels::scan::scan_task_dispatch kernels::norm::layer_norm_chunk kernels::conv::dwconv_chunk \
              kernels::act::act_chunk kernels::gemm::block; do
    n=$(awk -v k="$kernel" '/^[0-9a-f]+ <.*>:$/ { inside = index($0, k) > 0 } inside' "$dump" \
        | grep -cE '\s(fmul|fadd|fsub|fmla|fmls|fmax|fmin|fdiv|fneg|fabs|frintm|fcvtzs|scvtf)\s+v[0-9]+\.(4s|2d)' || true)
    printf '%-58s %s\n' "$kernel" "$n"
    [ "$n" -gt 0 ] || status=1
done
rm -f "$dump"
exit $status
