"""Finding image files: what the command line and the Ray batch job read from
folders (by extension) and from paths named one by one."""

from __future__ import annotations

import os
from typing import Callable

# Extensions of the formats the decoders read (preprocess.IMAGE_FORMATS).
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def expand(inputs: list[str], on_empty: Callable[[str], None] | None = None) -> list[str]:
    """Image files from files and folders (folders: by extension, sorted,
    recursively; ``on_empty`` is told of a folder without any). A path that
    does not exist is a ValueError naming it."""
    files = []
    for p in inputs:
        if os.path.isdir(p):
            found = [os.path.join(root, n) for root, _, names in sorted(os.walk(p)) for n in sorted(names)
                     if os.path.splitext(n)[1].lower() in IMAGE_EXTS]
            if not found and on_empty is not None:
                on_empty(p)
            files += found
        elif os.path.exists(p):
            files.append(p)
        else:
            raise ValueError(f"no such image or folder: {p}")
    return files
