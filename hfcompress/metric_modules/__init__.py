"""Local `evaluate` metric modules shipped with hfcompress: ``accuracy``, ``f1``, ``wer`` (WER and CER) and
``entity_f1`` (entity-level precision / recall / F1 of tag sequences, seqeval's definitions) and ``squad`` (exact match
and F1 of extractive answers, SQuAD v1.1 / v2.0 definitions).

Each sub-folder holds ``<name>/<name>.py``, an `evaluate.Metric` subclass, so that
``evaluate.load(metric_module_path(name))`` reads it from disk and never from the Hub (works with
``HF_HUB_OFFLINE=1``). `hfcompress.metrics.load_metric` does that once per name. The sub-folders are packages (an
empty ``__init__.py``) only so that setuptools ships their scripts in the wheel.
"""

from __future__ import annotations

import os

METRIC_MODULES = ("accuracy", "f1", "wer", "entity_f1", "squad")


def metric_module_path(name: str) -> str:
    """The folder of the local metric module `name` (what `evaluate.load` takes)."""
    if name not in METRIC_MODULES:
        raise ValueError(f"no local metric module {name!r}; there are {list(METRIC_MODULES)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
