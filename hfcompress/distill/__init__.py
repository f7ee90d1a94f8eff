"""Knowledge distillation: logits, hidden states and attention maps; encoder-decoder speech models (Whisper) by
their decoder logits; CTC models (wav2vec2, HuBERT) by their frame logits; audio classifiers as text classifiers."""

from .arguments import DistillationArguments
from .cache import (
    CacheEstimate,
    compute_encoder_outputs,
    compute_teacher_outputs,
    estimate_teacher_cache,
    load_or_compute_encoder_cache,
    load_or_compute_teacher_cache,
)
from .callback import DistillationCallback
from .checks import check_teacher_head, teacher_needs_own_inputs, untrained_parameters
from .collator import (
    AudioDistillationCollator,
    CTCDistillationCollator,
    DistillationDataCollator,
    SpanDistillationCollator,
    SpeechSeq2SeqDistillationCollator,
    TokenDistillationCollator,
)
from .config import DistillationConfig, parse_layer_map, uniform_layer_map
from .loss import DistillationLoss, TeacherOutputs, check_label_compatibility, is_ctc
from .student import init_seq2seq_student, init_student_from_teacher
from .trainer import DistillationTrainer

__all__ = [
    "CacheEstimate",
    "DistillationArguments",
    "DistillationCallback",
    "DistillationConfig",
    "AudioDistillationCollator",
    "CTCDistillationCollator",
    "DistillationDataCollator",
    "DistillationLoss",
    "DistillationTrainer",
    "SpanDistillationCollator",
    "SpeechSeq2SeqDistillationCollator",
    "TokenDistillationCollator",
    "TeacherOutputs",
    "check_label_compatibility",
    "check_teacher_head",
    "compute_encoder_outputs",
    "compute_teacher_outputs",
    "estimate_teacher_cache",
    "init_seq2seq_student",
    "is_ctc",
    "init_student_from_teacher",
    "load_or_compute_encoder_cache",
    "load_or_compute_teacher_cache",
    "parse_layer_map",
    "teacher_needs_own_inputs",
    "uniform_layer_map",
    "untrained_parameters",
]
