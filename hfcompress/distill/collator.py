"""Batching for distillation: the student's and the teacher's inputs, and cached teacher outputs, side by side."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .cache import decode_array
from .loss import CACHED_ENCODER, CACHED_HIDDEN, CACHED_KEYS, CACHED_LOGITS, CACHED_QKV, TEACHER_PREFIX


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


@dataclass
class SpeechSeq2SeqDistillationCollator:
    """Batches for distilling an encoder-decoder speech model (Whisper), from rows of raw audio and target tokens.

    * Encoder side: `input_features` computed from each row's `audio_column` (float samples at `sampling_rate`) by
      `feature_extractor` (Whisper: log-mel over a 30 s window), or, when every row of the batch carries the cached
      output of the frozen encoder (`encoder_last_hidden_state`, see `compute_encoder_outputs`), that output as
      `encoder_outputs` and no features: then neither model runs its encoder.
    * Decoder side: a row's `labels` are its target tokens (the transcript, then end-of-text). `decoder_input_ids`
      are `decoder_prompt_ids` followed by the targets shifted right; `labels` hold the next token at each position,
      -100 where the prompt's own tokens would be predicted (`generate` forces them) and on padding. So the loss
      counts each transcript token and the end-of-text once.
    """

    feature_extractor: object
    decoder_prompt_ids: list
    pad_token_id: int
    audio_column: str = "audio"
    sampling_rate: int = 16000

    @property
    def dataset_columns(self) -> tuple[str, ...]:
        """The dataset columns this collator reads (a Trainer must not drop them as unused)."""
        return (self.audio_column, "labels", CACHED_ENCODER)

    def input_features(self, audios) -> torch.Tensor:
        arrays = [np.asarray(a, dtype=np.float32) for a in audios]
        return self.feature_extractor(arrays, sampling_rate=self.sampling_rate, return_tensors="pt").input_features

    def decoder_tensors(self, targets: list) -> tuple[torch.Tensor, torch.Tensor]:
        """`(decoder_input_ids, labels)` of a batch of target-token lists."""
        prompt = [int(i) for i in self.decoder_prompt_ids]
        length = len(prompt) - 1 + max(len(t) for t in targets)
        inputs = torch.full((len(targets), length), int(self.pad_token_id), dtype=torch.long)
        labels = torch.full((len(targets), length), -100, dtype=torch.long)
        for i, t in enumerate(targets):
            t = [int(x) for x in t]
            seq = prompt + t[:-1]
            inputs[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(prompt) - 1 : len(prompt) - 1 + len(t)] = torch.tensor(t)
        return inputs, labels

    def __call__(self, features: list[dict]) -> dict:
        batch = {}
        if all(f.get(CACHED_ENCODER) is not None for f in features):
            stacked = np.stack([decode_array(f[CACHED_ENCODER]) for f in features]).astype(np.float32)
            batch["encoder_outputs"] = (torch.from_numpy(stacked),)
        else:
            batch["input_features"] = self.input_features([f[self.audio_column] for f in features])
        if features and "labels" in features[0]:
            batch["decoder_input_ids"], batch["labels"] = self.decoder_tensors([f["labels"] for f in features])
        return batch
