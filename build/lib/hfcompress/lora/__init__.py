"""LoRA and QLoRA through peft, for the models hfcompress trains: `LoraArguments` (the script flags), `apply_lora`,
`load_lora`, `merge_lora`. See `adapter.py` for what is kept (the task head, the base) and why."""

from .adapter import apply_lora, check_lora, default_target_modules, is_peft_model, load_lora, merge_lora
from .config import LoraArguments

__all__ = ["LoraArguments", "apply_lora", "check_lora", "default_target_modules", "is_peft_model", "load_lora",
           "merge_lora"]
