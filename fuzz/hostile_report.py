"""Time and peak memory of the worst hostile inputs, each in a fresh process.

    python fuzz/hostile_report.py

Prints a Markdown table: what the file is, its size, how it was refused, wall
time and the child's peak RSS. The files are made by ``tests/hostile.py``.
"""

import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import hostile  # noqa: E402

CONVERT = """
import sys, vmamba_rt
try:
    vmamba_rt.convert(sys.argv[1], sys.argv[1] + ".safetensors")
    print("converted")
except (vmamba_rt.VMambaError, MemoryError) as e:
    print(type(e).__name__ + ": " + str(e).replace(sys.argv[1], "FILE")[:90])
"""
READ = """
import sys, vmamba_rt
from vmamba_rt.checkpoint import LazyTensor, load_pth
try:
    ckpt = load_pth(sys.argv[1])
    sd = ckpt.get("model", ckpt)
    [t.numpy() for t in sd.values() if isinstance(t, LazyTensor)]
    print("read")
except vmamba_rt.VMambaError as e:
    print(type(e).__name__ + ": " + str(e).replace(sys.argv[1], "FILE")[:90])
"""
PREDICT = """
import sys, vmamba_rt
try:
    vmamba_rt.load().predict(sys.argv[1])
    print("classified")
except vmamba_rt.VMambaError as e:
    print(type(e).__name__ + ": " + str(e).replace(sys.argv[1], "FILE")[:90])
"""
FORWARD = """
import resource, numpy as np, vmamba_rt
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
m = vmamba_rt.Model.random("vmamba-tiny-s1l8", num_threads=1)
try:
    m(np.zeros((1, 3, 6000, 6000), np.float32))
except MemoryError as e:
    print("MemoryError: " + str(e)[:90])
"""


REPORT_RSS = "\nimport resource\nprint('__RSS_KB__', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"


def measure(code: str, arg: str = "") -> tuple[str, float, float, int]:
    """Result line, wall time, the child's own peak RSS (MB) and exit code."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code + REPORT_RSS, arg], capture_output=True, text=True)
    seconds = time.monotonic() - start
    lines = proc.stdout.strip().splitlines()
    rss = [int(line.split()[1]) / 1024 for line in lines if line.startswith("__RSS_KB__")]
    out = next((line for line in lines if not line.startswith("__RSS_KB__")), proc.stderr.strip()[-90:])
    return out, seconds, rss[0] if rss else float("nan"), proc.returncode


def main() -> None:
    tmp = tempfile.mkdtemp()
    cases = [
        ("tuple key nested 200,000 deep", CONVERT, lambda p: hostile.write_nested_key(p, 200_000)),
        ("memo index 163,000 after STOP", CONVERT, hostile.write_memo_bomb),
        ("64 MiB of opcodes, deflated", CONVERT, lambda p: hostile.write_opcode_flood(p, 64)),
        ("30 MiB of opcodes, deflated", CONVERT, lambda p: hostile.write_opcode_flood(p, 30)),
        ("storage inflating to 4 GiB", READ, lambda p: hostile.write_storage_bomb(p, 4096)),
        ("256 views of one 64 MB storage", READ,
         lambda p: hostile.write_shared_storage_views(p, 256, 16 << 20)),
        ("6,000 stages of keys", CONVERT, lambda p: hostile.write_many_keys(p, 6000, 1)),
        ("BUILD on the storage type", CONVERT, lambda p: hostile.write_build_attack(p, "storage type")),
        ("PNG declaring 100000x100000", PREDICT, lambda p: hostile.write_huge_png(p)),
    ]
    print("| input | file size | result | time | peak RSS |")
    print("|---|---|---|---|---|")
    for i, (what, code, make) in enumerate(cases):
        path = os.path.join(tmp, f"case{i}.png" if code is PREDICT else f"case{i}.pth")
        make(path)
        out, secs, rss, rc = measure(code, path)
        size = os.path.getsize(path)
        result = out if rc == 0 else f"exit {rc}: {out}"
        print(f"| {what} | {size / 1e3:,.0f} KB | {result} | {secs:.2f} s | {rss:.0f} MB |")
    out, secs, rss, rc = measure(FORWARD)
    print(f"| forward 1x3x6000x6000 under a 3 GB limit | - | {out if rc == 0 else f'exit {rc}'} | "
          f"{secs:.2f} s | {rss:.0f} MB |")


if __name__ == "__main__":
    main()
