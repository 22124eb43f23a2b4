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


def seeds(folder: str) -> None:
    """Seed inputs: official-style yacs yaml with a base, and runtime JSON."""
    os.makedirs(folder, exist_ok=True)
    yacs = (b"MODEL:\n  TYPE: vssm\n  NAME: vssm1_tiny\n  VSSM:\n    EMBED_DIM: 96\n    DEPTHS: [ 2, 2, 5, 2 ]\n"
            b"    SSM_D_STATE: 1\n    SSM_DT_RANK: \"auto\"\n    SSM_RATIO: 2.0\n    SSM_CONV: 3\n"
            b"    SSM_CONV_BIAS: false\n    SSM_FORWARDTYPE: \"v05_noz\"\n    MLP_RATIO: 4.0\n"
            b"    DOWNSAMPLE: \"v3\"\n    PATCHEMBED: \"v2\"\n")
    inputs = {
        "yacs": b"\0" + yacs,
        "based": b"\0_BASE_: [base.yaml]\nMODEL:\n  VSSM: {EMBED_DIM: 8}\n\0" + yacs,
        "runtime": b"\1" + b'{"dims": 8, "depths": [1, 1], "ssm_d_state": 1, "ssm_ratio": 2.0, "ssm_conv_bias": false, '
                           b'"forward_type": "v05_noz", "mlp_ratio": 4.0, "patchembed_version": "v2", '
                           b'"downsample_version": "v3", "num_classes": 10}',
    }
    for name, blob in inputs.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    if args and not os.path.isfile(args[0]):  # a corpus folder, not one input to rerun
        seeds(args[0])
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
