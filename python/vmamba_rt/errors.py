"""The exceptions of vmamba-rt: one hierarchy under :class:`VMambaError`.

``VMambaError`` (a ``ValueError``) comes from the native core; everything here
derives from it, so ``except vmamba_rt.VMambaError`` catches every refusal.
Running out of memory is a plain ``MemoryError``, and operating-system failures
(a missing file, a full disk) stay ``OSError``; the messages name the file or
argument either way.
"""

from __future__ import annotations

from ._native import VMambaError


class ConversionError(VMambaError):
    """The checkpoint cannot be turned into a runnable model; the message says why."""


class CheckpointError(ConversionError):
    """The file is not a checkpoint this reader understands, or it is damaged or hostile."""


class DownloadError(VMambaError):
    """A registry download failed or did not yield the expected checkpoint."""


__all__ = ["VMambaError", "ConversionError", "CheckpointError", "DownloadError"]
