"""Per-architecture knowledge: where the layers are, how wide they are, how to rebuild a shallower copy.

Every method that needs to know a model's structure (layer selection for students, hidden-state maps, and later
head/FFN pruning) asks an adapter from `get_adapter(model)` instead of probing attribute names itself.
"""

from . import encoders, speech  # noqa: F401  (register the BERT-class and speech adapters)
from .base import (
    ArchAdapter,
    AttentionLayout,
    StackLayout,
    UnsupportedArchitectureError,
    get_adapter,
    get_submodule,
    model_class_for,
    register_adapter,
    structured_model_types,
    supported_model_types,
    task_head_names,
    unwrap_model,
)
from .capture import QKVCapture

__all__ = [
    "ArchAdapter",
    "AttentionLayout",
    "QKVCapture",
    "StackLayout",
    "UnsupportedArchitectureError",
    "get_adapter",
    "get_submodule",
    "model_class_for",
    "register_adapter",
    "structured_model_types",
    "supported_model_types",
    "task_head_names",
    "unwrap_model",
]
