"""Speech models: Whisper checkpoints shipped in the CTranslate2 format (faster-whisper's ``model.bin``) converted to
transformers, offline.

`import hfcompress.speech` is cheap: the names below load their module (numpy, torch, transformers) on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "read_ct2_model": ".whisper_ct2",
    "write_ct2_model": ".whisper_ct2",
    "convert_whisper_ct2": ".whisper_ct2",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
