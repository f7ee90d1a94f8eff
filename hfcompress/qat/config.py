"""`QATConfig`: the bits of the weights, activations and embeddings a quantization-aware training run simulates, and
which layers. Validated on creation; a pattern matching nothing is checked against the model (`qat_targets`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..configs import MethodConfig
from ..errors import UserInputError

CONFIG_NAME = "qat_config.json"
WEIGHT_BITS = (1, 2, 7, 8)  # binary {-a, +a}, ternary {-a, 0, +a}, int8 on a 7-bit grid (+-63), int8 (+-127), per row
EMBEDDING_BITS = (1, 2, 7, 8, 32)  # 32: left in full precision


@dataclass
class QATConfig(MethodConfig):
    """Quantization-aware training: the forward pass uses quantized weights (per output row, one scale each) and
    8-bit activations, the backward pass the straight-through estimator (the gradient reaches the float weights as if
    the rounding were not there), so the float weights learn where to sit for the quantized model.

    * ``qat_weight_bits=2``: ternary {-a, 0, +a} (TernaryBERT, Zhang et al. 2020; TWN threshold 0.7 * mean|W| and
      a = mean of the |W| above it, per row);
    * ``qat_weight_bits=1``: binary {-a, +a}, a = mean|W| per row (BinaryBERT's baseline, Bai et al. 2021);
    * ``qat_weight_bits=8``: int8, symmetric per row (scale max|W| / 127; Q8BERT, Zafrir et al. 2019);
    * ``qat_weight_bits=7``: int8 kernels' weights on a 7-bit grid (-63..63, scale max|W| / 63; ONNX Runtime's
      "reduce range"): what ONNX Runtime's x86 int8 kernels compute exactly on CPUs without VNNI, where 8-bit weights
      overflow their 16-bit sums (see `hfcompress.qat.onnx_export`); stored in 7 bits per weight;
    * ``qat_weight_bits=1, qat_split_ternary=True``: BinaryBERT's ternary weight splitting (`hfcompress.qat.split`).

    Activations (the input of every quantized Linear) are fake-quantized symmetric per tensor from the batch's own
    range (``qat_activation_bits``, 0 turns it off). The word embeddings use ``qat_embedding_bits`` (default: the
    weights' bits; 2-bit ternary embeddings are TernaryBERT's choice and keep the whole checkpoint >10x smaller)."""

    config_name = CONFIG_NAME

    qat_weight_bits: int = field(
        default=2,
        metadata={"help": "Bits of the quantized Linear weights: 2 = ternary (TernaryBERT), 1 = binary (BinaryBERT), "
                  "8 = int8 per row (Q8BERT), 7 = int8 on a 7-bit grid (exact in ONNX Runtime's int8 kernels on CPUs "
                  "without VNNI)."},
    )
    qat_activation_bits: int = field(
        default=8,
        metadata={"help": "Bits of the fake-quantized activations (inputs of the quantized Linears), symmetric per "
                  "tensor from each batch's range; 0 = not quantized."},
    )
    qat_embedding_bits: int | None = field(
        default=None,
        metadata={"help": "Bits of the word embeddings: 1, 2 or 8 (quantized per row like the weights) or 32 (full "
                  "precision). Default: the weights' bits."},
    )
    qat_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Names of the nn.Linear layers to quantize (name, '.'-suffix or regular expression; "
                  "comma-separated in one word works). Default: every nn.Linear outside the task head."},
    )
    qat_split_ternary: bool = field(
        default=False,
        metadata={"help": "BinaryBERT's ternary weight splitting (with qat_weight_bits=1): the student is a "
                  "ternary-trained model (the model_dense/ folder of a --qat_weight_bits 2 run); each ternary Linear is "
                  "split into a binary one of twice the width computing the same function, which then trains as "
                  "binary. The word embeddings keep their bits (qat_embedding_bits, default 2 here)."},
    )
    qat_distill: bool = field(
        default=True,
        metadata={"help": "Train with distillation from the full-precision teacher (logits and hidden states, "
                  "TernaryBERT's recipe). --qat_distill false trains on the labels alone."},
    )

    def __post_init__(self):
        errors = []
        for name, allowed in (("qat_weight_bits", WEIGHT_BITS), ("qat_embedding_bits", EMBEDDING_BITS)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) not in allowed or \
                    int(value) != value:
                errors.append(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
            else:
                setattr(self, name, int(value))
        a = self.qat_activation_bits
        if isinstance(a, bool) or not isinstance(a, (int, float)) or int(a) != a or not (int(a) == 0 or 2 <= a <= 16):
            errors.append(f"qat_activation_bits must be 0 (off) or 2..16, got {a!r}")
        else:
            self.qat_activation_bits = int(a)
        self.qat_split_ternary = bool(self.qat_split_ternary)
        if self.qat_split_ternary and self.qat_weight_bits != 1:
            errors.append(f"qat_split_ternary splits a ternary model into a binary one: it needs qat_weight_bits=1, got "
                          f"{self.qat_weight_bits!r}")
        if self.qat_split_ternary and self.qat_embedding_bits is None:
            self.qat_embedding_bits = 2  # the ternary model's embeddings, kept as they are
        if self.qat_embedding_bits is None and isinstance(self.qat_weight_bits, int):
            self.qat_embedding_bits = self.qat_weight_bits
        if isinstance(self.qat_modules, str):
            self.qat_modules = [self.qat_modules]
        if self.qat_modules is not None:
            self.qat_modules = [p.strip() for raw in self.qat_modules for p in re.split(r",(?![^{]*\})", str(raw))
                                if p.strip()]
            if not self.qat_modules:
                errors.append("qat_modules is empty: leave it unset for the default layers")
            for pattern in self.qat_modules:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    errors.append(f"qat_modules: {pattern!r} is not a regular expression: {exc}")
        self.qat_distill = bool(self.qat_distill)
        if errors:
            raise UserInputError("Quantization-aware training configuration: " + "; ".join(errors))

    @property
    def scheme(self) -> str:
        return {1: "binary", 2: "ternary", 7: "int8-7bit", 8: "int8"}[self.qat_weight_bits]
