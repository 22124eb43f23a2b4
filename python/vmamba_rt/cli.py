"""The ``vmamba-rt`` command line."""

from __future__ import annotations

import argparse
import sys


def _cmd_convert(args) -> int:
    from .convert import convert

    dst = args.output or (args.src.rsplit(".", 1)[0] + ".safetensors")
    convert(args.src, dst, ema=args.ema)
    print(f"wrote {dst}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmamba-rt", description="Run VMamba vision models without PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert an official .pth checkpoint to safetensors")
    c.add_argument("src", help="checkpoint written by torch.save (.pth)")
    c.add_argument("-o", "--output", help="output .safetensors path (default: SRC with .safetensors)")
    c.add_argument("--ema", action="store_true", help="take the model_ema weights of a training checkpoint")
    c.set_defaults(func=_cmd_convert)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:  # our errors are ValueErrors with a message that names the problem
        print(f"vmamba-rt: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
