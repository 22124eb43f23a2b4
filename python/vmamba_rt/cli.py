"""The ``vmamba-rt`` command line: convert, classify, batch and serve (on Ray), export (ONNX), models, download.

Results go to stdout, one image after another; progress, warnings and errors go
to stderr. ``classify`` goes on past images it cannot read, reports each, and
exits with status 1 at the end if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


def shown(text: str, encoding: str | None = None) -> str:
    """``text`` as one printable line: as it is when every character prints in
    ``encoding`` (stdout's), else in double quotes with C-style escapes, as git
    quotes paths: a newline cannot forge a result line, and a name whose bytes
    are not UTF-8 (surrogate escapes) prints as its bytes in octal."""
    encoding = encoding or getattr(sys.stdout, "encoding", None) or "utf-8"

    def plain(ch: str) -> bool:
        if not ch.isprintable() or ch in _ESCAPES:
            return False
        try:
            ch.encode(encoding)
            return True
        except UnicodeEncodeError:  # also every surrogate escape
            return False

    if all(plain(ch) for ch in text):
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif plain(ch):
            out.append(ch)
        else:
            try:
                raw = ch.encode("utf-8", "surrogateescape")  # a byte of a name that is not UTF-8
            except UnicodeEncodeError:
                raw = ch.encode("utf-8", "surrogatepass")  # a lone surrogate from JSON
            out.extend(f"\\{b:03o}" for b in raw)
    return '"' + "".join(out) + '"'


def _warn(msg: str) -> None:
    print(f"vmamba-rt: warning: {msg}", file=sys.stderr)


def _error(msg: str) -> None:
    print(f"vmamba-rt: error: {msg}", file=sys.stderr)


def _cmd_convert(args) -> int:
    import warnings

    from .convert import ArchitectureGuessWarning, convert

    dst = args.output or os.path.splitext(args.src)[0] + ".safetensors"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ArchitectureGuessWarning)
        convert(args.src, dst, ema=args.ema, preset=args.preset, config=args.config, prefix=args.prefix)
    for w in caught:
        _warn(str(w.message))
    print(f"wrote {dst}")
    return 0


def _expand(inputs: list[str]) -> list[str]:
    """Image files from files and folders, saying which folders hold none."""
    from .imagefiles import IMAGE_EXTS, expand

    return expand(inputs, lambda p: _warn(f"no images in {p} (looked for {', '.join(sorted(IMAGE_EXTS))})"))


def _emit(args, path: str, preds=None, error: str | None = None, bar=None) -> None:
    """One image's result on stdout (and its error on stderr), above the progress bar if any."""
    if args.json:
        row = {"image": path}
        if error is None:
            row["top"] = [{"label": label, "prob": round(p, 6)} for label, p in preds]
        else:
            row["error"] = error
        lines = [json.dumps(row)]
    elif error is None:
        lines = [shown(path)] + [f"  {prob:7.2%}  {shown(label)}" for label, prob in preds]
    else:
        lines = []
    write = (lambda s, file: bar.write(s, file=file)) if bar is not None else (lambda s, file: print(s, file=file))
    for line in lines:
        write(line, sys.stdout)
    if error is not None:
        write(f"vmamba-rt: error: {shown(path)}: {error}", sys.stderr)


def _cmd_classify(args) -> int:
    from . import load
    from .errors import VMambaError

    model = load(args.model, device=args.device, dtype=args.dtype, num_threads=args.threads)
    files = _expand(args.images)
    failed = 0
    bar = None
    if sys.stderr.isatty() and len(files) > 1 and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="img", file=sys.stderr, leave=False)
    try:
        for i in range(0, len(files), args.batch):
            chunk = files[i : i + args.batch]
            # Decode each image on its own, so that one bad file costs only itself.
            batch, good = [], []
            for path in chunk:
                try:
                    batch.append(model.preprocess(path))
                    good.append(path)
                except (VMambaError, OSError, TypeError) as e:
                    failed += 1
                    _emit(args, path, error=str(e).replace(f"cannot read image {path!r}: ", ""), bar=bar)
            if batch:
                import numpy as np

                preds = model.classify(np.stack(batch), topk=args.topk, multi_label=args.multi_label)
                for path, p in zip(good, preds):
                    _emit(args, path, p, bar=bar)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if failed:
        _error(f"{failed} of {len(files)} images could not be classified")
        return 1
    return 0


