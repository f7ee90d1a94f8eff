"""Writing files so that a crash or a kill never leaves half a file under the real name: write a temporary file
beside it, then rename (`os.replace` is atomic on one file system). One helper for every file the package writes
whole (records, cards, plots, JSON results, converted weights). Imports nothing of the package (ground floor)."""

from __future__ import annotations

import contextlib
import json
import os
import re
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


# ---- local paths in what is published (cards, records, JSON beside the weights)

def local_paths(value) -> set[str]:
    """Every absolute local path a record names: its values, and the words of its command lines."""
    found: set[str] = set()
    if isinstance(value, dict):
        for v in value.values():
            found |= local_paths(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found |= local_paths(v)
    elif isinstance(value, str):
        for word in value.replace("=", " ").split():
            word = word.strip("'\"`(),;:")
            if len(word) > 1 and os.path.isabs(word) and "://" not in word:
                found.add(word.rstrip("/"))
    return found


def short_path(path: str) -> str:
    """A local folder as a published card names it: its last two names (``.../prune/model``), which say what it was
    without the machine's layout (a home folder, a user name)."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    return ".../" + "/".join(parts[-2:]) if len(parts) > 2 else path


def public_text(text: str, record) -> str:
    """`text` with every local path `record` names (`local_paths`) shortened (`short_path`): what a card or a file
    published on the Hub shows."""
    for path in sorted(local_paths(record), key=len, reverse=True):
        text = re.sub(r"(?<![\w./-])" + re.escape(path) + r"(?![\w.-])", short_path(path), text)
    return text


def public_json_text(text: str) -> str:
    """A JSON file's text with the local paths its values name shortened (`public_text`), as a push uploads it;
    the text unchanged when it is not JSON or names none."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return public_text(text, value)
