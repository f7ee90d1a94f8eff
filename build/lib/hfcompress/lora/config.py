"""`LoraArguments`: the LoRA / QLoRA options a training script adds to its parser (``--lora_r``, ``--lora_alpha``,
``--lora_target_modules``, ...), checked before anything slow starts. ``--lora_r 0`` (the default) means no LoRA."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..configs import MethodConfig
from ..errors import UserInputError

CONFIG_NAME = "lora_settings.json"
QUANTIZATION_CHOICES = ("none", "8bit", "4bit")


def _split(value) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


@dataclass
class LoraArguments(MethodConfig):
    """How the trained model is adapted with LoRA (Hu et al. 2021) through peft. The base weights stay frozen; small
    rank-r updates of the targeted projections and the whole task head are trained, saved as an adapter, and merged
    into a plain checkpoint at the end. With `lora_quantization` the frozen base is held in 8 or 4 bits while it
    trains (QLoRA, Dettmers et al. 2023)."""

    config_name = CONFIG_NAME

    _argument_group_name = "LoRA (peft)"

    lora_r: int = field(
        default=0, metadata={"help": "LoRA rank: 0 trains the whole model (no LoRA); 8 or 16 are usual."}
    )
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scaling numerator: the update is scaled by lora_alpha / lora_r."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={"help": "Comma-separated module names (or name suffixes, e.g. 'query,value') that get LoRA updates. "
                  "Default: every attention and feed-forward projection of every block (the family's layout in "
                  "hfcompress.arch). A name that matches no module is an error listing those that exist."},
    )
    lora_modules_to_save: str | None = field(
        default=None,
        metadata={"help": "Comma-separated modules trained in full and saved whole in the adapter. Default: the task "
                  "head (BERT's classifier, DistilBERT's pre_classifier and classifier, ...), so a reloaded adapter "
                  "keeps its classifier."},
    )
    lora_quantization: str = field(
        default="none",
        metadata={"help": "QLoRA: hold the frozen base in '8bit' (LLM.int8) or '4bit' (nf4, double quantization) "
                  "while training, through bitsandbytes (CPU or CUDA); 'none' keeps it in full precision. The task "
                  "head stays full precision."},
    )
    lora_merge: bool = field(
        default=True,
        metadata={"help": "Also write the adapter merged into its full-precision base as <output_dir>/model (a plain "
                  "transformers checkpoint); the adapter alone is always written to <output_dir>/adapter."},
    )

    def __post_init__(self):
        if int(self.lora_r) < 0:
            raise UserInputError(f"--lora_r must be 0 (no LoRA) or a positive rank, got {self.lora_r}")
        self.lora_r = int(self.lora_r)
        if self.lora_alpha <= 0:
            raise UserInputError(f"--lora_alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UserInputError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_quantization not in QUANTIZATION_CHOICES:
            raise UserInputError(f"--lora_quantization must be one of {', '.join(QUANTIZATION_CHOICES)}, "
                                 f"got {self.lora_quantization!r} (asking for 4-bit and 8-bit at once is not possible)")
        if self.lora_quantization != "none" and not self.lora_r:
            raise UserInputError(f"--lora_quantization {self.lora_quantization} holds a frozen base for LoRA: "
                                 "give --lora_r too (e.g. 8)")

    @property
    def enabled(self) -> bool:
        return self.lora_r > 0

    @property
    def target_list(self) -> list[str] | None:
        return _split(self.lora_target_modules)

    @property
    def modules_to_save_list(self) -> list[str] | None:
        return _split(self.lora_modules_to_save)

    @property
    def bits(self) -> int | None:
        return {"8bit": 8, "4bit": 4}.get(self.lora_quantization)
