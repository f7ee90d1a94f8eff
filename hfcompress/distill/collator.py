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



@dataclass
class TokenDistillationCollator:
    """Batches for token classification: student inputs padded by the student's tokenizer, `teacher_*` inputs by the
    teacher's (when its tokenizer differs), the per-sub-token `labels` padded with -100 to the student's length
    (so padding is neither trained on nor counted as an item), and cached teacher outputs: per-token
    `teacher_logits` (`[T_i, C]` per row) zero-padded to `[B, T, C]`, hidden states and q/k/v as
    `DistillationDataCollator` pads them. The two tokenizations put every labelled sub-token at the same position
    (checked by the token adapter), so the teacher's rows line up with the student's."""

    tokenizer: object
    teacher_tokenizer: object | None = None
    pad_to_multiple_of: int | None = None

    def pad_teacher(self, features: list[dict]) -> dict:
        tok = self.teacher_tokenizer or self.tokenizer
        return tok.pad(features, padding=True, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of)

    @staticmethod
    def pad_labels(rows: list, length: int) -> torch.Tensor:
        out = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            r = list(r)[:length]
            if r:
                out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        return out

    def __call__(self, features: list[dict]) -> dict:
        student, teacher, labels = [], [], []
        cached: dict[str, list] = {CACHED_LOGITS: [], CACHED_HIDDEN: [], CACHED_QKV: []}
        for f in features:
            f = {k: v for k, v in f.items() if not isinstance(v, str)}
            if "labels" in f:
                labels.append(f.pop("labels"))
            _pop_cached(f, cached)
            student.append({k: v for k, v in f.items() if not k.startswith(TEACHER_PREFIX)})
            t = {k[len(TEACHER_PREFIX):]: v for k, v in f.items() if k.startswith(TEACHER_PREFIX)}
            if t:
                teacher.append(t)
        batch = dict(self.tokenizer.pad(student, padding=True, return_tensors="pt",
                                        pad_to_multiple_of=self.pad_to_multiple_of))
        length = batch["input_ids"].shape[1]
        if labels:
            batch["labels"] = self.pad_labels(labels, length)
        if teacher:
            batch.update({f"{TEACHER_PREFIX}{k}": v for k, v in self.pad_teacher(teacher).items()})
        batch.update(_pad_cached(cached, length))
        return batch


def _pop_cached(f: dict, cached: dict[str, list]) -> None:
    """Move a row's cached teacher columns into `cached` (logits as float32 arrays, the rest decoded)."""
    for name, rows in cached.items():
        if name in f:
            value = f.pop(name)
            rows.append(np.asarray(value, np.float32) if name == CACHED_LOGITS else decode_array(value))


def _pad_cached(cached: dict[str, list], length: int) -> dict[str, torch.Tensor]:
    """Per-token cached teacher outputs padded to the batch's `length`: logits (`[T_i, C]` rows) zero-padded to
    `[B, T, C]`, hidden states and q/k/v as `DistillationDataCollator` pads them."""
    out = {}
    if cached.get(CACHED_LOGITS):
        rows = cached[CACHED_LOGITS]
        logits = np.zeros((len(rows), length, rows[0].shape[-1]), np.float32)
        for i, r in enumerate(rows):
            logits[i, : min(len(r), length)] = r[:length]
        out[CACHED_LOGITS] = torch.from_numpy(logits)
    for name in (CACHED_HIDDEN, CACHED_QKV):
        if cached.get(name):
            out[name] = _pad_stack(cached[name], length)
    return out


