"""Seed corpora from the golden checkpoints: whole files (first byte even) and
their data.pkl alone (first byte odd; see fuzz_pth.py), plus the converted
safetensors files for the Rust loader."""

import glob
import os
import sys
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
# The hostile pickles of the tests, as seeds for their neighbourhoods.
sys.path.insert(0, os.path.join(ROOT, "tests"))
import hostile  # noqa: E402

seeds = {f"build_{i}": hostile.build_on(t, hostile.POISON_STATE) for i, t in enumerate(hostile.BUILD_TARGETS.values())}
seeds["nested"] = hostile.PROTO + b"}N" + b"\x85" * 120 + b"Ns."
seeds["records"] = hostile.PROTO + hostile.dict_of({"a": hostile.tensor_record("0", 4, [2, 2])}) + b"."
for name, pkl in seeds.items():
    open(os.path.join(pth_dir, name + ".pkl"), "wb").write(b"\x01" + pkl)
for path in sorted(glob.glob(os.path.join(ROOT, "rust", "vmamba-rt", "tests", "data", "*.safetensors"))):
    blob = open(path, "rb").read()
    open(os.path.join(st_dir, os.path.basename(path)), "wb").write(blob[: 300_000])
print("corpus ready")
