"""LoRA / QLoRA as a method of any training run (`scripts/distill.py --lora_r 8`): the student is wrapped in a peft
adapter before the trainer is built, and at the end the run writes the adapter (``adapter/``, classifier included),
the base it was trained on (``base_model/``) and, unless ``--no_lora_merge``, the merged plain checkpoint
(``model/``)."""

from __future__ import annotations

import logging
import os

from accelerate import PartialState

from ..errors import UserInputError
from ..loading import load_model, save_model
from ..lora import LoraArguments, apply_lora, check_lora, load_lora
from ..lora.adapter import BASE_DIR, max_logit_difference
from ..remote_code import shape_codes
from ..report.measure import count_parameters, folder_size_mb
from . import steps
from .methods import RunMethod

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


def lora_model(model, settings: LoraArguments, base_dir: str):
    """`model` (already saved in `base_dir`) wrapped in LoRA; for QLoRA (``--lora_quantization``) the frozen base is
    that saved model re-loaded in 8 or 4 bits through bitsandbytes, task head in full precision."""
    if settings.bits:
        if shape_codes(model.config):
            raise UserInputError("--lora_quantization on a structurally pruned or low-rank model is not supported "
                                 "(bitsandbytes loads through the family's own classes, which build every block at "
                                 "full width); use LoRA on the full-precision model")
        from ..quantize.bnb import load_quantized

        model = load_quantized(base_dir, bits=settings.bits, model_class=type(model))
    return apply_lora(model, settings, base_dir=base_dir)


def lora_methods(settings: LoraArguments) -> list[RunMethod]:
    """`[LoraMethod]` when `--lora_r` asks for LoRA, else `[]` (so scripts add it unconditionally)."""
    return [LoraMethod(settings)] if settings.enabled else []


class LoraMethod(RunMethod):
    name = "lora"

    def __init__(self, settings: LoraArguments):
        self.settings = settings
        self.info: dict = {}

    def check(self, model_args, data_args, args, train_rows: int) -> None:
        check_lora(self.probe_model(model_args), self.settings)
        if self.settings.bits and getattr(args, "gradient_checkpointing", False):
            raise UserInputError("--gradient_checkpointing with --lora_quantization is not supported here; drop one")

    def prepare_model(self, model, run_dir: str, tokenizer=None):
        base_dir = os.path.join(run_dir, BASE_DIR)
        if PartialState().is_main_process:
            save_model(model, base_dir, tokenizer)
        PartialState().wait_for_everyone()
        model = lora_model(model, self.settings, base_dir)
        self.info["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.info["parameters"] = count_parameters(model)
        return model

    def save(self, trainer, tokenizer, run_dir: str) -> dict:
        adapter_dir = os.path.join(run_dir, ADAPTER_DIR)
        base_dir = os.path.join(run_dir, BASE_DIR)
        out = {"adapter": adapter_dir, "base_model": base_dir}
        if not trainer.is_world_process_zero():
            return {**out, "model": os.path.join(run_dir, steps.MODEL_DIR) if self.settings.lora_merge else adapter_dir}
        model = trainer.model
        model.save_pretrained(adapter_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(adapter_dir)
        self.info["adapter_mb"] = folder_size_mb(adapter_dir)
        if not self.settings.lora_merge:
            return {**out, "model": adapter_dir}
        model_dir = os.path.join(run_dir, steps.MODEL_DIR)
        # a fresh full-precision base from disk + the saved adapter, as a user would rebuild it
        merged = load_lora(adapter_dir, base=load_model(base_dir), merge=True)
        save_model(merged, model_dir, tokenizer)
        # The merged checkpoint against the model that trained: equal up to float rounding for LoRA; for QLoRA the
        # trained forward ran on quantized base weights, so the difference is the quantization error.
        self.info["merged_max_logit_difference"] = max_logit_difference(
            merged, model, vocab_size=merged.config.vocab_size
        )
        self.info["model_mb"] = folder_size_mb(model_dir)
        return {**out, "model": model_dir}

    def record(self) -> dict:
        return {**self.settings.to_dict(), **self.info,
                "loading": "model/: AutoModelForSequenceClassification.from_pretrained(path) (merged); adapter/: "
                           "hfcompress.lora.load_lora(path) or peft's AutoPeftModelForSequenceClassification"}
