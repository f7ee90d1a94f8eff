"""Batching for distillation: the student's and the teacher's inputs, and cached teacher outputs, side by side."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .loss import CACHED_HIDDEN, CACHED_LOGITS, TEACHER_PREFIX


@dataclass
class DistillationDataCollator:
    """Pads student fields with the student's tokenizer, `teacher_*` token fields with the teacher's, stacks
    `teacher_logits`, and zero-pads cached `teacher_hidden_states` to the batch's token length."""

    tokenizer: object
    teacher_tokenizer: object | None = None
    pad_to_multiple_of: int | None = None

    def pad_teacher(self, features: list[dict]) -> dict:
        tok = self.teacher_tokenizer or self.tokenizer
        return tok.pad(features, padding=True, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict:
        student, teacher, logits, hidden = [], [], [], []
        for f in features:
            f = {k: v for k, v in f.items() if not isinstance(v, str)}  # raw text columns are not model inputs
            student.append({k: v for k, v in f.items() if not k.startswith(TEACHER_PREFIX)})
            t = {k[len(TEACHER_PREFIX):]: v for k, v in f.items() if k.startswith(TEACHER_PREFIX) and k not in (CACHED_LOGITS, CACHED_HIDDEN)}
            if t:
                teacher.append(t)
            if CACHED_LOGITS in f:
                logits.append(f[CACHED_LOGITS])
            if CACHED_HIDDEN in f:
                hidden.append(f[CACHED_HIDDEN])
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
        if hidden:
            length = batch["input_ids"].shape[1]
            first = torch.as_tensor(hidden[0])
            out = torch.zeros(len(hidden), first.shape[0], length, first.shape[-1], dtype=torch.float32)
            for i, h in enumerate(hidden):
                h = torch.as_tensor(h, dtype=torch.float32)
                out[i, :, : h.shape[1]] = h
            batch[CACHED_HIDDEN] = out
        return batch
