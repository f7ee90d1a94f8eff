"""Writing files so that a crash or a kill never leaves half a file under the real name: write a temporary file
beside it, then rename (`os.replace` is atomic on one file system). Imports nothing of the package (ground floor)."""

from __future__ import annotations

import json
import os
import tempfile


def write_text_atomic(path: str, text: str) -> str:
    """Write `text` to `path` atomically (the folder is created). Returns `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_json_atomic(path: str, data, indent: int = 2) -> str:
    """`json.dump` of `data` to `path`, atomically (values JSON cannot hold are written as strings)."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=str))
