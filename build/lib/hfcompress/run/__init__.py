"""The run layer: steps every script shares (data, teacher, student, train, evaluate, save, record) and the runs
composed of them. Methods (`distill/`, later `prune/`, `quantize/`) never import this package; it composes them."""

from .arguments import DataArguments, ModelArguments
from .distill import run_distillation
from .finetune import FinetuneConfig, finetune_classifier, has_task_head, prepare_teacher
from .report import ReportArguments

__all__ = [
    "DataArguments",
    "FinetuneConfig",
    "ModelArguments",
    "ReportArguments",
    "finetune_classifier",
    "has_task_head",
    "prepare_teacher",
    "run_distillation",
]
