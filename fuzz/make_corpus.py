"""Seed corpora from the golden checkpoints: whole files (first byte even) and
their data.pkl alone (first byte odd; see fuzz_pth.py), plus the converted
safetensors files for the Rust loader."""

import glob
import os
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
pth_dir = os.path.join(HERE, "corpus_pth")
st_dir = os.path.join(HERE, "corpus", "load_weights")
os.makedirs(pth_dir, exist_ok=True)
os.makedirs(st_dir, exist_ok=True)
for path in sorted(glob.glob(os.path.join(ROOT, "tests", "golden", "*.pth"))):
    name = os.path.basename(path)[:-4]
    blob = open(path, "rb").read()
    if len(blob) < 1_000_000:
        open(os.path.join(pth_dir, name + ".whole"), "wb").write(b"\x00" + blob)
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    open(os.path.join(pth_dir, name + ".pkl"), "wb").write(b"\x01" + pkl)
for path in sorted(glob.glob(os.path.join(ROOT, "rust", "vmamba-rt", "tests", "data", "*.safetensors"))):
    blob = open(path, "rb").read()
    open(os.path.join(st_dir, os.path.basename(path)), "wb").write(blob[: 300_000])
print("corpus ready")