def _model_rows() -> list[dict]:
    from . import DEFAULT_MODEL, hub

    rows = [{"name": "digits (default)", "top1": None, "params_m": None, "downloaded": True,
             "path": DEFAULT_MODEL, "url": None}]
    for m in hub.registry()["models"]:
        path = hub.cached_path(m["name"])
        rows.append({"name": m["name"], "top1": m["top1"], "params_m": m["params_m"],
                     "downloaded": os.path.exists(path), "path": path, "url": hub.url(m)})
    return rows


def _cmd_models(args) -> int:
    rows = _model_rows()
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"{'name':<22} {'top-1':>5} {'params':>7} {'downloaded':>10}  url")
    for r in rows:
        top1 = f"{r['top1']:>5.1f}" if r["top1"] is not None else f"{'-':>5}"
        params = f"{r['params_m']:>6}M" if r["params_m"] is not None else f"{'-':>7}"
        have = "yes" if r["downloaded"] else "no"
        print(f"{r['name']:<22} {top1} {params} {have:>10}  {r['url'] or 'bundled with the package'}")
    return 0


def _cmd_download(args) -> int:
    from . import hub

    path = hub.download(args.name, force=args.force)
    print(f"{args.name}: {path}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be 0 (all cores) to 1024, got {value}")
    return value


def _result_row(row: dict) -> dict:
    """A Ray Data output row as the JSON that `classify --json` prints."""
    out = {"image": row.get("path", "<in memory>")}
    if row.get("error"):
        out["error"] = row["error"]
    else:
        out["top"] = [{"label": str(label), "prob": round(float(p), 6)} for label, p in zip(row["labels"], row["probs"])]
    return out


def _ray_init(address: str | None):
    # Ray reports usage to its makers unless told not to; we do not phone home.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    try:
        import ray
    except ImportError:
        raise OSError("Ray is not installed: pip install 'vmamba-rt[ray]'") from None
    host, _, port = (address or "").rpartition(":")
    if host and port.isdigit():  # Ray retries an unreachable address for minutes: fail fast instead
        import socket

        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as e:
            raise OSError(f"cannot reach a Ray cluster at {address}: {e}") from None
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    return ray


def _cmd_batch(args) -> int:
    ray = _ray_init(args.ray)
    from . import ray as vray

    ds = vray.read_inputs(args.inputs)
    out = vray.classify_dataset(ds, args.model, topk=args.topk, concurrency=args.workers, batch_size=args.batch,
                                num_cpus=args.cpus_per_worker, num_threads=args.threads, device=args.device,
                                dtype=args.dtype)
    try:
        total, failed = _write_results(ray, out, args.output)
    except ray.exceptions.RayError as e:  # a worker failed; its own error ends the message
        raise OSError(f"the Ray job failed: {str(e).strip().splitlines()[-1][:500]}") from None
    if args.output:
        print(f"wrote {total} results to {args.output}", file=sys.stderr)
    if failed:
        _error(f"{failed} of {total} images could not be classified (see their 'error' field)")
        return 1
    return 0


def _write_results(ray, out, output: str | None) -> tuple[int, int]:
    """Results to a folder of Parquet files, a JSONL file, or stdout: (count, failed)."""
    failed = total = 0
    if output and not output.endswith(".jsonl"):
        out.write_parquet(output)  # a folder of Parquet files, written by the workers
        for row in ray.data.read_parquet(output).select_columns(["error"]).iter_rows():
            total += 1
            failed += bool(row["error"])
        return total, failed
    sink = open(output, "w", encoding="utf-8") if output else sys.stdout
    try:
        for row in out.iter_rows():
            total += 1
            failed += bool(row["error"])
            print(json.dumps(_result_row(row)), file=sink)
    finally:
        if sink is not sys.stdout:
            sink.close()
    return total, failed


