"""atheris harness for the metadata a converted file carries: preprocessing and
labels as the Python package reads them at ``load()``, and the same entries
through the native core (its size checks and its preprocessing parser).

An input is split at NUL bytes into the ``vmamba_rt.preprocess`` and
``vmamba_rt.labels`` entries and a number of classes. Anything but a
VMambaError is a finding; so is a hang (-timeout) or a large allocation
(-rss_limit_mb).

    python fuzz/fuzz_metadata.py fuzz/corpus_metadata -max_total_time=600 -rss_limit_mb=2048 -timeout=10
"""

import os
import sys

import atheris

with atheris.instrument_imports():
    from vmamba_rt import _native
    from vmamba_rt.errors import VMambaError
    from vmamba_rt.labels import labels_from_metadata
    from vmamba_rt.preprocess import Preprocess

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGE = os.path.join(HERE, "..", "examples", "images", "digit_3.png")
PREPROCESS, LABELS = _native.FORMAT["preprocess"], _native.FORMAT["labels"]


def TestOneInput(data: bytes) -> None:
    parts = data.split(b"\0", 2) + [b"", b""]
    pre, labels, classes = (p.decode("utf-8", "replace") for p in parts[:3])
    meta = {PREPROCESS: pre, LABELS: labels}
    num_classes = int.from_bytes(classes.encode()[:2] or b"\0", "little")
    try:
        p = Preprocess.from_metadata(meta)
        p(IMAGE) if p.input_size <= 256 else None
    except VMambaError:
        pass
    try:
        labels_from_metadata(meta, num_classes)
    except VMambaError:
        pass
    try:
        if len(pre) < 512:  # decoding the image each time would slow the search
            _native.preprocess_file(IMAGE, pre)
    except VMambaError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
