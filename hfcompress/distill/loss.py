"""`DistillationLoss`: the one place where distillation is computed.

Used three ways, always through this class:
  * by `DistillationTrainer.compute_loss`;
  * as `Trainer(compute_loss_func=...)` for existing fine-tuning code (see `attach`);
  * directly, on outputs you computed yourself.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..arch import QKVCapture, get_adapter
from ..arch.speech import is_ctc, is_seq2seq  # noqa: F401  (is_ctc: re-exported by distill)
from ..errors import UserInputError
from .checks import check_teacher_head, teacher_needs_own_inputs
from .config import DistillationConfig, LayerMap, resolve_layer_map
from .losses import (
    attention_kl_per_example,
    ctc_loss_sum,
    hard_label_loss_sum,
    hidden_state_loss_per_example,
    item_mask,
    logit_kd_loss_sum,
    qkv_relation_kl_per_example,
)

logger = logging.getLogger(__name__)

PROJECTIONS_FILE = "distillation_projections.safetensors"
TEACHER_PREFIX = "teacher_"
CACHED_LOGITS = "teacher_logits"
CACHED_HIDDEN = "teacher_hidden_states"
CACHED_QKV = "teacher_relation_qkv"
CACHED_KEYS = (CACHED_LOGITS, CACHED_HIDDEN, CACHED_QKV)
# A frozen encoder's output, cached per row (sequence-to-sequence distillation). Not a teacher-only entry: the student
# and the teacher's decoder both read it, as `encoder_outputs`.
CACHED_ENCODER = "encoder_last_hidden_state"


@dataclass
class TeacherOutputs:
    logits: torch.Tensor | None = None
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)  # teacher layer index -> [B, T, D]
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)  # teacher block index (1-based) -> [B,H,T,T]
    # teacher block index (1-based) -> (query, key, value) projection outputs, each [B, T, D]
    qkv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def logits_of(outputs) -> torch.Tensor:
    """The logits every term reads. Extractive QA models return ``start_logits`` and ``end_logits`` `[B, T]`: they are
    stacked into `[B, 2, T]`, two items per example (the start and the end, each a distribution over positions) whose
    labels are `[B, 2]` (start and end position, -100 where not trained), so cross-entropy and KD are DistilBERT's
    SQuAD loss: the mean over starts and ends, normalised like every other item count."""
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, dict):
        logits = outputs.get("logits")
    if logits is None:
        start = getattr(outputs, "start_logits", None)
        if start is None and isinstance(outputs, dict):
            start = outputs.get("start_logits")
        if start is not None:
            end = outputs["end_logits"] if isinstance(outputs, dict) else outputs.end_logits
            return torch.stack([start, end], dim=1)
        raise ValueError(f"{type(outputs).__name__} holds no logits (nor start_logits / end_logits)")
    return logits


def is_span_output(outputs) -> bool:
    """An extractive QA model's output (``start_logits`` / ``end_logits``, no ``logits``)."""
    if isinstance(outputs, dict):
        return "start_logits" in outputs and "logits" not in outputs
    return getattr(outputs, "start_logits", None) is not None and getattr(outputs, "logits", None) is None


# Finite, so that a padding position's teacher probability is exactly 0 without 0 * inf in the KL.
SPAN_PAD_LOGIT = -1e4


def mask_span_padding(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor):
    """Start/end logits `[B, 2, T]` of both models with the padding positions (attention mask 0) pushed to
    `SPAN_PAD_LOGIT`: an answer never starts or ends in the padding, and the KD term is then the same whether the
    teacher ran on this batch's padding or its logits were cached unpadded (`SpanDistillationCollator`)."""
    pad = ~attention_mask.to(student.device).bool()[:, None, : student.shape[-1]]
    return student.masked_fill(pad, SPAN_PAD_LOGIT), teacher.masked_fill(pad, SPAN_PAD_LOGIT)


def _default_label_names(config) -> bool:
    names = list(getattr(config, "id2label", {}).values())
    return all(str(n).startswith("LABEL_") for n in names)


