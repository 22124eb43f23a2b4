"""Batch and online inference on a Ray cluster (``pip install 'vmamba-rt[ray]'``).

- :class:`Predictor`: a callable class for ``ray.data.Dataset.map_batches``. Each
  actor loads the model once; batches of decoded images (``image``), image paths
  (``path``) or encoded bytes (``bytes``) go in, top-k labels and probabilities
  (or logits) come out. :func:`classify_dataset` wires it up with an actor pool.
- :func:`deployment`: a Ray Serve application. POST an encoded image, get its
  top-k as JSON; requests are batched with ``@serve.batch``. A bad image gets a
  400 with the reason, and the replica goes on serving.

Paths must be readable from every node that runs an actor (a shared file
system, or a single machine); so must the model file, or use a registry name
that each node has downloaded.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import VMambaError

INPUT_COLUMNS = ("image", "path", "bytes")


def _decoded(value):
    """What a batch cell holds, as ``Preprocess`` reads it (anything else it refuses by type)."""
    return bytes(value) if isinstance(value, (bytearray, memoryview)) else value


class Predictor:
    """Classify the images of a Ray Data batch with one model loaded per actor.

    ``model``, ``device``, ``dtype`` and ``num_threads`` are passed to
    :func:`vmamba_rt.load`. A batch is a dict of columns holding one of
    ``image`` (uint8 arrays), ``path`` or ``bytes``; every other column is passed
    through. Output columns: ``label`` (the best class), ``labels`` and ``probs``
    (the ``topk`` best, best first), ``error`` ("" when the image was classified;
    a failed image gets empty labels and NaN probabilities), and with
    ``logits=True`` also ``logits``.
    """

    def __init__(self, model=None, *, topk: int = 5, logits: bool = False, multi_label: bool = False,
                 num_threads: int | None = None, device: str = "cpu", dtype: str = "float32"):
        from . import load

        self.model = load(model, device=device, dtype=dtype, num_threads=num_threads)
        self.topk = min(topk, len(self.model.labels))
        self.logits = logits
        self.multi_label = multi_label

    def __call__(self, batch: dict) -> dict:
        column = next((c for c in INPUT_COLUMNS if c in batch), None)
        if column is None:
            raise VMambaError(f"a batch needs one of the columns {INPUT_COLUMNS}; got {sorted(batch)}")
        cells = list(batch[column])
        n, k = len(cells), self.topk
        labels = np.full((n, k), "", dtype=object)
        probs = np.full((n, k), np.nan, dtype=np.float32)
        errors = np.full(n, "", dtype=object)
        good, pixels = [], []
        for i, cell in enumerate(cells):
            try:
                pixels.append(self.model.preprocess(_decoded(cell)))
                good.append(i)
            except (VMambaError, OSError, TypeError) as e:
                errors[i] = str(e)
        out = {name: value for name, value in batch.items() if name not in ("image", "bytes")}
        if good:
            x = np.stack(pixels)
            raw = self.model(x)
            for i, top in zip(good, self.model.classify_logits(raw, k, multi_label=self.multi_label)):
                labels[i] = [label for label, _ in top]
                probs[i] = [p for _, p in top]
            if self.logits:
                full = np.full((n, raw.shape[1]), np.nan, dtype=np.float32)
                full[good] = raw
                out["logits"] = full
        out.update(label=labels[:, 0].copy(), labels=labels, probs=probs, error=errors)
        return out


def classify_dataset(ds, model=None, *, topk: int = 5, concurrency: int = 1, batch_size: int = 16,
                     num_cpus: float = 1, num_threads: int | None = None, device: str = "cpu",
                     dtype: str = "float32", logits: bool = False, multi_label: bool = False):
    """``ds.map_batches`` with a pool of ``concurrency`` :class:`Predictor` actors,
    each given ``num_cpus`` CPUs (and a GPU when ``device="cuda"``)."""
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs=dict(model=model, topk=topk, logits=logits, multi_label=multi_label,
                                   num_threads=num_threads, device=device, dtype=dtype),
        batch_size=batch_size, batch_format="numpy", concurrency=concurrency, num_cpus=num_cpus,
        num_gpus=1 if device == "cuda" else 0,
    )


def read_inputs(inputs: list[str]):
    """A dataset of images from folders and image files (a ``path`` column), text
    files listing one path per line, or Parquet files (with a ``path``, ``image``
    or ``bytes`` column)."""
    import ray

    from .imagefiles import IMAGE_EXTS, expand

    parquet = [p for p in inputs if p.endswith(".parquet") or (os.path.isdir(p) and any(
        n.endswith(".parquet") for n in os.listdir(p)))]
    if parquet:
        if len(parquet) != len(inputs):
            raise VMambaError("give either Parquet files or images, not both")
        ds = ray.data.read_parquet(parquet)
        columns = ds.schema().names
        if not set(columns) & set(INPUT_COLUMNS):
            raise VMambaError(f"{parquet}: a column named one of {INPUT_COLUMNS} is needed; found {columns}")
        return ds
    paths = []
    for p in inputs:
        if p.endswith(".txt") and os.path.isfile(p):
            with open(p, encoding="utf-8") as f:
                paths += [line.strip() for line in f if line.strip()]
        else:
            paths += expand([p])
    if not paths:
        raise VMambaError(f"no images found in {inputs} (looked for {', '.join(sorted(IMAGE_EXTS))})")
    return ray.data.from_items([{"path": os.path.abspath(p)} for p in paths])


# The HTTP endpoint's defaults: a body larger than any real image is refused
# before it is read whole, and a slow one is cut off, so that neither can hold
# the replica's memory or its request slots for long.
MAX_BODY_BYTES = 32 << 20
BODY_TIMEOUT_S = 10.0
MAX_ONGOING_REQUESTS = 16


class _BodyTooLarge(Exception):
    pass


class _LengthRequired(Exception):
    pass


async def read_body(request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, refused (``_BodyTooLarge``) past ``max_bytes`` — by its
    Content-Length before a byte is read, or as it streams in (a client that
    lies) — refused without one (``_LengthRequired``), and cut off
    (``asyncio.TimeoutError``) if it takes more than ``timeout_s`` in all."""
    import asyncio

    length = request.headers.get("content-length")
    if length is None:
        # A chunked body reaches the replica in batches that Ray's proxy sizes,
        # not we: one held 100 MB of a 200 MB body before a byte could be counted.
        raise _LengthRequired
    if not length.isdigit() or int(length) > max_bytes:
        raise _BodyTooLarge
    body = bytearray()

    async def read():
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_bytes:
                raise _BodyTooLarge

    await asyncio.wait_for(read(), timeout_s)
    return bytes(body)


