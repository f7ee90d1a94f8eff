"""Building a shallower student from a teacher's own layers (DistilBERT-style initialisation)."""

from __future__ import annotations

import copy
import logging

import torch.nn as nn

from ..arch import get_adapter

logger = logging.getLogger(__name__)


def init_student_from_teacher(teacher: nn.Module, layers: list[int] | None = None, num_layers: int | None = None) -> nn.Module:
    """Return a copy of `teacher` that keeps only the blocks `layers` (0-based, in order).

    Embeddings, pooler and task head are copied too, so the student starts where the teacher is. With `num_layers`
    instead of `layers`, every k-th block is taken, ending on the last one (e.g. 6 -> 3 keeps blocks 1, 3, 5).
    Works for any architecture with an adapter (BERT, RoBERTa, MPNet, DistilBERT, ...).
    """
    adapter = get_adapter(teacher)
    total = adapter.num_layers(teacher.config)
    if layers is None:
        if not num_layers or not 0 < num_layers <= total:
            raise ValueError(f"num_layers must be in 1..{total}, got {num_layers}")
        step = total / num_layers
        layers = [int(round((i + 1) * step)) - 1 for i in range(num_layers)]
    layers = list(layers)
    if not layers:
        raise ValueError("layers must name at least one block")
    bad = [i for i in layers if not 0 <= i < total]
    if bad:
        raise ValueError(f"layers {bad} out of range: the teacher has blocks 0..{total - 1}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {layers} repeat a block")
    student = copy.deepcopy(teacher)
    kept = adapter.layers(student)
    new = nn.ModuleList([kept[i] for i in layers])
    for new_idx, block in enumerate(new):
        # Attention modules carry their index for caching; keep it consistent with the new position.
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    adapter.set_layers(student, new)
    student.config.hfcompress_student_layers = layers
    logger.info("Student: %d of %d blocks (%s) from %s", len(layers), total, layers, type(teacher).__name__)
    return student
