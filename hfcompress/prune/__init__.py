"""Unstructured pruning (magnitude, movement, soft movement) during training: config, schedule, masks, pruner,
callback, and compact sparse checkpoints."""

from .callback import PruningCallback
from .config import PruningConfig
from .pruner import Pruner
from .schedule import CubicSchedule
from .sparse import is_sparse_checkpoint, load_sparse, save_dense, save_sparse

__all__ = [
    "CubicSchedule",
    "Pruner",
    "PruningCallback",
    "PruningConfig",
    "is_sparse_checkpoint",
    "load_sparse",
    "save_dense",
    "save_sparse",
]
