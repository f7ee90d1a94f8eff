"""`QuantizationConfig`: which post-training quantizer turns a trained model into its deployable form, with its
settings, checked before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..configs import MethodConfig
from ..errors import UserInputError

CONFIG_NAME = "quantization_settings.json"
METHODS = ("none", "torch_int8", "onnx_fp32", "onnx_int8", "bnb_8bit", "bnb_4bit")


@dataclass
class QuantizationConfig(MethodConfig):
    """One quantizer, last step of a compression run (after distillation, pruning, vocabulary trimming, low rank).

    * ``onnx_int8``: export to ONNX and quantize with ONNX Runtime (int8 weights, dynamic int8 activations): the fast
      CPU path that replaces optimum's ORTModelForSequenceClassification; ``onnx_fp32``: the export alone.
    * ``torch_int8``: PyTorch dynamic int8 of the Linear layers, for users who stay in PyTorch.
    * ``bnb_8bit`` / ``bnb_4bit``: bitsandbytes LLM.int8 / 4-bit (nf4 or fp4, double quantization) through
      transformers' ``BitsAndBytesConfig``: small in memory and on disk, CPU or CUDA; on a CPU not faster.

    ``load_in_8bit`` / ``load_in_4bit`` are accepted as in ``BitsAndBytesConfig`` and select ``bnb_8bit`` /
    ``bnb_4bit``.
    """

    config_name = CONFIG_NAME

    _argument_group_name = "Quantization"

    quantization: str = field(
        default="onnx_int8",
        metadata={"help": "Quantizer: " + ", ".join(METHODS) + ". onnx_int8 is the fast CPU path (about 2x on MiniLM); "
                  "bnb_* shrink memory and disk, not CPU latency; none skips quantization (trim / low rank only)."},
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "Same as --quantization bnb_8bit (BitsAndBytesConfig)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Same as --quantization bnb_4bit (BitsAndBytesConfig)."})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: 'nf4' or 'fp4'."})
    bnb_4bit_use_double_quant: bool = field(
        default=True, metadata={"help": "Quantize the 4-bit blocks' scales too (saves about 0.4 bit per weight)."}
    )
    skip_modules: str | None = field(
        default=None,
        metadata={"help": "Comma-separated modules kept in full precision by bnb_* and torch_int8. Default: the task "
                  "head (BERT's classifier, ...). A name matching no module is an error listing those that exist."},
    )
    torch_per_channel: bool = field(
        default=True,
        metadata={"help": "torch_int8: one weight scale per output channel (MiniLM-L6: 97.0 vs 95.1 in 100 predictions "
                  "equal to fp32's, same speed); --no_torch_per_channel for one scale per tensor."},
    )
    onnx_opset: int = field(default=17, metadata={"help": "ONNX opset of the export."})
    onnx_per_channel: bool = field(
        default=True,
        metadata={"help": "onnx_int8: one weight scale per output channel (MiniLM-L6 on Rotten Tomatoes: 0.8408 vs "
                  "0.8353 per tensor, same speed); --no_onnx_per_channel for one scale per tensor."},
    )
    onnx_float_modules: str | None = field(
        default=None,
        metadata={"help": "onnx_int8: comma-separated regular expressions of module names kept float (besides the "
                  "task head, always float), e.g. 'layer\\.0\\.output\\.dense$' for the most sensitive projection."},
    )

    def __post_init__(self):
        if self.load_in_8bit and self.load_in_4bit:
            raise UserInputError("--load_in_8bit and --load_in_4bit both given: choose one (8-bit LLM.int8 or 4-bit)")
        if self.load_in_8bit or self.load_in_4bit:
            implied = "bnb_8bit" if self.load_in_8bit else "bnb_4bit"
            if self.quantization not in ("onnx_int8", implied):  # onnx_int8 is the default, i.e. not chosen
                raise UserInputError(f"--quantization {self.quantization} and --load_in_{implied[-4:]} ask for two "
                                     "quantizers: choose one")
            self.quantization = implied
        if self.quantization not in METHODS:
            raise UserInputError(f"--quantization must be one of {', '.join(METHODS)}, got {self.quantization!r}")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise UserInputError(f"--bnb_4bit_quant_type must be 'nf4' or 'fp4', got {self.bnb_4bit_quant_type!r}")
        if self.onnx_opset < 14:
            raise UserInputError(f"--onnx_opset must be at least 14 (scaled dot-product attention), got {self.onnx_opset}")

    @property
    def skip_list(self) -> list[str] | None:
        if not self.skip_modules:
            return None
        return [s.strip() for s in self.skip_modules.split(",") if s.strip()]

    @property
    def float_module_list(self) -> list[str]:
        return [s.strip() for s in (self.onnx_float_modules or "").split(",") if s.strip()]

    @property
    def is_onnx(self) -> bool:
        return self.quantization.startswith("onnx")

    @property
    def is_bnb(self) -> bool:
        return self.quantization.startswith("bnb")
