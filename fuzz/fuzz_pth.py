"""atheris harness for the Python checkpoint reader (restricted unpickler + zip).

Each input is either a whole .pth file or (first byte odd) a data.pkl placed in
an archive whose tensor storages are real, so the fuzzer reaches the tensor
records quickly. Anything but the readers' own errors (VMambaError and its
subclasses) is a finding; so is a hang (-timeout) or a large allocation
(-rss_limit_mb). The pickle pre-scan is native code that atheris does not
instrument: the inputs reach it, but coverage is measured on the Python side.

    python fuzz/fuzz_pth.py fuzz/corpus_pth -max_total_time=600 -rss_limit_mb=2048 -timeout=10
"""

import io
import os
import sys
import zipfile

import atheris

with atheris.instrument_imports():
    from vmamba_rt.checkpoint import load_pth
    from vmamba_rt.convert import config_from_yacs, extract_state_dict, infer_config
    from vmamba_rt.errors import VMambaError

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
        if isinstance(ckpt, dict):
            config_from_yacs(ckpt.get("config"), TMP)
        infer_config(sd, TMP)
        for t in sd.values():
            t.numpy()
    except VMambaError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
