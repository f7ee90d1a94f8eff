"""Building a shallower student from a teacher's own layers (DistilBERT-style initialisation)."""

from __future__ import annotations

import copy
import logging

import torch.nn as nn

from ..arch import get_adapter
from ..arch.speech import keep_decoder_layers
from ..arch.speech import num_decoder_layers as decoder_depth
from ..errors import UserInputError

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
    layers = check_layer_indices(layers, total, "layers", "block", "the teacher has blocks")
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


def spread_layers(total: int, count: int) -> list[int]:
    """`count` of `total` decoder layers, evenly spread from the first to the last (distil-whisper's choice: 4 -> 2
    keeps 0 and 3; 32 -> 2 keeps 0 and 31)."""
    if not 0 < count <= total:
        raise UserInputError(f"number of decoder layers must be in 1..{total}, got {count}")
    if count == 1:
        return [total - 1]
    return sorted({int(round(i * (total - 1) / (count - 1))) for i in range(count)})


def check_layer_indices(layers, total: int, label: str, unit: str, owner: str) -> list[int]:
    """`layers` (indices kept in a student) checked against a stack of `total`: at least one, each in range, no
    repeats; one `UserInputError` naming `label` otherwise (e.g. "layers [7] out of range: the teacher has blocks
    0..5")."""
    layers = [int(i) for i in layers]
    if not layers:
        raise UserInputError(f"{label} must name at least one {unit}")
    bad = [i for i in layers if not 0 <= i < total]
    if bad:
        raise UserInputError(f"{label} {bad} out of range: {owner} 0..{total - 1}")
    if len(set(layers)) != len(layers):
        raise UserInputError(f"{label} {layers} repeat a {unit}")
    return layers


def check_decoder_layers(layers: list[int], total: int) -> list[int]:
    """`layers` checked against a decoder of `total` layers: in range, no repeats, at least one."""
    return check_layer_indices(layers, total, "decoder layers", "layer", "the teacher's decoder has layers")


def init_seq2seq_student(teacher: nn.Module, decoder_layers: list[int] | None = None,
                         num_decoder_layers: int | None = None, freeze_encoder: bool = True) -> nn.Module:
    """A copy of an encoder-decoder speech `teacher` (Whisper) with its whole encoder and only the decoder layers
    `decoder_layers` (0-based, in order; or `num_decoder_layers` of them, spread from first to last), as
    distil-whisper builds its students. Embeddings, the output projection and the generation config come along.

    With `freeze_encoder` (the default) the encoder's parameters do not train: its outputs are then the teacher's own,
    which is what lets a run cache them once.
    """
    total = decoder_depth(teacher)
    if decoder_layers is None:
        decoder_layers = spread_layers(total, num_decoder_layers or max(1, total // 2))
    layers = check_decoder_layers(decoder_layers, total)
    student = copy.deepcopy(teacher)
    if not any(p.requires_grad for p in student.parameters()):  # a teacher DistillationLoss has already frozen
        student.requires_grad_(True)
    keep_decoder_layers(student, layers)
    if freeze_encoder:
        student.get_encoder().requires_grad_(False)
    student.config.hfcompress_student_decoder_layers = layers
    logger.info("Student: decoder layers %s of %d, encoder %s, from %s", layers, total,
                "kept and frozen" if freeze_encoder else "kept (trained)", type(teacher).__name__)
    return student
