"""Batching for distillation: the student's and the teacher's inputs, and cached teacher outputs, side by side."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .cache import decode_array
from .loss import CACHED_HIDDEN, CACHED_KEYS, CACHED_LOGITS, CACHED_QKV, TEACHER_PREFIX


@dataclass
class DistillationDataCollator:
    """Pads student fields with the student's tokenizer, `teacher_*` token fields with the teacher's, stacks
    `teacher_logits`, and zero-pads cached `teacher_hidden_states` / `teacher_relation_qkv` (float16 `[B, L, T, D]`)
    to the batch's token length."""

    tokenizer: object
    teacher_tokenizer: object | None = None
    pad_to_multiple_of: int | None = None

    def pad_teacher(self, features: list[dict]) -> dict:
        tok = self.teacher_tokenizer or self.tokenizer
        return tok.pad(features, padding=True, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict:
        student, teacher, logits = [], [], []
        stored: dict[str, list] = {CACHED_HIDDEN: [], CACHED_QKV: []}
        for f in features:
            f = {k: v for k, v in f.items() if not isinstance(v, str)}  # raw text columns are not model inputs
            student.append({k: v for k, v in f.items() if not k.startswith(TEACHER_PREFIX)})
            t = {k[len(TEACHER_PREFIX):]: v for k, v in f.items() if k.startswith(TEACHER_PREFIX) and k not in CACHED_KEYS}
            if t:
                teacher.append(t)
            if CACHED_LOGITS in f:
                logits.append(f[CACHED_LOGITS])
            for name, rows in stored.items():
                if name in f:
                    rows.append(decode_array(f[name]))
        if student and "label" in student[0]:
            for s in student:
                s["labels"] = s.pop("label")
        batch = dict(
            self.tokenizer.pad(student, padding=True, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of)
        )
        if teacher:
            batch.update({f"{TEACHER_PREFIX}{k}": v for k, v in self.pad_teacher(teacher).items()})
        if logits:
            batch[CACHED_LOGITS] = torch.as_tensor(logits, dtype=torch.float32)
        for name, rows in stored.items():
            if rows:
                batch[name] = _pad_stack(rows, batch["input_ids"].shape[1])
        return batch


def _pad_stack(rows: list[np.ndarray], length: int) -> torch.Tensor:
    """Rows `[L, T_i, D]` -> one zero-padded float16 tensor `[B, L, length, D]`."""
    first = rows[0]
    out = np.zeros((len(rows), first.shape[0], max(length, max(r.shape[1] for r in rows)), first.shape[-1]), np.float16)
    for i, r in enumerate(rows):
        out[i, :, : r.shape[1]] = r
    return torch.from_numpy(out)
