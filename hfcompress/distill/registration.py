"""Distillation's registration (see `hfcompress.registry`): the card's line for a ``distillation`` record entry and
the ``distill`` stage. It writes plain transformers checkpoints (no format of its own) and may follow any stage but
quantization."""

from __future__ import annotations

from ..registry import Method, register_method, settings_text


def describe(m: dict) -> tuple[str, list[str]]:
    extra = settings_text(m, ("hidden_weight", "attention_weight", "relation_weight", "intermediate_fraction"))
    return (f"knowledge distillation from `{m.get('teacher')}` (temperature {m.get('temperature')}, alpha "
            f"{m.get('alpha')}{', ' + extra if extra else ''})", ["distillation"])


register_method(Method(
    name="distillation", describe=describe, stage="distill", script="hfcompress.run.scripts:distill_script",
    fine_tunes=True, config_class="hfcompress.distill.config:DistillationConfig"))
