"""Small helpers the benchmark scripts share: the training protocol of a row, cache keys, mean and spread, atomic
JSON writes."""

from __future__ import annotations

import hashlib
import json
import statistics

from ..files import write_json_atomic


def cache_key(obj) -> str:
    """A short stable key of everything that affects a trained model (for caching benchmark rows)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_json(path: str, result: dict) -> None:
    """Write through a temporary file, so an interrupted run never leaves half a result file."""
    write_json_atomic(path, result)


def training_kwargs(output_dir: str, seed: int, epochs: float, learning_rate: float, batch_size: int, bf16: bool,
                    **overrides) -> dict:
    """The `TrainingArguments` every benchmark row trains with (linear decay, 6% warm-up, weight decay 0.01, no
    evaluation or checkpoints during the run, bf16 autocast on the CPU unless a GPU is there)."""
    from ..hardware import bf16_training_args

    return {
        "output_dir": output_dir, "num_train_epochs": epochs, "learning_rate": learning_rate,
        "per_device_train_batch_size": batch_size, "per_device_eval_batch_size": 64, "weight_decay": 0.01,
        "warmup_steps": 0.06, "seed": seed, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 50,
        "report_to": "none", **bf16_training_args(bf16), "disable_tqdm": True,
        **overrides,
    }