def feat_extract_output_lengths(config, sample_lengths: torch.Tensor) -> torch.Tensor:
    """Frames a CTC model's convolutional feature encoder makes of `sample_lengths` audio samples: the model class's
    own `_get_feat_extract_output_lengths` (it reads only the config), found from the config's class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING

    try:
        cls = MODEL_FOR_CTC_MAPPING[type(config)]
    except KeyError:
        raise UserInputError(
            f"CTC distillation: {type(config).__name__} (model_type {getattr(config, 'model_type', None)!r}) has no "
            "CTC model class in transformers, so its frame count cannot be derived from the attention mask"
        ) from None
    proxy = type("_ConfigOnly", (), {"config": config})()
    return cls._get_feat_extract_output_lengths(proxy, sample_lengths)


def check_label_compatibility(student_config, teacher_config, ctc: bool | None = None) -> None:
    """Teacher and student must predict the same classes, in the same order (encoder-decoder models: the same
    vocabulary, whose next-token distributions are compared; CTC models (`ctc`, by default told from the configs'
    ``architectures``): the same characters and the same blank, whose per-frame distributions are compared)."""
    if ctc is None:
        ctc = is_ctc(student_config) or is_ctc(teacher_config)
    if ctc:
        for key, what in (("vocab_size", "characters"), ("pad_token_id", "blank id")):
            s, t = getattr(student_config, key, None), getattr(teacher_config, key, None)
            if s != t:
                raise UserInputError(
                    f"student vocabulary: {key} is {s} but the teacher's is {t}; CTC distillation compares the two "
                    f"models' per-frame distributions over one vocabulary, so the student must use the teacher's "
                    f"{what} (use the teacher's tokenizer, e.g. a student made by init_student_from_teacher)"
                )
        return
    if is_seq2seq(student_config) or is_seq2seq(teacher_config):
        if is_seq2seq(student_config) != is_seq2seq(teacher_config):
            raise ValueError(
                f"teacher ({teacher_config.model_type}) and student ({student_config.model_type}): one is an "
                "encoder-decoder model and the other is not; sequence-to-sequence distillation needs two encoder-decoder models"
            )
        if student_config.vocab_size != teacher_config.vocab_size:
            raise ValueError(
                f"teacher vocabulary has {teacher_config.vocab_size} tokens but the student's {student_config.vocab_size}: "
                "sequence-to-sequence distillation compares next-token distributions over one vocabulary"
            )
        return
    if student_config.num_labels != teacher_config.num_labels:
        raise ValueError(
            f"teacher has {teacher_config.num_labels} labels but student has {student_config.num_labels}; "
            "they must predict the same classes"
        )
    if not (_default_label_names(student_config) or _default_label_names(teacher_config)):
        s = [student_config.id2label[i] for i in range(student_config.num_labels)]
        t = [teacher_config.id2label[i] for i in range(teacher_config.num_labels)]
        if s != t:
            raise ValueError(f"teacher label names {t} differ from student label names {s} (same order needed)")


class DistillationLoss(nn.Module):
    """Knowledge-distillation loss with its learnable parts (hidden-state projections).

    Args:
        config: what to distil (`DistillationConfig`).
        student_config: the student's `PretrainedConfig` (layer count, width, heads, labels).
        teacher: the teacher model, for on-the-fly distillation. Not registered as a submodule: it is not trained
            and not saved with the projections.
        teacher_config: the teacher's config when no teacher model is given (training from a cache).
        cached_hidden_layers: teacher layer indices stored, in order, in a cache's `teacher_hidden_states` column.
        cached_relation_layers: teacher blocks whose (query, key, value) are stored, in order, in a cache's
            `teacher_relation_qkv` column (default: `teacher_relation_layers`, what `cache_request()` asks for).
        allow_untrained_teacher_head: accept a teacher whose task head `from_pretrained` initialised at random and
            that has not been trained since (by default that is a `UserInputError`: such a teacher teaches noise).
        teacher_tokenizer / student_tokenizer: the two tokenizers, to tell whether the teacher must read its own
            token ids (`teacher_input_ids`); without them the configs are compared (vocab size, pad/bos/eos ids).

    The teacher is frozen and put in eval mode here.

    Encoder-decoder models (Whisper teacher and student): the logits are `[batch, target tokens, vocabulary]` and an
    item is a target token (label other than -100), so the loss is ``alpha * T^2 * KL + (1 - alpha) * CE`` summed
    over target tokens and divided by the target tokens of the whole batch. Both must share the vocabulary and, when
    the tokenizers are given, the tokenizer (else a `UserInputError`); the intermediate terms are refused.

    CTC models (wav2vec2 / HuBERT ``...ForCTC`` teacher and student, see `is_ctc`): the logits are `[batch, frames,
    vocabulary]` and the labels character ids `[batch, characters]` (-100 on padding), not aligned with the frames.
    The real frames of each example come from the batch's sample-level `attention_mask` through the model's
    convolutional output lengths (all frames without one). The KD term is ``T^2 * KL(teacher || student)`` summed over
    real frames; the task term is the student's CTC loss (`torch.nn.functional.ctc_loss`, blank = `pad_token_id`,
    the config's `ctc_zero_infinity`) summed over examples; evaluation without a teacher gives the CTC loss alone.
    Normalisation: an item is a *label character*, the count the Trainer already makes (labels other than -100) over
    the whole accumulated, all-process batch as `num_items_in_batch`; both sums are divided by it. That is the only
    count known for the whole accumulated batch before its first micro-batch runs (a frame count would need every
    micro-batch's audio first), so the loss and its gradients are those of one large batch, exactly. The CTC term is
    thus the per-character CTC loss of the whole batch (`ctc_loss_reduction` 'mean' and 'sum' give the same result:
    a per-batch mean of per-example means is not exact under accumulation); the KD term is the per-frame KL times the
    batch's frames per character (a constant of the data, about 3 for speech at 50 frames a second), which `alpha`
    balances. The intermediate terms compare hidden states (attention maps, relations) over the real frames, each
    example weighted by its characters. The student must use the teacher's vocabulary and blank (else a
    `UserInputError`).
    """

    def __init__(
        self,
        config: DistillationConfig,
        student_config,
        teacher: nn.Module | None = None,
        teacher_config=None,
        cached_hidden_layers: list[int] | None = None,
        cached_relation_layers: list[int] | None = None,
        allow_untrained_teacher_head: bool = False,
        teacher_tokenizer=None,
        student_tokenizer=None,
    ):
        super().__init__()
        self.config = DistillationConfig.from_any(config)
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
            teacher_config = teacher.config
        if teacher_config is None:
            raise ValueError("DistillationLoss needs a teacher model or, when training from a cache, its config")
        if teacher is not None and not allow_untrained_teacher_head:
            check_teacher_head(teacher)
        object.__setattr__(self, "teacher", teacher)  # plain attribute: excluded from state_dict and .parameters()
        self.student_config = student_config
        self.teacher_config = teacher_config
        self.cached_hidden_layers = list(cached_hidden_layers or [])
        # CTC (wav2vec2 / HuBERT ...ForCTC): told by the teacher model's class, or by either config's architectures.
        self.ctc = (teacher is not None and is_ctc(teacher)) or is_ctc(teacher_config) or is_ctc(student_config)
        check_label_compatibility(student_config, teacher_config, ctc=self.ctc)
        self.seq2seq = is_seq2seq(teacher_config)
        if self.seq2seq and self.config.uses_intermediate:
            raise ValueError(
                "sequence-to-sequence distillation uses the decoder's logits (temperature KL) and the labels (cross-"
                "entropy) only: set hidden_weight, attention_weight and relation_weight to 0"
            )
        self.layer_map: LayerMap = self._resolve_layer_map()
        self.projections = nn.ModuleDict()
        if self.config.uses_hidden:
            s_adapter, t_adapter = get_adapter(student_config), get_adapter(teacher_config)
            ds, dt = s_adapter.hidden_size(student_config), t_adapter.hidden_size(teacher_config)
            for s, t in self.layer_map:
                # A learned linear map from the student's width to the teacher's (TinyBERT); identity if equal.
                self.projections[f"{s}_{t}"] = nn.Linear(ds, dt) if ds != dt else nn.Identity()
        if self.config.uses_attention:
            hs = get_adapter(student_config).num_heads(student_config)
            ht = get_adapter(teacher_config).num_heads(teacher_config)
            if hs != ht:
                raise ValueError(f"attention distillation needs equal head counts; student has {hs}, teacher {ht}")
            if any(s == 0 or t == 0 for s, t in self.layer_map):
                raise ValueError("attention distillation maps blocks (>= 1); layer_map pairs with 0 are embeddings")
            if teacher is not None:
                _use_eager_attention(teacher)
        self._stash: tuple[TeacherOutputs, torch.Tensor | None] | None = None
        self._hooked = None
        # Whether the student's token ids would mean other tokens to the teacher (then a training batch must carry
        # `teacher_input_ids` or cached outputs), and whether the `attach` hook drops batch entries the student's
        # forward does not take (set by `DistillationCallback` when it turns `remove_unused_columns` off).
        self.teacher_needs_own_inputs = teacher_needs_own_inputs(
            student_config, teacher_config, student_tokenizer, teacher_tokenizer
        )
        if self.seq2seq and self.teacher_needs_own_inputs:
            raise UserInputError(
                "student tokenizer: it maps text to other token ids than the teacher's; sequence-to-sequence "
                "distillation compares the two decoders' next-token distributions token by token, so the student "
                "must use the teacher's tokenizer (vocabulary and special tokens)"
            )
        if self.ctc:
            self._check_ctc()
        self.drop_unused_inputs = False
        self._init_relations_and_stages(cached_relation_layers)

    # ---- configuration -------------------------------------------------------------------------------------
    def _check_ctc(self) -> None:
        """CTC: one vocabulary (the tokenizers, when given, map characters to the same ids) and a CTC loss reduction
        this class can normalise (see the class docstring)."""
        if self.teacher_needs_own_inputs:
            raise UserInputError(
                "student tokenizer: it maps characters to other ids than the teacher's; CTC distillation compares the "
                "two models' per-frame distributions over one vocabulary, so the student must use the teacher's "
                "tokenizer (the same characters at the same ids, the same blank)"
            )
        reduction = getattr(self.student_config, "ctc_loss_reduction", "sum")
        if reduction not in ("sum", "mean"):
            raise UserInputError(f"student config: ctc_loss_reduction={reduction!r}; expected 'sum' or 'mean'")

    def _resolve_layer_map(self) -> LayerMap:
        if not (self.config.uses_hidden or self.config.uses_attention):
            return []
        ns = get_adapter(self.student_config).num_layers(self.student_config)
        nt = get_adapter(self.teacher_config).num_layers(self.teacher_config)
        return resolve_layer_map(self.config.pairs, ns, nt)

    @property
    def teacher_hidden_layers(self) -> list[int]:
        return sorted({t for _, t in self.layer_map}) if self.config.uses_hidden else []

    def needs_online_teacher(self, cache: dict | None = None) -> bool:
        """True if some term cannot come from a teacher-output cache: attention maps (never cached), and, given what
        a cache holds (`cache`: the metadata of `load_or_compute_teacher_cache`, whose `hidden_layers` and
        `relation_layers` list what its rows carry), the hidden states or relations it lacks (a cache over its size
        limit holds logits only). Without `cache`, a cache is taken to hold all that `cache_request()` asks for."""
        if self.config.uses_attention:
            return True
        if cache is None:
            return False
        lacks_hidden = not set(self.teacher_hidden_layers) <= set(cache.get("hidden_layers") or [])
        lacks_relations = self.config.uses_relation and not (
            set(self.teacher_relation_layers) <= set(cache.get("relation_layers") or []))
        return lacks_hidden or lacks_relations

    def cache_request(self) -> dict:
        """Extra keyword arguments for `load_or_compute_teacher_cache`: what else this loss reads from a cache."""
        return {"relation_layers": self.teacher_relation_layers} if self.config.uses_relation else {}

    # ---- relation distillation (MiniLMv2) and the staged schedule ------------------------------------------
    def _init_relations_and_stages(self, cached_relation_layers) -> None:
        self.relation_map: LayerMap = []
        self.relation_heads: int | None = None
        self._student_capture: QKVCapture | None = None
        if self.config.uses_relation:
            self.relation_map, self.relation_heads = self._resolve_relations()
        self.cached_relation_layers = list(cached_relation_layers or self.teacher_relation_layers)
        self._progress: tuple[int, int] | None = None  # (optimizer steps done, total), set by DistillationCallback
        self.last_parts: dict[str, torch.Tensor] = {}

    def _resolve_relations(self) -> tuple[LayerMap, int]:
        sc, tc = self.student_config, self.teacher_config
        sa, ta = get_adapter(sc), get_adapter(tc)
        for adapter, who in ((sa, "student"), (ta, "teacher")):
            if adapter.qkv_paths is None:
                raise ValueError(f"relation distillation: the {who}'s family {adapter.model_types} has no known "
                                 "query/key/value projections (ArchAdapter.qkv_paths)")
        ns, nt = sa.num_layers(sc), ta.num_layers(tc)
        pairs = self.config.relation_pairs or [(ns, nt)]
        for s, t in pairs:
            if not 1 <= s <= ns:
                raise ValueError(f"relation_layer_map student block {s} out of range: the student has blocks 1..{ns}")
            if not 1 <= t <= nt:
                raise ValueError(f"relation_layer_map teacher block {t} out of range: the teacher has blocks 1..{nt}")
        ds, dt = sa.hidden_size(sc), ta.hidden_size(tc)
        heads = self.config.relation_heads
        if heads is None:
            heads = sa.num_heads(sc)
            if ds % heads or dt % heads:
                raise ValueError(
                    f"relation distillation: the default relation_heads = the student's {heads} attention heads does "
                    f"not divide the teacher's width {dt} (student width {ds}); set relation_heads to a common "
                    f"divisor of {ds} and {dt}"
                )
        elif ds % heads or dt % heads:
            raise ValueError(
                f"relation_heads={heads} must divide both the student's width {ds} and the teacher's width {dt}"
            )
        return list(pairs), int(heads)

    @property
    def teacher_relation_layers(self) -> list[int]:
        """Teacher blocks (1-based) whose query/key/value relation distillation reads, sorted."""
        return sorted({t for _, t in self.relation_map})

    @property
    def student_relation_layers(self) -> list[int]:
        return sorted({s for s, _ in self.relation_map})

    def set_progress(self, global_step: int, max_steps: int) -> None:
        """Training progress for the staged schedule: `global_step` optimizer steps of `max_steps` are done.
        `DistillationCallback.on_step_begin` calls this before every optimizer step (also after a resume)."""
        self._progress = (int(global_step), int(max_steps))

    def intermediate_steps(self, max_steps: int) -> int:
        """How many of `max_steps` optimizer steps form the intermediate stage: round(intermediate_fraction *
        max_steps), at least 1 when staged."""
        f = self.config.intermediate_fraction
        return 0 if f <= 0 else max(1, int(math.floor(f * max_steps + 0.5)))

    @property
    def stage(self) -> int:
        """0: not staged (all terms together); 1: intermediate terms only; 2: prediction terms only."""
        if not self.config.staged:
            return 0
        if self._progress is None:
            raise RuntimeError(
                f"intermediate_fraction={self.config.intermediate_fraction} needs the training progress: train with "
                "DistillationTrainer, or add DistillationCallback(loss) to the Trainer's callbacks, or call "
                "loss.set_progress(global_step, max_steps) yourself"
            )
        step, total = self._progress
        return 1 if step < self.intermediate_steps(total) else 2

    def _stage_terms(self) -> tuple[bool, bool]:
        """(prediction terms count, intermediate terms count) in the current stage."""
        stage = self.stage
        return stage != 1, stage != 2

    def student_forward_kwargs(self) -> dict:
        """Keyword arguments for the student's next *training* forward (what this stage's terms need). Also arms
        the capture of the student's query/key/value for relation distillation during that forward."""
        _, inter = self._stage_terms()
        kw = {}
        if inter and self.config.uses_hidden:
            kw["output_hidden_states"] = True
        if inter and self.config.uses_attention:
            kw["output_attentions"] = True
        if self._student_capture is not None:
            self._student_capture.clear()
            self._student_capture.enabled = inter and self.config.uses_relation
        return kw

    def prepare_student(self, student: nn.Module) -> None:
        """Switch the student to eager attention if attention maps are distilled (sdpa returns none), and hook its
        query/key/value projections if relations are distilled (recorded only in armed training forwards). A CTC
        teacher needs a CTC student (and a CTC student, whose config did not say so, a CTC teacher)."""
        if is_ctc(student) != self.ctc:
            if self.ctc:
                raise UserInputError(
                    f"student: {type(student).__name__} is not a CTC model but the teacher is; CTC distillation "
                    "compares per-frame character distributions, so the student must be a ...ForCTC model too"
                )
            raise UserInputError(
                f"student: {type(student).__name__} is a CTC model but the teacher "
                f"({type(self.teacher).__name__ if self.teacher is not None else 'given by its config'}) is not "
                "known as one; pass a ...ForCTC teacher (or a teacher_config whose architectures name one)"
            )
        if self.config.uses_attention:
            _use_eager_attention(student)
        if self.config.uses_relation:
            if self._student_capture is not None:
                self._student_capture.remove()
            self._student_capture = QKVCapture(student, self.student_relation_layers, enabled=False)

    # ---- teacher side --------------------------------------------------------------------------------------
    def add_decoder_inputs(self, inputs: dict) -> dict:
        """Encoder-decoder models: give a batch that has `labels` but no `decoder_input_ids` the labels shifted right
        (what the model would derive itself), so that student and teacher read the same decoder inputs even after
        the labels are taken out of the batch. Returns `inputs` (changed in place)."""
        labels = inputs.get("labels")
        if self.seq2seq and labels is not None and "decoder_input_ids" not in inputs:
            tc = self.teacher_config
            shifted = labels.new_full(labels.shape, tc.pad_token_id)
            shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1].eq(-100), tc.pad_token_id)
            shifted[:, 0] = tc.decoder_start_token_id
            inputs["decoder_input_ids"] = shifted
        return inputs

    @torch.no_grad()
    def teacher_outputs(self, inputs: dict) -> TeacherOutputs:
        """Pop the teacher's entries from a batch and return its outputs: from the cache columns where present, and
        what they lack (all, or the intermediate outputs of a cache over its size limit, which holds logits only) by
        running the teacher (on `teacher_*` inputs if the batch has them, else the student's: for an encoder-decoder,
        the same decoder inputs and the same `input_features`, or the cached `encoder_outputs` of a frozen encoder the
        two share)."""
        self.add_decoder_inputs(inputs)
        cached = {k: inputs.pop(k) for k in CACHED_KEYS if k in inputs}
        teacher_inputs = {k[len(TEACHER_PREFIX):]: inputs.pop(k) for k in list(inputs) if k.startswith(TEACHER_PREFIX)}
        out = TeacherOutputs(logits=cached.get(CACHED_LOGITS))
        if CACHED_HIDDEN in cached:
            stored = cached[CACHED_HIDDEN]
            out.hidden_states = {t: stored[:, i] for i, t in enumerate(self.cached_hidden_layers)}
        if CACHED_QKV in cached:
            stored = cached[CACHED_QKV]  # [B, 3 * layers, T, D]: q, k, v of each cached block in turn
            out.qkv = {t: tuple(stored[:, 3 * i + j] for j in range(3)) for i, t in enumerate(self.cached_relation_layers)}
        # Only what this stage's terms use: no logits in the intermediate stage, no intermediate outputs after it.
        pred, inter = self._stage_terms()
        need_logits = pred and out.logits is None and self.config.alpha > 0 and self.config.logit_weight > 0
        need_hidden = inter and any(t not in out.hidden_states for t in self.teacher_hidden_layers)
        need_attn = inter and self.config.uses_attention
        need_qkv = [t for t in self.teacher_relation_layers if t not in out.qkv] if inter else []
        if not (need_logits or need_hidden or need_attn or need_qkv):
            return out
        if self.teacher is None:
            missing = [n for n, need in (("logits", need_logits), ("hidden states", need_hidden), ("attentions", need_attn),
                                         ("relation query/key/value", need_qkv)) if need]
            raise ValueError(f"the batch has no cached teacher {', '.join(missing)} and no teacher model was given")
        if not teacher_inputs:
            if self.teacher_needs_own_inputs:
                raise UserInputError(
                    f"training batch: the teacher must run for what the cache lacks, but the batch has no "
                    f"'{TEACHER_PREFIX}input_ids' and the teacher's tokenizer differs from the student's; keep the "
                    f"teacher's own token columns in the training rows (cache_teacher_on_train keeps them when the "
                    f"teacher runs online)"
                )
            teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        device = next(v.device for v in teacher_inputs.values() if torch.is_tensor(v))  # not `encoder_outputs`' tuple
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with QKVCapture(self.teacher, need_qkv, enabled=bool(need_qkv)) as capture:
            res = self.teacher(
                **teacher_inputs, output_hidden_states=need_hidden or None, output_attentions=need_attn or None
            )
        out.qkv.update(capture.pop())
        if out.logits is None:
            out.logits = logits_of(res)
        if need_hidden:
            out.hidden_states = {t: res.hidden_states[t] for t in self.teacher_hidden_layers}
        if need_attn:
            if not res.attentions:
                raise RuntimeError("the teacher returned no attention maps; load it with attn_implementation='eager'")
            out.attentions = {t: res.attentions[t - 1] for _, t in self.layer_map}
        return out

    # ---- the loss ------------------------------------------------------------------------------------------
    def task_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The student's own loss (cross-entropy; CTC for a CTC model, whose real frames `attention_mask` gives), summed
        over items and divided by `num_items_in_batch` (default: this batch's labelled items)."""
        mask = item_mask(logits, labels)
        if self.ctc:
            total = self.ctc_task_loss_sum(logits, labels, self.ctc_frames(logits, attention_mask)[0])
        else:
            total = hard_label_loss_sum(logits, labels, mask)
        return total / self._denominator(mask, num_items_in_batch, logits)

    def ctc_frames(
        self, logits: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC models: `(frames [B], mask [B, F])` of the real (not padded) frames of logits `[B, F, V]`, from the
        batch's sample-level `attention_mask` through the convolutional feature encoder's output lengths; every frame
        when there is no attention mask (a model that reads zero-padded audio without one), and `attention_mask`
        itself when it is already per frame."""
        batch, frames = logits.shape[:2]
        if attention_mask is None:
            lengths = torch.full((batch,), frames, dtype=torch.long, device=logits.device)
        elif attention_mask.shape[-1] == frames:
            lengths = attention_mask.to(logits.device).sum(-1)
        else:
            lengths = feat_extract_output_lengths(self.student_config, attention_mask.to(logits.device).sum(-1))
        lengths = lengths.to(torch.long).clamp(0, frames)
        return lengths, torch.arange(frames, device=logits.device)[None, :] < lengths[:, None]

    def ctc_task_loss_sum(
        self, logits: torch.Tensor, labels: torch.Tensor, frame_lengths: torch.Tensor
    ) -> torch.Tensor:
        """The student's CTC loss summed over examples, with its config's blank (`pad_token_id`) and
        `ctc_zero_infinity` (the model's own loss is a per-batch mean, wrong under gradient accumulation)."""
        sc = self.student_config
        return ctc_loss_sum(logits, labels, frame_lengths, blank=int(sc.pad_token_id),
                            zero_infinity=bool(getattr(sc, "ctc_zero_infinity", False)))

    @staticmethod
    def _denominator(mask, num_items_in_batch, ref: torch.Tensor) -> torch.Tensor:
        if num_items_in_batch is None:
            return mask.sum().clamp_min(1).to(ref.device, torch.float32)
        return torch.as_tensor(num_items_in_batch, device=ref.device, dtype=torch.float32)

    def forward(
        self,
        student_outputs,
        labels: torch.Tensor | None = None,
        num_items_in_batch=None,
        teacher_outputs: TeacherOutputs | None = None,
        attention_mask: torch.Tensor | None = None,
        return_parts: bool = False,
        student_qkv: dict | None = None,
    ):
        """Loss = sum of the weighted terms over labelled items / `num_items_in_batch`.

        The positional order `(outputs, labels, num_items_in_batch)` is the one `Trainer(compute_loss_func=...)`
        uses; teacher outputs then come from the batch seen by the `attach` hook.

        For relation distillation the student's `{block: (query, key, value)}` come from the hooks `prepare_student`
        put on the student (recorded during the forward that followed `student_forward_kwargs()`), or from
        `student_qkv` when you computed them yourself. With `intermediate_fraction` > 0 only the current stage's
        terms are computed.
        """
        if teacher_outputs is None and self._stash is not None:
            teacher_outputs, attention_mask = self._stash
            self._stash = None
        captured = {}
        if self._student_capture is not None:
            captured = self._student_capture.pop()
            self._student_capture.enabled = False
        logits = logits_of(student_outputs)
        task_part = "loss_ctc" if self.ctc else "loss_ce"
        if teacher_outputs is None:  # evaluation (or no teacher seen): the student's task loss
            if labels is None:
                raise ValueError("DistillationLoss got neither teacher outputs nor labels")
            loss = self.task_loss(logits, labels, num_items_in_batch, attention_mask)
            return (loss, {task_part: loss.detach()}) if return_parts else loss
        cfg = self.config
        mask = item_mask(logits, labels)
        kd_mask = mask
        if self.ctc:
            # Items are label characters (what the Trainer counts); the per-frame terms are summed over real frames.
            frame_lengths, kd_mask = self.ctc_frames(logits, attention_mask)
            attention_mask = kd_mask  # the intermediate terms compare frames too
            if labels is None:
                mask = kd_mask
        denom = self._denominator(mask, num_items_in_batch, logits)
        # Per-example weight = its number of items, so per-example terms (hidden, attention) are normalised like
        # the per-item ones and stay exact under accumulation and across processes.
        weight = mask.reshape(mask.shape[0], -1).sum(-1).to(torch.float32)
        parts: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        pred, inter = self._stage_terms()
        if pred and labels is not None and cfg.alpha < 1:
            if self.ctc:
                parts[task_part] = self.ctc_task_loss_sum(logits, labels, frame_lengths)
            else:
                parts[task_part] = hard_label_loss_sum(logits, labels, mask)
            total = total + (1 - cfg.alpha) * parts[task_part]
        if pred and cfg.alpha > 0 and cfg.logit_weight > 0:
            student_kd, teacher_kd = logits, teacher_outputs.logits.to(logits.device)
            if is_span_output(student_outputs) and attention_mask is not None:
                student_kd, teacher_kd = mask_span_padding(student_kd, teacher_kd, attention_mask)
            parts["loss_kd"] = logit_kd_loss_sum(student_kd, teacher_kd, kd_mask, cfg.temperature)
            total = total + cfg.logit_weight * cfg.alpha * parts["loss_kd"]
        if inter and cfg.uses_intermediate:
            if attention_mask is None:
                attention_mask = torch.ones(logits.shape[0], 1, device=logits.device)
        if inter and cfg.uses_hidden:
            hs = student_outputs.hidden_states
            terms = []
            for s, t in self.layer_map:
                proj = self.projections[f"{s}_{t}"]
                th = teacher_outputs.hidden_states[t].to(hs[s].device, hs[s].dtype)
                tm = attention_mask if attention_mask.shape[-1] == th.shape[1] else torch.ones(th.shape[:2], device=th.device)
                terms.append(hidden_state_loss_per_example(proj(hs[s]), th, tm, cfg.hidden_loss))
            parts["loss_hidden"] = (torch.stack(terms).mean(0) * weight).sum()
            total = total + cfg.hidden_weight * parts["loss_hidden"]
        if inter and cfg.uses_attention:
            sa = student_outputs.attentions
            if not sa:
                raise RuntimeError("the student returned no attention maps; load it with attn_implementation='eager'")
            terms = [
                attention_kl_per_example(sa[s - 1], teacher_outputs.attentions[t].to(sa[s - 1].device), attention_mask)
                for s, t in self.layer_map
            ]
            parts["loss_attention"] = (torch.stack(terms).mean(0) * weight).sum()
            total = total + cfg.attention_weight * parts["loss_attention"]
        if inter and cfg.uses_relation:
            sq_all = student_qkv if student_qkv is not None else captured
            terms = []
            for s, t in self.relation_map:
                if s not in sq_all:
                    raise RuntimeError(
                        f"relation distillation: no query/key/value of student block {s} were recorded; call "
                        "loss.prepare_student(student) (or attach) and student_forward_kwargs() before the student's "
                        "forward, or pass student_qkv"
                    )
                sq = sq_all[s]
                if logits.requires_grad and not sq[0].requires_grad:
                    raise RuntimeError(
                        f"relation distillation: the recorded query/key/value of student block {s} carry no gradient "
                        "(reentrant gradient checkpointing recomputes them outside the graph); disable gradient "
                        "checkpointing or use gradient_checkpointing_kwargs={'use_reentrant': False}"
                    )
                tq = tuple(x.to(sq[0].device) for x in teacher_outputs.qkv[t])
                tm = attention_mask if attention_mask.shape[-1] == sq[0].shape[1] else torch.ones(sq[0].shape[:2], device=sq[0].device)
                terms.append(qkv_relation_kl_per_example(sq, tq, tm, self.relation_heads))
            parts["loss_relation"] = (torch.stack(terms).mean(0) * weight).sum()
            total = total + cfg.relation_weight * parts["loss_relation"]
        loss = total / denom
        self.last_parts = {k: (v / denom).detach() for k, v in parts.items()}
        if return_parts:
            return loss, dict(self.last_parts)
        return loss

    # ---- plain-Trainer integration -------------------------------------------------------------------------
    def check_teacher_inputs(self, inputs: dict) -> None:
        """Refuse a training batch from which the teacher would get the wrong signal: neither cached teacher outputs
        nor `teacher_input_ids`, while there is no teacher model to run or the teacher reads other token ids than
        the student. (A plain `Trainer` with `remove_unused_columns=True` drops those columns before the loss.)"""
        if any(k in inputs for k in CACHED_KEYS) or f"{TEACHER_PREFIX}input_ids" in inputs:
            return
        fix = (
            "A plain Trainer drops these columns unless TrainingArguments(remove_unused_columns=False) or "
            "callbacks=[DistillationCallback(kd)] (which turns it off); the data collator must keep them too "
            "(DistillationDataCollator(student_tokenizer, teacher_tokenizer) does)."
        )
        if self.teacher is None:
            raise UserInputError(
                f"training batch: found none of the cached teacher columns {list(CACHED_KEYS)} and no teacher model "
                f"was given to DistillationLoss; expected cached teacher outputs in every training batch. {fix}"
            )
        if self.teacher_needs_own_inputs:
            raise UserInputError(
                f"training batch: found no '{TEACHER_PREFIX}input_ids' (only {sorted(inputs)}), but the teacher's "
                "tokenizer differs from the student's, so it cannot read the student's token ids; expected the "
                f"teacher's own ids in '{TEACHER_PREFIX}input_ids'/'{TEACHER_PREFIX}attention_mask' (tokenize the "
                f"text a second time with the teacher's tokenizer, e.g. hfcompress.data.tokenize(..., "
                f"prefix='{TEACHER_PREFIX}')) or cached teacher outputs. {fix}"
            )

    def attach(self, student: nn.Module) -> "DistillationLoss":
        """Make this object usable as `Trainer(compute_loss_func=loss)` on an unmodified `Trainer`.

        A forward pre-hook on the student takes the teacher's entries out of each training batch (cached columns or
        `teacher_*` inputs), runs the teacher if needed, and asks the student for hidden states/attentions; the loss
        call that follows picks them up. In eval mode the hook only strips teacher entries, and the loss is the
        student's task loss. Returns self.

        A training batch with neither `teacher_input_ids` nor cached teacher outputs is an error (never a fallback to
        the student's ids) when the teacher reads other ids (`teacher_needs_own_inputs`) or there is no teacher
        model. `DistillationCallback` is required with a plain Trainer: it turns `remove_unused_columns` off so that
        those columns reach the hook, which then drops what the student's forward does not take.

        Example::

            kd = DistillationLoss(DistillationConfig(alpha=0.5, temperature=2.0), student.config, teacher).attach(student)
            trainer = Trainer(model=student, args=args, train_dataset=train, compute_loss_func=kd,
                              callbacks=[DistillationCallback(kd)])
        """
        if self._hooked is not None:
            self._hooked.remove()
        self.prepare_student(student)
        accepted = _forward_argument_names(student)
        dropped_logged: set[str] = set()

        def _pre_hook(module, args, kwargs):
            if self.drop_unused_inputs:
                # The columns the Trainer's remove_unused_columns would have dropped (it is off so that the
                # teacher's columns reach this hook).
                unused = [k for k in kwargs if k not in accepted and not k.startswith(TEACHER_PREFIX)]
                for k in unused:
                    kwargs.pop(k)
                if set(unused) - dropped_logged:
                    dropped_logged.update(unused)
                    logger.info("Not passed to %s.forward (it does not take them): %s", type(module).__name__, unused)
            if not module.training:
                for k in [k for k in kwargs if k.startswith(TEACHER_PREFIX)]:
                    kwargs.pop(k)
                # No teacher outputs (the task loss follows); a CTC loss still needs the batch's real frames.
                self._stash = (None, kwargs.get("attention_mask")) if self.ctc else None
                return args, kwargs
            self.check_teacher_inputs(kwargs)
            teacher_out = self.teacher_outputs(kwargs)
            kwargs.update(self.student_forward_kwargs())
            self._stash = (teacher_out, kwargs.get("attention_mask"))
            return args, kwargs

        self._hooked = student.register_forward_pre_hook(_pre_hook, with_kwargs=True)
        return self

    # ---- state ---------------------------------------------------------------------------------------------
    def has_trainable_parameters(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def save_projections(self, directory: str) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if not state:
            return
        os.makedirs(directory, exist_ok=True)
        save_file(state, os.path.join(directory, PROJECTIONS_FILE), metadata={"format": "pt"})

    def load_projections(self, directory: str) -> bool:
        path = os.path.join(directory, PROJECTIONS_FILE)
        if not os.path.exists(path):
            if self.has_trainable_parameters():
                logger.warning("No %s in %s: projections start from their initial values", PROJECTIONS_FILE, directory)
            return False
        device = next(self.parameters()).device
        self.load_state_dict({k: v.to(device) for k, v in load_file(path).items()})
        logger.info("Loaded distillation projections from %s", path)
        return True


def _forward_argument_names(model: nn.Module) -> set[str]:
    """Named arguments of `model.forward` (what the Trainer's `remove_unused_columns` keeps), plus what the
    Trainer itself passes (`num_items_in_batch`) and label names."""
    params = inspect.signature(model.forward).parameters.values()
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names | {"num_items_in_batch", "labels", "label", "label_ids"}


def _use_eager_attention(model: nn.Module) -> None:
    if getattr(model.config, "_attn_implementation", None) != "eager":
        model.set_attn_implementation("eager")
