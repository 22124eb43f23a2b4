"""An exclusive lock on an open file, held until the file is closed or its
process ends: one conversion writing a part file, one download of a model.

POSIX ``flock``; on Windows, ``msvcrt`` locks the file's first byte. Imported
where a lock is taken, so that the package imports everywhere."""

from __future__ import annotations


def lock(fd: int, *, wait: bool = True) -> None:
    """Lock ``fd`` exclusively; without ``wait`` raise OSError if another holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_LOCK if wait else msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
