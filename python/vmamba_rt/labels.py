"""Class names: ImageNet-1K ships with the package; models carry theirs in metadata."""

from __future__ import annotations

import functools
import json
from importlib import resources

from ._native import FORMAT

META_LABELS = FORMAT["labels"]


@functools.lru_cache(maxsize=1)
def _imagenet() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1K class names in class-index order."""
    return list(_imagenet())


def labels_from_metadata(metadata: dict, num_classes: int) -> list[str]:
    """Names stored in the weights, else class indices as strings. The entry's
    size is checked against what ``num_classes`` names can need before it is parsed."""
    from ._native import check_metadata_sizes
    from .errors import VMambaError

    raw = metadata.get(META_LABELS)
    if raw and not isinstance(raw, str):
        raise VMambaError(f"{META_LABELS} must be a JSON list of names")
    if raw:
        check_metadata_sizes({META_LABELS: raw}, num_classes)  # the core's bound, before parsing
    try:
        labels = json.loads(raw) if raw else []
    except (ValueError, RecursionError) as e:
        raise VMambaError(f"{META_LABELS} is not valid JSON: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(labels, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in labels):
        raise VMambaError(f"{META_LABELS} must be a JSON list of names")
    if len(labels) != num_classes:
        return [str(i) for i in range(num_classes)]
    return [str(v) for v in labels]
