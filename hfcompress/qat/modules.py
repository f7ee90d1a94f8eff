"""Fake-quantized layers and `apply_qat`, which turns a model's layers into them in place.

`QATLinear` and `QATEmbedding` are ``nn.Linear`` / ``nn.Embedding`` subclasses with the same parameters (``weight``,
``bias``), so the state dict, the Trainer's checkpoints and an optimizer built before `apply_qat` all stay valid;
`apply_qat` only changes the modules' class (and is a no-op on layers already converted, so a callback may call it
again at train begin). In the forward pass the weight is quantized per row (`quantizers.quantize_rows`) and the
Linear's input fake-quantized to 8 bits; the float weights remain the trained parameters. A reloaded packed
checkpoint holds the quantized weights themselves (`qat_frozen`): they are used as they are.

Only the inputs of the quantized Linears are quantized: the attention's own products (softmax(QK^T) V) stay float,
where TernaryBERT quantizes them too.
"""

from __future__ import annotations

import logging

import torch.nn as nn
import torch.nn.functional as F

from ..arch.base import linear_targets, unwrap_model
from ..errors import UserInputError
from ..packing import quantized_by
from .config import QATConfig
from .quantizers import fake_quantize_activation, fake_quantize_weight

logger = logging.getLogger(__name__)

QAT_KEY = "hfcompress_qat"  # config.json: {"weight_bits", "activation_bits", "embedding_bits", "modules": {name: bits}}


class QATLinear(nn.Linear):
    weight_bits: int = 2
    activation_bits: int = 8
    qat_frozen: bool = False  # the weight already holds quantized values (a reloaded packed checkpoint)

    def quantized_weight(self):
        return self.weight if self.qat_frozen else fake_quantize_weight(self.weight, self.weight_bits)

    def forward(self, x):
        if self.activation_bits:
            x = fake_quantize_activation(x, self.activation_bits)
        return F.linear(x, self.quantized_weight(), self.bias)


class QATEmbedding(nn.Embedding):
    weight_bits: int = 2
    qat_frozen: bool = False

    def quantized_weight(self):
        return self.weight if self.qat_frozen else fake_quantize_weight(self.weight, self.weight_bits)

    def forward(self, input):
        return F.embedding(input, self.quantized_weight(), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


def qat_targets(model: nn.Module, config: QATConfig) -> dict[str, int]:
    """Name -> weight bits of every layer to quantize: the chosen nn.Linear layers (default: all outside the task
    head) and, unless ``qat_embedding_bits`` is 32, the word embeddings. A pattern matching nothing is an error."""
    model = unwrap_model(model)
    chosen = linear_targets(model, config.qat_modules, "qat_modules")
    targets = {n: config.qat_weight_bits for n in chosen}
    if config.qat_embedding_bits != 32:
        emb = model.get_input_embeddings()
        targets.update({n: config.qat_embedding_bits for n, m in model.named_modules() if m is emb})
    return targets


def check_qat(model, config: QATConfig) -> dict[str, int]:
    """`UserInputError` for a model that is already quantized (int8, bitsandbytes, ONNX: quantizing twice compounds
    the error) or layers that match nothing; else the targets."""
    found = quantized_by(model)
    if found:
        raise UserInputError(f"quantization-aware training needs float weights; the model is already quantized: "
                             f"{found}. Start from its full-precision source")
    return qat_targets(model, config)


def apply_qat(model: nn.Module, config: QATConfig | None = None, targets: dict[str, int] | None = None,
              **kwargs) -> dict[str, int]:
    """Make the targeted layers of `model` fake-quantized (in place; parameters unchanged), record
    ``config.hfcompress_qat`` and return name -> bits. `targets` (name -> bits) overrides the config's choice (the
    loader's path)."""
    config = config or QATConfig(**kwargs)
    base = unwrap_model(model)
    if targets is None:
        already = getattr(getattr(base, "config", None), QAT_KEY, None)
        targets = dict(already["modules"]) if already else check_qat(base, config)
    modules = dict(base.named_modules())
    for name, bits in targets.items():
        module = modules.get(name)
        if isinstance(module, nn.Linear):
            module.__class__ = QATLinear
            module.activation_bits = config.qat_activation_bits
        elif isinstance(module, nn.Embedding):
            module.__class__ = QATEmbedding
        else:
            raise UserInputError(f"{name}: {type(module).__name__ if module is not None else 'no such module'}, not "
                                 "an nn.Linear or nn.Embedding to quantize")
        module.weight_bits = int(bits)
    setattr(base.config, QAT_KEY, {"weight_bits": config.qat_weight_bits, "activation_bits": config.qat_activation_bits,
                                   "embedding_bits": config.qat_embedding_bits, "modules": dict(targets)})
    logger.info("Quantization-aware training: %d layers, %s weights, %s-bit activations", len(targets), config.scheme,
                config.qat_activation_bits or "float")
    return targets


def qat_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in unwrap_model(model).named_modules() if isinstance(m, (QATLinear, QATEmbedding))}
