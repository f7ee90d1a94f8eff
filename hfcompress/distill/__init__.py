"""Knowledge distillation: logits, hidden states and attention maps."""

from .arguments import DistillationArguments
from .cache import compute_teacher_outputs, load_or_compute_teacher_cache
from .callback import DistillationCallback
from .collator import DistillationDataCollator
from .config import DistillationConfig, parse_layer_map, uniform_layer_map
from .loss import DistillationLoss, TeacherOutputs, check_label_compatibility
from .student import init_student_from_teacher
from .trainer import DistillationTrainer

__all__ = [
    "DistillationArguments",
    "DistillationCallback",
    "DistillationConfig",
    "DistillationDataCollator",
    "DistillationLoss",
    "DistillationTrainer",
    "TeacherOutputs",
    "check_label_compatibility",
    "compute_teacher_outputs",
    "init_student_from_teacher",
    "load_or_compute_teacher_cache",
    "parse_layer_map",
    "uniform_layer_map",
]
