"""Writing files so that a crash or a kill never leaves half a file under the real name: write a temporary file
beside it, then rename (`os.replace` is atomic on one file system). One helper for every file the package writes
whole (records, cards, plots, JSON results, converted weights). Imports nothing of the package (ground floor)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".tmp"):
    """Yield a temporary path beside `path` (same folder, created if needed) to write to; on success it is renamed to
    `path`, on an error removed. `suffix` keeps an extension a writer needs (``".png"`` for matplotlib)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> str:
    """Write `text` to `path` atomically. Returns `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def write_bytes_atomic(path: str, data: bytes) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def write_json_atomic(path: str, data, indent: int = 2) -> str:
    """`json.dump` of `data` to `path`, atomically (values JSON cannot hold are written as strings)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=str))