@dataclass
class SpanDistillationCollator:
    """Batches for extractive QA windows: model inputs padded by the tokenizer, each window's ``labels`` ``[start,
    end]`` token positions stacked into `[B, 2]` (what `DistillationLoss` reads as two items per window), or, with
    `positions=True`, as the ``start_positions`` / ``end_positions`` a transformers QA model takes for its own loss.
    Cached teacher outputs: the start and end logits of each window (`[T_i, 2]` rows) padded to `[B, 2, T]` (the
    loss pushes padding positions out of both models' KD distributions, `mask_span_padding`), hidden states and q/k/v
    as `DistillationDataCollator` pads them. Columns for post-processing (``example_id``, ``offset_mapping``) are
    left out."""

    tokenizer: object
    positions: bool = False
    pad_to_multiple_of: int | None = None

    def pad_teacher(self, features: list[dict]) -> dict:
        return self.tokenizer.pad(features, padding=True, return_tensors="pt",
                                  pad_to_multiple_of=self.pad_to_multiple_of)

    def __call__(self, features: list[dict]) -> dict:
        cached: dict[str, list] = {CACHED_LOGITS: [], CACHED_HIDDEN: [], CACHED_QKV: []}
        inputs = []
        for f in features:
            f = {k: v for k, v in f.items() if k not in ("labels", "example_id", "offset_mapping")}
            _pop_cached(f, cached)
            inputs.append(f)
        batch = dict(self.pad_teacher(inputs))
        padded = _pad_cached(cached, batch["input_ids"].shape[1])
        if CACHED_LOGITS in padded:
            padded[CACHED_LOGITS] = padded[CACHED_LOGITS].transpose(1, 2).contiguous()  # [B, T, 2] -> [B, 2, T]
        batch.update(padded)
        if features and "labels" in features[0]:
            labels = torch.as_tensor([list(f["labels"]) for f in features], dtype=torch.long)
            if self.positions:
                batch["start_positions"], batch["end_positions"] = labels[:, 0], labels[:, 1]
            else:
                batch["labels"] = labels
        return batch

