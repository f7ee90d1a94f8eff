"""LoRA's registration (see `hfcompress.registry`): the card's line for a ``lora`` record entry and the ``lora`` stage
(the distillation script with `--lora_*`; QLoRA needs a base the family's own classes build, so not after structured
pruning or low rank). Needs peft, and bitsandbytes for QLoRA."""

from __future__ import annotations

from ..registry import Method, StageOrderError, register_method, settings_text


def describe(m: dict) -> tuple[str, list[str]]:
    quant = m.get("lora_quantization") not in (None, "none")
    settings = settings_text(m, ("lora_r", "lora_alpha", "lora_target_modules", "lora_quantization"))
    return (f"{'QLoRA' if quant else 'LoRA'} ({settings}; {m.get('trainable_parameters')} of {m.get('parameters')} "
            "parameters trained, the task head in full)"
            + (", merged into the weights" if m.get("lora_merge", True) else ", as an adapter"), ["lora"])


def follows(shape: str, args) -> str:
    if shape in ("structured", "lowrank") and args.value("lora_quantization") not in (None, "none"):
        raise StageOrderError(f"QLoRA needs a base the family's own classes can build; the previous stage leaves a "
                              f"{shape} model")
    return shape


def stage_inputs(values: dict, base_model: str | None, previous_model: str | None) -> None:
    values.setdefault("lora_r", 8)


def requires(args) -> list[str]:
    need = ["peft"] if args.value("lora_r") else []
    if args.value("lora_quantization") not in (None, "none"):
        need.append("bitsandbytes")
    return need


register_method(Method(
    name="lora", describe=describe, stage="lora", script="hfcompress.run.scripts:distill_script", follows=follows,
    stage_inputs=stage_inputs, requires=requires, fine_tunes=True, config_class="hfcompress.lora.config:LoraArguments"))
