from __future__ import annotations

from dataclasses import dataclass

from ..distill.arguments import DistillationArguments
from .config import PruningConfig


@dataclass
class PruningArguments(DistillationArguments, PruningConfig):
    """`TrainingArguments` + distillation fields + pruning fields: one `HfArgumentParser` reads a pruning run that may
    also distil (set `alpha`, `hidden_weight`, ... as in `scripts/distill.py`)."""

    def __post_init__(self):
        PruningConfig.__post_init__(self)
        DistillationArguments.__post_init__(self)

    def pruning_config(self) -> PruningConfig:
        return PruningConfig.from_any(self)
