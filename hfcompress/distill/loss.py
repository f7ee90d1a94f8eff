"""`DistillationLoss`: the one place where distillation is computed.

Used three ways, always through this class:
  * by `DistillationTrainer.compute_loss`;
  * as `Trainer(compute_loss_func=...)` for existing fine-tuning code (see `attach`);
  * directly, on outputs you computed yourself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..arch import get_adapter
from .config import DistillationConfig, LayerMap, resolve_layer_map
from .losses import (
    attention_kl_per_example,
    hard_label_loss_sum,
    hidden_state_loss_per_example,
    item_mask,
    logit_kd_loss_sum,
)

logger = logging.getLogger(__name__)

PROJECTIONS_FILE = "distillation_projections.safetensors"
TEACHER_PREFIX = "teacher_"
CACHED_LOGITS = "teacher_logits"
CACHED_HIDDEN = "teacher_hidden_states"
CACHED_KEYS = (CACHED_LOGITS, CACHED_HIDDEN)


@dataclass
class TeacherOutputs:
    logits: torch.Tensor | None = None
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)  # teacher layer index -> [B, T, D]
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)  # teacher block index (1-based) -> [B,H,T,T]


def _default_label_names(config) -> bool:
    names = list(getattr(config, "id2label", {}).values())
    return all(str(n).startswith("LABEL_") for n in names)


def check_label_compatibility(student_config, teacher_config) -> None:
    """Teacher and student must predict the same classes, in the same order."""
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

    The teacher is frozen and put in eval mode here.
    """

    def __init__(
        self,
        config: DistillationConfig,
        student_config,
        teacher: nn.Module | None = None,
        teacher_config=None,
        cached_hidden_layers: list[int] | None = None,
    ):
        super().__init__()
        self.config = DistillationConfig.from_any(config)
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
            teacher_config = teacher.config
        if teacher_config is None:
            raise ValueError("DistillationLoss needs a teacher model or, when training from a cache, its config")
        object.__setattr__(self, "teacher", teacher)  # plain attribute: excluded from state_dict and .parameters()
        self.student_config = student_config
        self.teacher_config = teacher_config
        self.cached_hidden_layers = list(cached_hidden_layers or [])
        check_label_compatibility(student_config, teacher_config)
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

    # ---- configuration -------------------------------------------------------------------------------------
    def _resolve_layer_map(self) -> LayerMap:
        if not (self.config.uses_hidden or self.config.uses_attention):
            return []
        ns = get_adapter(self.student_config).num_layers(self.student_config)
        nt = get_adapter(self.teacher_config).num_layers(self.teacher_config)
        return resolve_layer_map(self.config.pairs, ns, nt)

    @property
    def teacher_hidden_layers(self) -> list[int]:
        return sorted({t for _, t in self.layer_map}) if self.config.uses_hidden else []

    def student_forward_kwargs(self) -> dict:
        kw = {}
        if self.config.uses_hidden:
            kw["output_hidden_states"] = True
        if self.config.uses_attention:
            kw["output_attentions"] = True
        return kw

    def prepare_student(self, student: nn.Module) -> None:
        """Switch the student to eager attention if attention maps are distilled (sdpa returns none)."""
        if self.config.uses_attention:
            _use_eager_attention(student)

    # ---- teacher side --------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_outputs(self, inputs: dict) -> TeacherOutputs:
        """Pop the teacher's entries from a batch and return its outputs: from the cache columns where present,
        otherwise by running the teacher (on `teacher_*` inputs if the batch has them, else the student's)."""
        cached = {k: inputs.pop(k) for k in CACHED_KEYS if k in inputs}
        teacher_inputs = {k[len(TEACHER_PREFIX):]: inputs.pop(k) for k in list(inputs) if k.startswith(TEACHER_PREFIX)}
        out = TeacherOutputs(logits=cached.get(CACHED_LOGITS))
        if CACHED_HIDDEN in cached:
            stored = cached[CACHED_HIDDEN]
            out.hidden_states = {t: stored[:, i] for i, t in enumerate(self.cached_hidden_layers)}
        need_logits = out.logits is None and self.config.alpha > 0 and self.config.logit_weight > 0
        need_hidden = any(t not in out.hidden_states for t in self.teacher_hidden_layers)
        need_attn = self.config.uses_attention
        if not (need_logits or need_hidden or need_attn):
            return out
        if self.teacher is None:
            missing = [n for n, need in (("logits", need_logits), ("hidden states", need_hidden), ("attentions", need_attn)) if need]
            raise ValueError(f"the batch has no cached teacher {', '.join(missing)} and no teacher model was given")
        if not teacher_inputs:
            teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        device = next(iter(teacher_inputs.values())).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        res = self.teacher(
            **teacher_inputs, output_hidden_states=need_hidden or None, output_attentions=need_attn or None
        )
        if out.logits is None:
            out.logits = res.logits
        if need_hidden:
            out.hidden_states = {t: res.hidden_states[t] for t in self.teacher_hidden_layers}
        if need_attn:
            if not res.attentions:
                raise RuntimeError("the teacher returned no attention maps; load it with attn_implementation='eager'")
            out.attentions = {t: res.attentions[t - 1] for _, t in self.layer_map}
        return out

    # ---- the loss ------------------------------------------------------------------------------------------
    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        mask = item_mask(logits, labels)
        return hard_label_loss_sum(logits, labels, mask) / self._denominator(mask, num_items_in_batch, logits)

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
    ):
        """Loss = sum of the weighted terms over labelled items / `num_items_in_batch`.

        The positional order `(outputs, labels, num_items_in_batch)` is the one `Trainer(compute_loss_func=...)`
        uses; teacher outputs then come from the batch seen by the `attach` hook.
        """
        if teacher_outputs is None and self._stash is not None:
            teacher_outputs, attention_mask = self._stash
            self._stash = None
        logits = student_outputs.logits if hasattr(student_outputs, "logits") else student_outputs["logits"]
        if teacher_outputs is None:  # evaluation (or no teacher seen): the student's task loss
            if labels is None:
                raise ValueError("DistillationLoss got neither teacher outputs nor labels")
            loss = self.task_loss(logits, labels, num_items_in_batch)
            return (loss, {"loss_ce": loss.detach()}) if return_parts else loss
        cfg = self.config
        mask = item_mask(logits, labels)
        denom = self._denominator(mask, num_items_in_batch, logits)
        # Per-example weight = its number of items, so per-example terms (hidden, attention) are normalised like
        # the per-item ones and stay exact under accumulation and across processes.
        weight = mask.reshape(mask.shape[0], -1).sum(-1).to(torch.float32)
        parts: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        if labels is not None and cfg.alpha < 1:
            parts["loss_ce"] = hard_label_loss_sum(logits, labels, mask)
            total = total + (1 - cfg.alpha) * parts["loss_ce"]
        if cfg.alpha > 0 and cfg.logit_weight > 0:
            parts["loss_kd"] = logit_kd_loss_sum(logits, teacher_outputs.logits.to(logits.device), mask, cfg.temperature)
            total = total + cfg.logit_weight * cfg.alpha * parts["loss_kd"]
        if cfg.uses_hidden or cfg.uses_attention:
            if attention_mask is None:
                attention_mask = torch.ones(logits.shape[0], 1, device=logits.device)
        if cfg.uses_hidden:
            hs = student_outputs.hidden_states
            terms = []
            for s, t in self.layer_map:
                proj = self.projections[f"{s}_{t}"]
                th = teacher_outputs.hidden_states[t].to(hs[s].device, hs[s].dtype)
                tm = attention_mask if attention_mask.shape[-1] == th.shape[1] else torch.ones(th.shape[:2], device=th.device)
                terms.append(hidden_state_loss_per_example(proj(hs[s]), th, tm, cfg.hidden_loss))
            parts["loss_hidden"] = (torch.stack(terms).mean(0) * weight).sum()
            total = total + cfg.hidden_weight * parts["loss_hidden"]
        if cfg.uses_attention:
            sa = student_outputs.attentions
            if not sa:
                raise RuntimeError("the student returned no attention maps; load it with attn_implementation='eager'")
            terms = [
                attention_kl_per_example(sa[s - 1], teacher_outputs.attentions[t].to(sa[s - 1].device), attention_mask)
                for s, t in self.layer_map
            ]
            parts["loss_attention"] = (torch.stack(terms).mean(0) * weight).sum()
            total = total + cfg.attention_weight * parts["loss_attention"]
        loss = total / denom
        if return_parts:
            return loss, {k: (v / denom).detach() for k, v in parts.items()}
        return loss

    # ---- plain-Trainer integration -------------------------------------------------------------------------
    def attach(self, student: nn.Module) -> "DistillationLoss":
        """Make this object usable as `Trainer(compute_loss_func=loss)` on an unmodified `Trainer`.

        A forward pre-hook on the student takes the teacher's entries out of each training batch (cached columns or
        `teacher_*` inputs), runs the teacher if needed, and asks the student for hidden states/attentions; the loss
        call that follows picks them up. In eval mode the hook only strips teacher entries, and the loss is the
        student's task loss. Returns self.

        Example::

            kd = DistillationLoss(DistillationConfig(alpha=0.5, temperature=2.0), student.config, teacher).attach(student)
            trainer = Trainer(model=student, args=args, train_dataset=train, compute_loss_func=kd,
                              callbacks=[DistillationCallback(kd)])
        """
        if self._hooked is not None:
            self._hooked.remove()
        self.prepare_student(student)

        def _pre_hook(module, args, kwargs):
            if not module.training:
                for k in [k for k in kwargs if k.startswith(TEACHER_PREFIX)]:
                    kwargs.pop(k)
                self._stash = None
                return args, kwargs
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


def _use_eager_attention(model: nn.Module) -> None:
    if getattr(model.config, "_attn_implementation", None) != "eager":
        model.set_attn_implementation("eager")
