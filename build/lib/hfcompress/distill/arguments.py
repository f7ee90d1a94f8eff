from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments

from .config import DistillationConfig


@dataclass
class DistillationArguments(TrainingArguments, DistillationConfig):
    """`TrainingArguments` plus the fields of `DistillationConfig` (temperature, alpha, hidden/attention weights,
    layer map), so one `HfArgumentParser` reads them all from flags or a config file."""

    def __post_init__(self):
        DistillationConfig.__post_init__(self)
        TrainingArguments.__post_init__(self)

    def distillation_config(self) -> DistillationConfig:
        return DistillationConfig.from_any(self)