def deployment(model=None, *, topk: int = 5, num_replicas: int = 1, num_cpus: float = 1,
               num_threads: int | None = None, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005,
               device: str = "cpu", dtype: str = "float32", max_body_bytes: int = MAX_BODY_BYTES,
               body_timeout_s: float = BODY_TIMEOUT_S, max_ongoing_requests: int = MAX_ONGOING_REQUESTS):
    """A Ray Serve application classifying POSTed images: ``serve.run(deployment(...))``.

    Response: ``{"top": [{"label": ..., "prob": ...}, ...]}``; a body that is not a
    readable image gets HTTP 400 with ``{"error": ...}``, one over
    ``max_body_bytes`` 413 (refused by its Content-Length before it is read),
    one without a Content-Length 411, one that takes over ``body_timeout_s`` to
    arrive 408. Each replica takes ``max_ongoing_requests`` requests at once
    (slow uploads included).
    """
    import asyncio

    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    for name, value, kind in (("max_body_bytes", max_body_bytes, int), ("body_timeout_s", body_timeout_s, (int, float)),
                              ("max_ongoing_requests", max_ongoing_requests, int)):
        if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
            what = "number" if kind is not int else "whole number"
            raise VMambaError(f"{name} must be a positive {what}, got {value!r}")

    @serve.deployment(num_replicas=num_replicas, max_ongoing_requests=max_ongoing_requests,
                      ray_actor_options={"num_cpus": num_cpus, "num_gpus": 1 if device == "cuda" else 0})
    class VMambaClassifier:
        def __init__(self):
            from . import load

            self.model = load(model, device=device, dtype=dtype, num_threads=num_threads)
            self.topk = min(topk, len(self.model.labels))

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def _classify(self, images: list[np.ndarray]) -> list:
            return self.model.classify(np.stack(images), self.topk)

        async def __call__(self, request: Request):
            try:
                body = await read_body(request, max_body_bytes, body_timeout_s)
            except _BodyTooLarge:
                return JSONResponse({"error": f"the body is over the limit of {max_body_bytes} bytes"},
                                    status_code=413)
            except _LengthRequired:
                return JSONResponse({"error": "the request needs a Content-Length header"}, status_code=411)
            except asyncio.TimeoutError:
                return JSONResponse({"error": f"the body took over {body_timeout_s} s to arrive"}, status_code=408)
            try:
                x = self.model.preprocess(body)
            except (VMambaError, OSError, TypeError) as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            finally:
                del body  # not held while the batch is gathered
            top = await self._classify(x)
            return {"top": [{"label": label, "prob": round(p, 6)} for label, p in top]}

        def check_health(self):
            self.model(np.zeros((1, 3, self.model.min_size, self.model.min_size), np.float32))

    return VMambaClassifier.bind()
