"""The ``vmamba-rt`` command line: convert, classify, models, download."""

from __future__ import annotations

import argparse
import json
import os
import sys

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _cmd_convert(args) -> int:
    import warnings

    from .convert import ArchitectureGuessWarning, convert

    dst = args.output or os.path.splitext(args.src)[0] + ".safetensors"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ArchitectureGuessWarning)
        convert(args.src, dst, ema=args.ema, preset=args.preset, config=args.config)
    for w in caught:
        print(f"vmamba-rt: warning: {w.message}", file=sys.stderr)
    print(f"wrote {dst}")
    return 0


def _expand(inputs: list[str]) -> list[str]:
    files = []
    for p in inputs:
        if os.path.isdir(p):
            for root, _, names in sorted(os.walk(p)):
                files += [os.path.join(root, n) for n in sorted(names) if os.path.splitext(n)[1].lower() in IMAGE_EXTS]
        elif os.path.exists(p):
            files.append(p)
        else:
            raise ValueError(f"no such image or folder: {p}")
    return files


def _cmd_classify(args) -> int:
    from . import load

    model = load(args.model)
    files = _expand(args.images)
    bar = sys.stderr.isatty() and len(files) > 1 and not args.json
    for i in range(0, len(files), args.batch):
        chunk = files[i : i + args.batch]
        for path, preds in zip(chunk, model.predict(chunk, topk=args.topk, batch_size=args.batch)):
            if args.json:
                print(json.dumps({"image": path, "top": [{"label": l, "prob": round(p, 6)} for l, p in preds]}))
            else:
                print(path)
                for label, prob in preds:
                    print(f"  {prob:7.2%}  {label}")
        if bar:
            done = min(i + args.batch, len(files))
            sys.stderr.write(f"\r[{'#' * (30 * done // len(files)):<30}] {done}/{len(files)}")
            sys.stderr.flush()
    if bar:
        sys.stderr.write("\n")
    return 0


def _cmd_models(args) -> int:
    from . import hub

    print(f"{'name':<22} {'top-1':>5} {'params':>7} {'downloaded':>10}  url")
    for m in hub.registry()["models"]:
        have = "yes" if os.path.exists(hub.cached_path(m["name"])) else "no"
        print(f"{m['name']:<22} {m['top1']:>5.1f} {m['params_m']:>6}M {have:>10}  {hub.url(m)}")
    return 0


def _cmd_download(args) -> int:
    from . import hub

    path = hub.download(args.name, force=args.force)
    print(f"{args.name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmamba-rt", description="Run VMamba vision models without PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert an official .pth checkpoint to safetensors")
    c.add_argument("src", help="checkpoint written by torch.save (.pth)")
    c.add_argument("-o", "--output", help="output .safetensors path (default: SRC with .safetensors)")
    c.add_argument("--ema", action="store_true", help="take the model_ema weights of a training checkpoint")
    arch = c.add_mutually_exclusive_group()
    arch.add_argument("--preset", metavar="NAME", help="the architecture is this registry preset (see `models`)")
    arch.add_argument("--config", metavar="FILE", help="the architecture from the official yaml config (or a runtime .json)")
    c.set_defaults(func=_cmd_convert)

    k = sub.add_parser("classify", help="classify images (files or folders)")
    k.add_argument("images", nargs="+", metavar="IMG_OR_DIR")
    k.add_argument("--model", help="weights path or downloaded registry name (default: the bundled digits model)")
    k.add_argument("--topk", type=int, default=5)
    k.add_argument("--batch", type=int, default=8)
    k.add_argument("--json", action="store_true", help="one JSON object per image")
    k.set_defaults(func=_cmd_classify)

    m = sub.add_parser("models", help="list the official models of the registry")
    m.set_defaults(func=_cmd_models)

    d = sub.add_parser("download", help="download, verify and convert an official model")
    d.add_argument("name")
    d.add_argument("--force", action="store_true", help="download again even if cached")
    d.set_defaults(func=_cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch", 1) < 1 or getattr(args, "topk", 1) < 1:
        print("vmamba-rt: error: --batch and --topk must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as e:  # our errors carry a message that names the problem
        print(f"vmamba-rt: error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:
        print(f"vmamba-rt: error: out of memory: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
