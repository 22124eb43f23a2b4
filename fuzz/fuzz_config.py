"""atheris harness for the config-file reader (``convert --config``: yaml with
its base files, or JSON) and the yacs / runtime config checks after it.

An input is split at the first NUL byte into the named file and one base file
it may name (``base.yaml``); its first byte picks yaml or JSON. Anything but a
ConversionError is a finding; so is a hang (-timeout) or a large allocation
(-rss_limit_mb).

    python fuzz/fuzz_config.py fuzz/corpus_config -max_total_time=600 -rss_limit_mb=2048 -timeout=10
"""

import os
import sys

import atheris

with atheris.instrument_imports():
    import yaml  # noqa: F401  (instrumented too: its scanner and parser read the input)

    from vmamba_rt.convert import _validated, arch_config
    from vmamba_rt.errors import ConversionError

DIR = os.path.join("/dev/shm" if os.path.isdir("/dev/shm") else "/tmp", f"fuzz-config-{os.getpid()}")
os.makedirs(DIR, exist_ok=True)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    main, _, base = data[1:].partition(b"\0")
    name = "config.json" if data[0] & 1 else "config.yaml"
    with open(os.path.join(DIR, name), "wb") as f:
        f.write(main)
    with open(os.path.join(DIR, "base.yaml"), "wb") as f:
        f.write(base)
    try:
        cfg = arch_config(os.path.join(DIR, name), "fuzz.pth")
        _validated(cfg, "fuzz.pth")
    except ConversionError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
