"""Seed corpora from the golden checkpoints: whole files (first byte even) and
their data.pkl alone (first byte odd; see fuzz_pth.py), plus the converted
safetensors files for the Rust loader, and official-style configs and
metadata entries for fuzz_config.py and fuzz_metadata.py."""

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
from vmamba_rt.preprocess import Preprocess  # noqa: E402

import hostile  # noqa: E402

seeds = {f"build_{i}": hostile.build_on(t, hostile.POISON_STATE) for i, t in enumerate(hostile.BUILD_TARGETS.values())}
seeds["nested"] = hostile.PROTO + b"}N" + b"\x85" * 120 + b"Ns."
seeds["records"] = hostile.PROTO + hostile.dict_of({"a": hostile.tensor_record("0", 4, [2, 2])}) + b"."
for name, pkl in seeds.items():
    open(os.path.join(pth_dir, name + ".pkl"), "wb").write(b"\x01" + pkl)
for path in sorted(glob.glob(os.path.join(ROOT, "rust", "vmamba-rt", "tests", "data", "*.safetensors"))):
    blob = open(path, "rb").read()
    open(os.path.join(st_dir, os.path.basename(path)), "wb").write(blob[: 300_000])

# fuzz_config.py: first byte even for yaml, odd for JSON; a NUL, then the base file.
YACS = (b"MODEL:\n  TYPE: vssm\n  NAME: vssm1_tiny\n  VSSM:\n    EMBED_DIM: 96\n    DEPTHS: [ 2, 2, 5, 2 ]\n"
        b"    SSM_D_STATE: 1\n    SSM_DT_RANK: \"auto\"\n    SSM_RATIO: 2.0\n    SSM_CONV: 3\n"
        b"    SSM_CONV_BIAS: false\n    SSM_FORWARDTYPE: \"v05_noz\"\n    MLP_RATIO: 4.0\n"
        b"    DOWNSAMPLE: \"v3\"\n    PATCHEMBED: \"v2\"\n")
config_seeds = {
    "yacs": b"\0" + YACS,
    "based": b"\0_BASE_: [base.yaml]\nMODEL:\n  VSSM: {EMBED_DIM: 8}\n\0" + YACS,
    "runtime": b"\1" + b'{"dims": 8, "depths": [1, 1], "ssm_d_state": 1, "ssm_ratio": 2.0, "ssm_conv_bias": false, '
                       b'"forward_type": "v05_noz", "mlp_ratio": 4.0, "patchembed_version": "v2", '
                       b'"downsample_version": "v3", "num_classes": 10}',
}
# fuzz_metadata.py: the preprocessing entry, a NUL, the labels, a NUL, the class count.
metadata_seeds = {
    "default": Preprocess().to_json().encode() + b'\0["zero", "one", "two"]\0\3',
    "squash": b'{"input_size": 32, "resize": "squash", "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5]}\0[]\0\0',
}
for folder, blobs in (("corpus_config", config_seeds), ("corpus_metadata", metadata_seeds)):
    os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    for name, blob in blobs.items():
        open(os.path.join(HERE, folder, name), "wb").write(blob)
print("corpus ready")
