"""atheris harness for the Python checkpoint reader (restricted unpickler + zip).

Each input is either a whole .pth file or (first byte odd) a data.pkl placed in
an archive whose tensor storages are real, so the fuzzer reaches the tensor
records quickly. Anything but CheckpointError / ConversionError is a finding;
so is a hang (-timeout) or a large allocation (-rss_limit_mb).

    python fuzz/fuzz_pth.py fuzz/corpus_pth -max_total_time=600 -rss_limit_mb=2048 -timeout=10
"""

import io
import os
import sys
import zipfile

import atheris

with atheris.instrument_imports():
    from vmamba_rt.checkpoint import CheckpointError, load_pth
    from vmamba_rt.convert import ConversionError, extract_state_dict, infer_config

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "tests", "golden", "v2_s1_small.pth")
TMP = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp", f"fuzz-pth-{os.getpid()}.pth")

with zipfile.ZipFile(GOLDEN) as _z:
    _STORAGES = {n: _z.read(n) for n in _z.namelist() if "/data/" in n}
    _PREFIX = next(n for n in _z.namelist() if n.endswith("data.pkl"))[: -len("data.pkl")]


def _archive(pkl: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(_PREFIX + "data.pkl", pkl)
        for n, b in _STORAGES.items():
            z.writestr(n, b)
    return buf.getvalue()


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    blob = _archive(data[1:]) if data[0] & 1 else data[1:]
    with open(TMP, "wb") as f:
        f.write(blob)
    try:
        ckpt = load_pth(TMP)
        sd, _ = extract_state_dict(ckpt, TMP)
        for t in sd.values():
            t.numpy()
        infer_config(sd, TMP)
    except (CheckpointError, ConversionError):
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
