"""Fake-quantized layers and `apply_qat`, which turns a model's layers into them in place.

`QATLinear` and `QATEmbedding` are ``nn.Linear`` / ``nn.Embedding`` subclasses with the same parameters (``weight``,
``bias``), so the state dict, the Trainer's checkpoints and an optimizer built before `apply_qat` all stay valid;
`apply_qat` only changes the modules' class (and is a no-op on layers already converted, so a callback may call it
again at train begin). In the forward pass the weight is quantized per row (`quantizers.quantize_rows`) and the
Linear's input fake-quantized to 8 bits; the float weights remain the trained parameters. A reloaded packed
checkpoint holds the quantized weights themselves (`qat_frozen`): they are used as they are.

Only the inputs of the quantized Linears are quantized: the attention's own products (softmax(QK^T) V) stay float,
where TernaryBERT quantizes them too.

Activation ranges (Q8BERT): in training each quantized Linear's input is rounded over the batch's own range, and an
exponential moving average of that range (``activation_range``, a buffer: it is in the state dict, so Trainer
checkpoints, resumed runs and packed checkpoints keep it) is kept. In eval mode a layer with an observed range rounds
its input on that fixed grid (`quantizers.static_quantize_activation`), as the int8 ONNX export does
(`hfcompress.qat.onnx_export`); a layer that never saw a batch in training (range 0) rounds over the input's own range.
`calibrate_activation_ranges` sets the ranges of a model that was not trained here.

BinaryBERT's ternary weight splitting (`hfcompress.qat.split`) gives a binary layer ``split=True``: its weight is
``[out, 2 * in]``, two binary matrices side by side whose sum is the weight used.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..arch.base import linear_targets, unwrap_model
from ..errors import UserInputError
from ..packing import quantized_by
from .config import QATConfig
from .quantizers import fake_quantize_activation, fake_quantize_weight, static_quantize_activation

logger = logging.getLogger(__name__)

QAT_KEY = "hfcompress_qat"  # config.json: {"weight_bits", "activation_bits", "embedding_bits", "modules": {name: bits}}
RANGE_BUFFER = "activation_range"
RANGE_MOMENTUM = 0.9  # weight of the old range in the moving average (Q8BERT keeps an EMA of the activation ranges)


class QATLinear(nn.Linear):
    weight_bits: int = 2
    activation_bits: int = 8
    qat_frozen: bool = False  # the weight already holds quantized values (a reloaded packed checkpoint)
    split: bool = False  # BinaryBERT's split: the weight is [out, 2 * in], the sum of its two halves is used

    def quantized_weight(self):
        w = self.weight if self.qat_frozen else fake_quantize_weight(self.weight, self.weight_bits)
        return w[:, :self.in_features] + w[:, self.in_features:] if self.split else w

    def static_range(self) -> float | None:
        """The observed range of this layer's input (max|x|, moving average), or None if none was observed."""
        r = getattr(self, RANGE_BUFFER, None)
        value = float(r) if r is not None else 0.0
        return value if value > 0 else None

    def forward(self, x):
        if self.activation_bits:
            r = getattr(self, RANGE_BUFFER, None)
            if self.training:
                if r is not None:
                    with torch.no_grad():
                        seen = x.detach().abs().amax().to(r.dtype)
                        r.copy_(torch.where(r > 0, RANGE_MOMENTUM * r + (1 - RANGE_MOMENTUM) * seen, seen))
                x = fake_quantize_activation(x, self.activation_bits)
            else:
                static = self.static_range()
                x = (fake_quantize_activation(x, self.activation_bits) if static is None
                     else static_quantize_activation(x, static, self.activation_bits))
        return F.linear(x, self.quantized_weight(), self.bias)


class QATEmbedding(nn.Embedding):
    weight_bits: int = 2
    qat_frozen: bool = False

    def quantized_weight(self):
        return self.weight if self.qat_frozen else fake_quantize_weight(self.weight, self.weight_bits)

    def forward(self, input):
        return F.embedding(input, self.quantized_weight(), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


def widen_for_split(module: QATLinear) -> None:
    """Make `module` a split binary layer (`hfcompress.qat.split`) whose ``[out, 2 * in]`` weight is yet to be filled
    (the loader's path; a layer already split is left as it is)."""
    if not module.split:
        module.weight = nn.Parameter(module.weight.new_empty(module.out_features, 2 * module.in_features))
        module.split = True
    module.weight_bits = 1


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
    already = getattr(getattr(base, "config", None), QAT_KEY, None) or {}
    if targets is None:
        targets = dict(already["modules"]) if already else check_qat(base, config)
    modules = dict(base.named_modules())
    for name, bits in targets.items():
        module = modules.get(name)
        if isinstance(module, nn.Linear):
            module.__class__ = QATLinear
            module.activation_bits = config.qat_activation_bits
            if RANGE_BUFFER not in module._buffers:
                module.register_buffer(RANGE_BUFFER, torch.zeros((), device=module.weight.device))
        elif isinstance(module, nn.Embedding):
            module.__class__ = QATEmbedding
        else:
            raise UserInputError(f"{name}: {type(module).__name__ if module is not None else 'no such module'}, not "
                                 "an nn.Linear or nn.Embedding to quantize")
        module.weight_bits = int(bits)
    split = list(already.get("split", []))
    for name in split:  # BinaryBERT-split layers (a reloaded checkpoint): [out, 2 * in] weights, filled by the loader
        widen_for_split(modules[name])
    setattr(base.config, QAT_KEY, {"weight_bits": config.qat_weight_bits, "activation_bits": config.qat_activation_bits,
                                   "embedding_bits": config.qat_embedding_bits, "modules": dict(targets),
                                   **({"split": split} if split else {})})
    logger.info("Quantization-aware training: %d layers, %s weights, %s-bit activations", len(targets), config.scheme,
                config.qat_activation_bits or "float")
    return targets


def qat_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in unwrap_model(model).named_modules() if isinstance(m, (QATLinear, QATEmbedding))}


@torch.no_grad()
def calibrate_activation_ranges(model: nn.Module, batches) -> dict[str, float]:
    """Set every quantized Linear's ``activation_range`` to the largest max|input| seen over `batches` (dicts of model
    inputs), in eval mode: the static ranges of a QAT model whose training did not record them (or to re-observe
    them on other data). Returns name -> range."""
    modules = {n: m for n, m in qat_modules(model).items() if isinstance(m, QATLinear) and m.activation_bits}
    seen = dict.fromkeys(modules, 0.0)
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.__setitem__(
        n, max(seen[n], float(args[0].detach().abs().amax())))) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        for m in modules.values():  # observe each input on its own range, not on one set before
            getattr(m, RANGE_BUFFER).zero_()
        count = 0
        for batch in batches:
            model(**batch)
            count += 1
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not count:
        raise UserInputError("calibrate_activation_ranges: no batches were given")
    for name, m in modules.items():
        getattr(m, RANGE_BUFFER).fill_(seen[name])
    return seen
