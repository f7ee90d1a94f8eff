"""Small helpers the benchmark scripts share: cache keys, mean and spread, atomic JSON writes."""

from __future__ import annotations

import hashlib
import json
import os
import statistics


def cache_key(obj) -> str:
    """A short stable key of everything that affects a trained model (for caching benchmark rows)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_json(path: str, result: dict) -> None:
    """Write through a temporary file, so an interrupted run never leaves half a result file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    os.replace(tmp, path)
