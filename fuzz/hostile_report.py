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

DEFAULT = os.path.join(HERE, "..", "python", "vmamba_rt", "weights", "digits.safetensors")

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


CONFIG = """
import sys, vmamba_rt
from vmamba_rt.convert import arch_config
try:
    arch_config(sys.argv[1], "x.pth")
    print("read")
except vmamba_rt.VMambaError as e:
    print(type(e).__name__ + ": " + str(e).replace(sys.argv[1], "FILE")[:90])
"""
LOAD = """
import sys, vmamba_rt
try:
    vmamba_rt.load(sys.argv[1])
    print("loaded")
except vmamba_rt.VMambaError as e:
    print(type(e).__name__ + ": " + str(e).replace(sys.argv[1], "FILE")[:90])
"""
IMAGE = """
import sys, vmamba_rt
from vmamba_rt.preprocess import load_rgb
try:
    print("decoded", load_rgb(sys.argv[1]).size)
except vmamba_rt.VMambaError as e:
    print(type(e).__name__ + ": " + str(e).replace(sys.argv[1], "FILE")[:90])
"""


def write_integer_image(path: str, mode: str, fmt: str) -> None:
    """A 9459 x 9459 gray image of a 16- or 32-bit integer mode (under a MB compressed)."""
    from PIL import Image

    extra = {"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {}
    Image.new(mode, (9459, 9459), 40000).save(path, fmt, **extra)


def write_eps(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n")


# The child's own peak (VmHWM): ru_maxrss would count the parent's size at the fork.
REPORT_RSS = ("\nprint('__RSS_KB__', next(int(l.split()[1]) for l in open('/proc/self/status')"
              " if l.startswith('VmHWM')))\n")


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
    configs = hostile.write_hostile_configs(tmp)
    for name in ("deep.yaml", "deep.json", "base60.yaml", "long_int.yaml", "laughs.yaml", "too_long.yaml",
                 "many_values.yaml", "fan0.yaml", "fifo.yaml"):
        cases.append((f"config {name}", CONFIG, configs[name][0]))
    for entry, kind in (("vmamba_rt.preprocess", "mean_string"), ("vmamba_rt.preprocess", "mean_list"),
                        ("vmamba_rt.labels", "label_lists")):
        cases.append((f"90 MB {entry} ({kind})", LOAD,
                      lambda p, e=entry, k=kind: hostile.write_amplifying_metadata(DEFAULT, p, e, k)))
    cases += [("9459x9459 mode-I TIFF", IMAGE, lambda p: write_integer_image(p, "I", "TIFF")),
              ("9459x9459 I;16 PNG", IMAGE, lambda p: write_integer_image(p, "I;16", "PNG")),
              ("EPS (would run Ghostscript)", IMAGE, write_eps)]
    print("| input | file size | result | time | peak RSS |")
    print("|---|---|---|---|---|")
    ext = {PREDICT: ".png", LOAD: ".safetensors", IMAGE: ".img"}
    for i, (what, code, make) in enumerate(cases):
        if isinstance(make, str):  # made already
            path = make
        else:
            path = os.path.join(tmp, f"case{i}{ext.get(code, '.pth')}")
            make(path)
        out, secs, rss, rc = measure(code, path)
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        result = out if rc == 0 else f"exit {rc}: {out}"
        print(f"| {what} | {size / 1e3:,.0f} KB | {result} | {secs:.2f} s | {rss:.0f} MB |")
    out, secs, rss, rc = measure(FORWARD)
    print(f"| forward 1x3x6000x6000 under a 3 GB limit | - | {out if rc == 0 else f'exit {rc}'} | "
          f"{secs:.2f} s | {rss:.0f} MB |")


if __name__ == "__main__":
    main()
