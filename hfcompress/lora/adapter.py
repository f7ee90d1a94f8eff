"""LoRA through peft on any model hfcompress trains (a distilled student, a pruned checkpoint, a plain fine-tune),
with the things users lose on the way made explicit:

* **The head.** A classifier fine-tuned with LoRA has a new, randomly initialised head that must be trained in full
  and saved with the adapter, or a reloaded adapter classifies at random. `apply_lora` puts the family's task head
  (`hfcompress.arch.task_head_names`) in ``modules_to_save`` unless told otherwise.
* **The base.** An adapter is only half a model. The base it was trained on is written to disk (``base_model``) and
  named in the adapter's config, so ``AutoPeftModelForSequenceClassification.from_pretrained(adapter_dir)`` or
  `load_lora` rebuilds the pair in a fresh process, and `merge_lora` folds the update into a plain checkpoint.
* **Names.** A target or head that matches nothing is one clear error listing the module names that exist, before
  any training (peft's own error comes later and lists nothing useful).
* **QLoRA.** A base loaded in 8 or 4 bits (the run layer loads it through `hfcompress.quantize.bnb`, head in full
  precision) is prepared with `peft.prepare_model_for_kbit_training`. The merged checkpoint folds the update
  into the full-precision base (the usual practice: merging into 4-bit weights would quantize the update away).
"""

from __future__ import annotations

import logging
import os
import re

import torch
import torch.nn as nn

from ..arch import get_adapter, task_head_names, unwrap_model
from ..errors import UserInputError
from ..extras import require_extra
from .config import LoraArguments

logger = logging.getLogger(__name__)

BASE_DIR = "base_model"


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def _linear_like(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    name = type(module).__name__
    return name in ("Conv1D", "Linear8bitLt", "Linear4bit")


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def _summary(names: list[str], limit: int = 12) -> str:
    """Distinct name suffixes (the part after the block index), so a list of 36 projections reads as 6 kinds."""
    kinds = []
    for n in names:
        tail = re.split(r"\.\d+\.", n)[-1]
        if tail not in kinds:
            kinds.append(tail)
    more = f", ... ({len(kinds) - limit} more)" if len(kinds) > limit else ""
    return ", ".join(kinds[:limit]) + more


def default_target_modules(model: nn.Module) -> list[str]:
    """Every attention and feed-forward projection of every block, as the within-block paths of the family's
    adapter (e.g. ``attention.self.query`` ... ``output.dense`` for BERT)."""
    return list(get_adapter(model).block_linear_paths())


def check_target_modules(model: nn.Module, targets: list[str], what: str = "--lora_target_modules") -> None:
    linears = [n for n, m in unwrap_model(model).named_modules() if _linear_like(m)]
    missing = [t for t in targets if not any(_matches(n, t) for n in linears)]
    if missing:
        raise UserInputError(f"{what}: {', '.join(repr(t) for t in missing)} match no linear module of "
                             f"{type(unwrap_model(model)).__name__}; its linear modules are: {_summary(linears)}")


def check_modules_to_save(model: nn.Module, names: list[str]) -> None:
    model = unwrap_model(model)
    children = [n for n, _ in model.named_modules() if n]
    missing = [t for t in names if not any(_matches(n, t) for n in children)]
    if missing:
        raise UserInputError(f"--lora_modules_to_save: {', '.join(repr(t) for t in missing)} match no module of "
                             f"{type(model).__name__}; its top-level modules are: "
                             f"{', '.join(n for n, _ in model.named_children())}")


def lora_config(model: nn.Module, settings: LoraArguments):
    """The `peft.LoraConfig` for `model`, every name checked against the model first."""
    require_extra("lora", "LoRA")
    from peft import LoraConfig, TaskType

    targets = settings.target_list or default_target_modules(model)
    check_target_modules(model, targets)
    to_save = settings.modules_to_save_list
    if to_save is None:
        to_save = task_head_names(model)
    else:
        check_modules_to_save(model, to_save)
    name = type(unwrap_model(model)).__name__
    task_type = next((t for suffix, t in (("ForSequenceClassification", TaskType.SEQ_CLS),
                                          ("ForTokenClassification", TaskType.TOKEN_CLS),
                                          ("ForQuestionAnswering", TaskType.QUESTION_ANS)) if name.endswith(suffix)), None)
    return LoraConfig(
        r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
        target_modules=targets, modules_to_save=to_save or None, task_type=task_type,
    )


def check_lora(model: nn.Module, settings: LoraArguments) -> None:
    """Raise `UserInputError` for settings `model` cannot take (works on a meta-device model: nothing is built)."""
    if is_peft_model(model):
        raise UserInputError("the model already carries a peft adapter: merge it first (hfcompress.lora.merge_lora) "
                             "or train that adapter further without --lora_r")
    lora_config(model, settings)


def apply_lora(model: nn.Module, settings: LoraArguments, base_dir: str | None = None):
    """Wrap `model` in a peft LoRA model (only the LoRA factors and the head train).

    `base_dir`: a folder where the full-precision `model` is saved (``save_pretrained``). The adapter names it as its
    base, so it reloads and merges in a fresh process (for QLoRA: `model` is that base loaded in 8 or 4 bits).
    Without it the adapter names no base on disk.
    """
    require_extra("lora", "LoRA")
    from peft import get_peft_model, prepare_model_for_kbit_training

    check_lora(model, settings)
    cfg = lora_config(model, settings)
    if base_dir is not None:
        if not os.path.exists(os.path.join(base_dir, "config.json")):
            raise ValueError(f"base_dir {base_dir} holds no saved model: save the base there first")
        # peft names the base after the model's `name_or_path` (the adapter config's base_model_name_or_path)
        model.name_or_path = os.path.abspath(base_dir)
    quantized = bool(getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False))
    if settings.bits and not quantized:
        raise UserInputError(f"--lora_quantization {settings.lora_quantization}: the model is not quantized; load the "
                             "frozen base in 8 or 4 bits first (hfcompress.run.lora.lora_model does)")
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = get_peft_model(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA r=%d on %s (%s base): %d trainable parameters of %d (%.2f per cent), head trained in full: %s",
                settings.lora_r, ", ".join(cfg.target_modules if isinstance(cfg.target_modules, list) else [str(cfg.target_modules)]),
                settings.lora_quantization if settings.bits else "full-precision", trainable, total,
                100.0 * trainable / max(total, 1), cfg.modules_to_save)
    return peft_model