@dataclass
class AudioDistillationCollator:
    """Batches for audio classifiers (Whisper encoder, wav2vec2, HuBERT): each row's raw 16 kHz samples (column
    ``audio``, a list of floats) become the feature extractor's model inputs in the collator — log-mel
    ``input_features`` over the model's fixed window for Whisper, ``input_values`` padded to the longest clip (and an
    ``attention_mask`` where the extractor makes one) for wav2vec2/HuBERT — so no feature matrices are stored in the
    dataset; integer ``labels`` become a tensor. The student and the teacher read the same inputs."""

    feature_extractor: object
    sampling_rate: int = 16000
    dataset_columns = ("audio",)  # kept by the Trainer although no model takes it: the collator reads it

    def model_inputs(self, audios) -> dict:
        fe = self.feature_extractor
        clips = [np.asarray(a, dtype=np.float32) for a in audios]
        kwargs = {"sampling_rate": self.sampling_rate, "return_tensors": "pt"}
        if "input_values" in getattr(fe, "model_input_names", ()):
            kwargs["padding"] = True
            kwargs["return_attention_mask"] = bool(getattr(fe, "return_attention_mask", False))
        return dict(fe(clips, **kwargs))

    def __call__(self, features: list[dict]) -> dict:
        batch = self.model_inputs([f["audio"] for f in features])
        key = "labels" if "labels" in features[0] else "label" if "label" in features[0] else None
        if key is not None:
            batch["labels"] = torch.as_tensor([int(f[key]) for f in features], dtype=torch.long)
        if CACHED_LOGITS in features[0]:
            batch[CACHED_LOGITS] = torch.as_tensor([f[CACHED_LOGITS] for f in features], dtype=torch.float32)
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
    * A teacher with a longer window than the student's (a student with a cut encoder window,
      ``--student_window_seconds``): `teacher_feature_extractor` makes the teacher's own features of the same clips
      (``teacher_input_features``, e.g. `[B, 80, 3000]` beside the student's `[B, 80, 1000]`) and the teacher gets the
      same ``teacher_decoder_input_ids``; the loss runs the teacher on those. A teacher extractor with the student's
      window adds nothing.
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
    teacher_feature_extractor: object = None

    @property
    def dataset_columns(self) -> tuple[str, ...]:
        """The dataset columns this collator reads (a Trainer must not drop them as unused)."""
        return (self.audio_column, "labels", CACHED_ENCODER)

    @property
    def teacher_reads_own_features(self) -> bool:
        """True if the teacher's feature extractor pads to another window than the student's."""
        fe = self.teacher_feature_extractor
        return fe is not None and getattr(fe, "nb_max_frames", None) != getattr(self.feature_extractor,
                                                                                "nb_max_frames", None)

    def input_features(self, audios, feature_extractor=None) -> torch.Tensor:
        arrays = [np.asarray(a, dtype=np.float32) for a in audios]
        fe = feature_extractor or self.feature_extractor
        return fe(arrays, sampling_rate=self.sampling_rate, return_tensors="pt").input_features

    def teacher_input_features(self, audios) -> torch.Tensor:
        """The teacher's features of `audios` (its own window; the student's if no teacher extractor is given)."""
        return self.input_features(audios, self.teacher_feature_extractor)

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
            audios = [f[self.audio_column] for f in features]
            batch["input_features"] = self.input_features(audios)
            if self.teacher_reads_own_features:
                batch[f"{TEACHER_PREFIX}input_features"] = self.teacher_input_features(audios)
        if features and "labels" in features[0]:
            batch["decoder_input_ids"], batch["labels"] = self.decoder_tensors([f["labels"] for f in features])
            if f"{TEACHER_PREFIX}input_features" in batch:
                batch[f"{TEACHER_PREFIX}decoder_input_ids"] = batch["decoder_input_ids"]
        return batch


@dataclass
class CTCDistillationCollator:
    """Batches for distilling a CTC speech model (wav2vec2 / HuBERT ``...ForCTC``), from rows of raw audio and
    character ids.

    * Inputs: `input_values` computed from each row's `audio_column` (float samples at `sampling_rate`, or a
      ``{"array", "sampling_rate"}`` dict as the `datasets` Audio feature gives) by `feature_extractor`
      (`Wav2Vec2FeatureExtractor`: normalised, zero-padded to the longest clip of the batch), with the
      `attention_mask` when the extractor makes one (``return_attention_mask``; models with group-normalised
      feature encoders read padded audio without one). Student and teacher read the same inputs.
    * Targets: a row's `labels` (its transcript's character ids, from the CTC tokenizer) padded with -100. They are
      not aligned with the frames: `DistillationLoss` counts the characters as items and the frames through the
      `attention_mask`.
    """

    feature_extractor: object
    audio_column: str = "audio"
    sampling_rate: int = 16000

    @property
    def dataset_columns(self) -> tuple[str, ...]:
        """The dataset columns this collator reads (a Trainer must not drop them as unused)."""
        return (self.audio_column, "labels")

    def _samples(self, audio, row: int) -> np.ndarray:
        if isinstance(audio, dict):
            rate = audio.get("sampling_rate", self.sampling_rate)
            if rate != self.sampling_rate:
                from ..errors import UserInputError

                raise UserInputError(f"row {row}: audio is sampled at {rate} Hz but {self.sampling_rate} Hz is expected")
            audio = audio["array"]
        return np.asarray(audio, dtype=np.float32)

    def model_inputs(self, audios) -> dict:
        """`input_values` (and `attention_mask` where the feature extractor makes one) of a batch of clips."""
        clips = [self._samples(a, i) for i, a in enumerate(audios)]
        out = self.feature_extractor(clips, sampling_rate=self.sampling_rate, padding="longest", return_tensors="pt")
        batch = {"input_values": out["input_values"]}
        if out.get("attention_mask") is not None:
            batch["attention_mask"] = out["attention_mask"]
        return batch

    @staticmethod
    def pad_labels(targets: list) -> torch.Tensor:
        """Character-id lists -> `[B, longest]`, -100 after each row's end."""
        labels = torch.full((len(targets), max(1, max(len(t) for t in targets))), -100, dtype=torch.long)
        for i, t in enumerate(targets):
            if len(t):
                labels[i, : len(t)] = torch.as_tensor([int(x) for x in t], dtype=torch.long)
        return labels

    def __call__(self, features: list[dict]) -> dict:
        batch = self.model_inputs([f[self.audio_column] for f in features])
        if features and "labels" in features[0]:
            batch["labels"] = self.pad_labels([f["labels"] for f in features])
        return batch
