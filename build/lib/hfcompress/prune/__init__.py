"""Pruning during training: unstructured (magnitude, movement, soft movement) with compact sparse checkpoints, and
structured (attention heads, feed-forward neurons, blocks) with physical removal and checkpoints that reload with or
without hfcompress."""

from .callback import PruningCallback
from .config import PruningConfig
from .pruner import Pruner
from .schedule import CubicSchedule
from .sparse import is_sparse_checkpoint, load_sparse, save_dense, save_sparse
from .structure import apply_structure, pruned_class
from .structured import StructuredPruner, make_pruner
from .structured_io import is_structured_checkpoint, load_structured, save_structured

__all__ = [
    "CubicSchedule",
    "Pruner",
    "PruningCallback",
    "PruningConfig",
    "StructuredPruner",
    "apply_structure",
    "is_sparse_checkpoint",
    "is_structured_checkpoint",
    "load_sparse",
    "load_structured",
    "make_pruner",
    "pruned_class",
    "save_dense",
    "save_sparse",
    "save_structured",
]