def _cmd_serve(args) -> int:
    import time

    _ray_init(args.ray)
    from ray import serve

    from . import ray as vray

    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(vray.deployment(args.model, topk=args.topk, num_replicas=args.replicas,
                              num_cpus=args.cpus_per_worker, num_threads=args.threads,
                              max_batch_size=args.batch, device=args.device, dtype=args.dtype,
                              max_body_bytes=args.max_body_mb << 20, body_timeout_s=args.body_timeout,
                              max_ongoing_requests=args.max_ongoing),
              name="vmamba-rt", route_prefix="/")
    print(f"serving at http://{args.host}:{args.port}/ : POST an image, get its top {args.topk} as JSON "
          "(Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def _cmd_export(args) -> int:
    from .onnx_export import ExportError, export_onnx

    size = args.input_size
    if size is not None and len(size) > 2:
        raise ExportError(f"--input-size takes a side or a height and a width, got {len(size)} numbers")
    info = export_onnx(args.model, args.output, input_size=None if size is None else tuple(size * (3 - len(size))),
                       batch=args.batch, outputs=args.outputs, dtype=args.dtype, opset=args.opset, scan=args.scan)
    batch = "dynamic batch" if args.batch is None else f"batch {args.batch}"
    print(f"wrote {shown(info.path)}: {batch}, input {info.input_shape[2]}x{info.input_shape[3]}, outputs "
          f"{', '.join(info.outputs)}; {info.nodes} nodes, {info.bytes / 1e6:.1f} MB in {info.seconds:.1f} s")
    return 0


def _add_ray_options(p, worker: str) -> None:
    p.add_argument("--ray", metavar="ADDRESS", help="the cluster (e.g. 127.0.0.1:6379 or auto); default: a local Ray")
    p.add_argument("--cpus-per-worker", type=float, default=1, help=f"CPUs Ray reserves for each {worker}")


def _add_model_options(p, *, batch: int, batch_help: str) -> None:
    p.add_argument("--model", help="weights path or downloaded registry name (default: the bundled digits model)")
    p.add_argument("--topk", type=_positive, default=5, help="best classes to return per image")
    p.add_argument("--batch", type=_positive, default=batch, help=batch_help)
    p.add_argument("--threads", type=_threads, default=None,
                   help="CPU worker threads per model (0: all cores; default: $VMAMBA_RT_NUM_THREADS or all cores)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="precision (bfloat16 on the CPU: bf16 weights, f32 arithmetic; float16 on cuda only)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .ray import BODY_TIMEOUT_S, MAX_BODY_BYTES, MAX_ONGOING_REQUESTS

    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="vmamba-rt", description="Run VMamba vision models without PyTorch.",
                                formatter_class=fmt)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert an official .pth checkpoint to safetensors", formatter_class=fmt)
    c.add_argument("src", help="checkpoint written by torch.save (.pth)")
    c.add_argument("-o", "--output", help="output .safetensors path (default: SRC with .safetensors)")
    c.add_argument("--ema", action="store_true", help="take the model_ema weights of a training checkpoint")
    c.add_argument("--prefix", help="strip this prefix from the weight names (e.g. visual_encoder.); "
                                    "weights without it are dropped")
    arch = c.add_mutually_exclusive_group()
    arch.add_argument("--preset", metavar="NAME", help="the architecture is this registry preset (see `models`)")
    arch.add_argument("--config", metavar="FILE", help="the architecture from the official yaml config (or a runtime .json)")
    c.set_defaults(func=_cmd_convert)

    k = sub.add_parser("classify", help="classify images (files or folders)", formatter_class=fmt)
    k.add_argument("images", nargs="+", metavar="IMG_OR_DIR", help="image files, or folders searched recursively")
    _add_model_options(k, batch=8, batch_help="images per forward pass")
    k.add_argument("--json", action="store_true", help="one JSON object per image (an 'error' field for failures)")
    k.add_argument("--multi-label", action="store_true",
                   help="independent sigmoid probabilities per class (multi-label heads) instead of softmax")
    k.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    k.set_defaults(func=_cmd_classify)

    b = sub.add_parser("batch", help="classify many images on a Ray cluster (Ray Data)", formatter_class=fmt)
    b.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders, .txt lists of paths, or Parquet files (path, image or bytes column)")
    _add_ray_options(b, "actor")
    b.add_argument("-o", "--output", help="results: a .jsonl file, or a folder of Parquet files (default: JSONL on stdout)")
    b.add_argument("--workers", type=_positive, default=1, help="model actors (each loads the model once)")
    _add_model_options(b, batch=16, batch_help="images per batch handed to an actor")
    b.set_defaults(func=_cmd_batch)

    v = sub.add_parser("serve", help="serve the model over HTTP with Ray Serve", formatter_class=fmt)
    _add_ray_options(v, "replica")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on")
    v.add_argument("--port", type=_positive, default=8000, help="port to listen on")
    v.add_argument("--replicas", type=_positive, default=1, help="model replicas")
    v.add_argument("--max-body-mb", type=_positive, default=MAX_BODY_BYTES >> 20,
                   help="largest request body (MiB): larger ones get 413 before they are read")
    v.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT_S,
                   help="seconds a request body may take to arrive (then 408)")
    v.add_argument("--max-ongoing", type=_positive, default=MAX_ONGOING_REQUESTS,
                   help="requests a replica takes at once, slow uploads included")
    _add_model_options(v, batch=16, batch_help="most requests batched into one forward pass")
    v.set_defaults(func=_cmd_serve)

    from .onnx_export import DEFAULT_OPSET, DTYPES, OUTPUTS, SCAN_FORMS

    e = sub.add_parser("export", help="export a model to ONNX (for ONNX Runtime, OpenVINO, TensorRT)",
                       formatter_class=fmt)
    e.add_argument("model", nargs="?", help="weights path or downloaded registry name (default: the bundled digits model)")
    e.add_argument("-o", "--output", default="model.onnx", help="the .onnx file to write")
    e.add_argument("--input-size", type=_positive, nargs="+", metavar=("H", "W"),
                   help="input height and width fixed in the graph (one number: a square; default: the model's "
                        "preprocessing size)")
    batch = e.add_mutually_exclusive_group()
    batch.add_argument("--dynamic-batch", action="store_const", const=None, dest="batch",
                       help="any batch size at run time (the default)")
    batch.add_argument("--batch", type=_positive, help="a fixed batch size instead")
    e.add_argument("--outputs", choices=OUTPUTS, help="what the graph returns (default: logits, or a backbone's features)")
    e.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="float16: weights and activations in fp16, the scan and the outputs in fp32")
    e.add_argument("--scan", choices=SCAN_FORMS, default="chunked", help="how the selective scan is written")
    e.add_argument("--opset", type=_positive, default=DEFAULT_OPSET, help="ONNX opset")
    e.set_defaults(func=_cmd_export)

    m = sub.add_parser("models", help="list the bundled and the official models", formatter_class=fmt)
    m.add_argument("--json", action="store_true", help="one JSON object per model")
    m.set_defaults(func=_cmd_models)

    d = sub.add_parser("download", help="download, verify and convert an official model", formatter_class=fmt)
    d.add_argument("name", help="a registry name (see `models`)")
    d.add_argument("--force", action="store_true", help="download again even if cached")
    d.set_defaults(func=_cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    import warnings

    args = build_parser().parse_args(argv)
    # Warnings as the CLI's own lines, not Python's (file, line and source).
    warnings.showwarning = lambda message, *_, **__: _warn(str(message))
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as e:  # our errors carry a message that names the problem
        _error(str(e))
        return 1
    except MemoryError as e:
        _error(f"out of memory: {e}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
