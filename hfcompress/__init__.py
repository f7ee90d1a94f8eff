"""hfcompress: compression for the Hugging Face stack, as Trainer subclasses and callbacks."""

__version__ = "0.1.0"

from .distill import (  # noqa: E402
    DistillationArguments,
    DistillationCallback,
    DistillationConfig,
    DistillationDataCollator,
    DistillationLoss,
    DistillationTrainer,
    init_student_from_teacher,
)

__all__ = [
    "DistillationArguments",
    "DistillationCallback",
    "DistillationConfig",
    "DistillationDataCollator",
    "DistillationLoss",
    "DistillationTrainer",
    "init_student_from_teacher",
]