def load_lora(adapter_dir: str, base=None, merge: bool = False, model_class=None, **kwargs):
    """The adapter in `adapter_dir` on its base: `base` (a model or a folder), by default the base the adapter names
    (``base_model_name_or_path`` in adapter_config.json). With `merge`, a plain transformers model."""
    require_extra("lora", "LoRA")
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSequenceClassification

    if not os.path.exists(os.path.join(adapter_dir, "adapter_config.json")):
        raise UserInputError(f"{adapter_dir} holds no peft adapter (adapter_config.json is missing)")
    if base is None or isinstance(base, str):
        path = base or PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
        if not path or not os.path.isdir(path):
            raise UserInputError(f"the adapter in {adapter_dir} names base {path!r}, which is not a folder here; pass "
                                 "base= (the model the adapter was trained on)")
        base = (model_class or AutoModelForSequenceClassification).from_pretrained(path, **kwargs)
    model = PeftModel.from_pretrained(base, adapter_dir)
    return merge_lora(model) if merge else model.eval()


def merge_lora(model) -> nn.Module:
    """Fold the LoRA updates into the base weights and drop peft's wrappers: a plain transformers model."""
    if not is_peft_model(model):
        raise UserInputError(f"{type(model).__name__} carries no peft adapter to merge")
    merged = model.merge_and_unload()
    return merged.eval()


@torch.no_grad()
def max_logit_difference(a: nn.Module, b: nn.Module, vocab_size: int, batch: int = 4, seq_len: int = 16) -> float:
    """Largest absolute difference of two models' logits on one batch of random ids (to check a reload or merge)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size - 1, (batch, seq_len), generator=g)
    mask = torch.ones_like(ids)
    a.eval(), b.eval()
    la = a(input_ids=ids.to(next(a.parameters()).device), attention_mask=mask.to(next(a.parameters()).device)).logits
    lb = b(input_ids=ids.to(next(b.parameters()).device), attention_mask=mask.to(next(b.parameters()).device)).logits
    return float((la.float().cpu() - lb.float().cpu()).abs().max())
