"""Optional parts of hfcompress and the extra that installs each (`pip install 'hfcompress[onnx]'`). A missing one is
one line naming the extra, raised where the part is first needed (never at `import hfcompress`). Ground floor."""

from __future__ import annotations

import importlib.util

from .errors import UserInputError

# extra -> the packages it installs (pyproject.toml's optional dependencies)
EXTRAS = {
    "onnx": ("onnx", "onnxruntime"),
    "bnb": ("bitsandbytes",),
    "lora": ("peft",),
    "speech": ("soundfile",),
    "plots": ("matplotlib",),
}


class MissingExtraError(UserInputError, ImportError):
    """An optional part is used and its packages are not installed (the message names the extra)."""


def missing(extra: str) -> list[str]:
    return [p for p in EXTRAS[extra] if importlib.util.find_spec(p) is None]


def has_extra(extra: str) -> bool:
    return not missing(extra)


def require_extra(extra: str, what: str) -> None:
    """Raise `MissingExtraError` if `extra`'s packages are not all installed: `what` needs them."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(f"{what} needs {', '.join(absent)}, which is not installed: "
                                f"pip install 'hfcompress[{extra}]'")
