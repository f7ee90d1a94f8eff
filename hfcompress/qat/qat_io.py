"""Checkpoints of quantization-aware trained models: packed codes on disk, the same forward pass after reloading.

`save_qat(model, dir)` writes ``config.json`` (with ``hfcompress_qat``: bits of weights, activations, embeddings and
every quantized layer's bits), the tokenizer and, instead of ``model.safetensors``, ``qat_model.safetensors``: each
quantized matrix as its codes packed at its bit width (1 bit binary, 2 bits ternary, 8 bits int8) plus one float32
scale per row; every other tensor as it is. `load_qat(dir)` rebuilds the model with the same fake-quantized layers,
their weights set to the stored quantized values (``qat_frozen``), so its logits are those of the model that was
saved. A file whose code widths or sizes disagree with the config is refused before any weight is used.

Size, not speed: PyTorch and ONNX Runtime have no CPU kernels for 1- or 2-bit weights, so the reloaded model
computes in float32 (its activations fake-quantized)
at the speed of the float model, or a little slower. An int8 model (``qat_weight_bits=7`` or 8) is fast once
converted: `hfcompress.qat.onnx_export.export_qat_onnx` writes the ONNX Runtime int8 graph with its trained scales and
static activation ranges (an int8 run writes it as ``model_onnx/``); `save_qat_dense` writes its quantized weights as
a plain transformers checkpoint, which ``hfcompress quantize --quantization onnx_int8`` (or ``torch_int8``) turns
into dynamic int8 kernels.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn

from ..arch.base import unwrap_model
from ..errors import UserInputError
from ..packed_io import (
    build_and_fill,
    packed_config,
    read_packed,
    refuse_disagreement,
    save_dense_export,
    unique_tensors,
    write_packed,
)
from ..packing import pack_bits, packed_nbytes, unpack_bits
from .config import QATConfig
from .modules import QAT_KEY, RANGE_BUFFER, QATLinear, apply_qat, qat_modules
from .quantizers import dequantize, quantize_rows

logger = logging.getLogger(__name__)

QAT_WEIGHTS_NAME = "qat_model.safetensors"
FORMAT = "hfcompress-qat-v1"


def quantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every quantized layer's weight replaced by its quantized values (what the forward
    pass uses): the weights of `save_qat_dense`."""
    model = unwrap_model(model)
    state = {k: v.detach() for k, v in model.state_dict().items() if not k.endswith("." + RANGE_BUFFER)}
    for name, module in qat_modules(model).items():
        state[f"{name}.weight"] = module.quantized_weight().detach()
    return state


def save_qat(model: nn.Module, directory: str, tokenizer=None) -> str:
    """Write the packed checkpoint (see the module docstring); the weights file is moved in last, a dense
    ``model.safetensors`` of an earlier save removed."""
    model = unwrap_model(model)
    if not getattr(model.config, QAT_KEY, None):
        raise UserInputError(f"{type(model).__name__} has no {QAT_KEY} in its config: it was not prepared for "
                             "quantization-aware training (hfcompress.qat.apply_qat)")
    quantized = {f"{n}.weight": m for n, m in qat_modules(model).items()}
    tensors, packed, tied = {}, {}, {}
    for key, t, tied_to in unique_tensors(model):
        module = quantized.get(key)
        if tied_to is not None:
            tied[key] = tied_to
        elif module is None:
            tensors[key] = t.detach().cpu().contiguous()
        else:
            bits = module.weight_bits
            codes, scales = quantize_rows(t, bits)  # what the forward pass dequantizes (of a reloaded model: ~its own)
            tensors[f"{key}.__codes"] = pack_bits(codes.cpu(), bits)
            tensors[f"{key}.__scales"] = scales.detach().cpu().float().contiguous()
            packed[key] = {"shape": list(t.shape), "bits": bits}
    write_packed(model, directory, QAT_WEIGHTS_NAME, tensors, {"format": FORMAT, "packed": packed, "tied": tied},
                 tokenizer)
    logger.info("Saved %d quantized layers (%s) to %s", len(packed),
                ", ".join(sorted({f"{v['bits']}-bit" for v in packed.values()})), directory)
    return directory


def is_qat_checkpoint(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, QAT_WEIGHTS_NAME))


def _read(directory: str, meta: dict) -> dict[str, torch.Tensor]:
    file_meta, raw = read_packed(directory, QAT_WEIGHTS_NAME, FORMAT)
    expected = {f"{n}.weight": int(b) for n, b in meta.get("modules", {}).items()}
    packed = file_meta.get("packed", {})
    bad = []
    if set(expected) != set(packed):
        bad.append(f"quantized layers {sorted(set(expected) ^ set(packed))[:4]} are in only one of the file and the "
                   "config")
    for key, info in packed.items():
        bits, shape = expected.get(key), info["shape"]
        count = int(torch.tensor(shape).prod())
        codes, scales = raw.get(f"{key}.__codes"), raw.get(f"{key}.__scales")
        if bits is None:
            continue
        if int(info["bits"]) != bits:
            bad.append(f"{key}: stored with {info['bits']}-bit codes, the config says {bits}-bit")
        elif codes is None or scales is None or codes.numel() != packed_nbytes(count, bits) or \
                scales.numel() != shape[0]:
            bad.append(f"{key}: {0 if codes is None else codes.numel()} code bytes for {count} weights of {bits} bits "
                       f"(expected {packed_nbytes(count, bits)}) and {0 if scales is None else scales.numel()} scales "
                       f"for {shape[0]} rows")
    refuse_disagreement(directory, QAT_KEY, bad, "save_qat")
    state = {}
    for key, info in packed.items():
        bits = int(info["bits"])
        count = int(torch.tensor(info["shape"]).prod())
        codes = unpack_bits(raw.pop(f"{key}.__codes"), bits, count).view(info["shape"])
        state[key] = dequantize(codes, raw.pop(f"{key}.__scales"), bits)
    state.update(raw)
    for key, source in file_meta.get("tied", {}).items():
        state[key] = state[source]
    return state


def load_qat(directory: str, model_class=None) -> nn.Module:
    """The model `save_qat` wrote, in eval mode, with its fake-quantized layers holding the stored quantized weights
    (see the module docstring)."""
    if not is_qat_checkpoint(directory):
        raise UserInputError(f"{directory} holds no {QAT_WEIGHTS_NAME}: not a checkpoint written by save_qat")
    config = packed_config(directory, QAT_KEY, "the packed weights cannot be read without their bit widths")
    meta = getattr(config, QAT_KEY)
    state = _read(directory, meta)
    qconfig = QATConfig(qat_weight_bits=meta["weight_bits"], qat_activation_bits=meta["activation_bits"],
                        qat_embedding_bits=meta.get("embedding_bits"))

    def prepare(m):
        apply_qat(m, qconfig, targets=meta["modules"])
        for name, module in qat_modules(m).items():  # saved before ranges were kept: none observed
            if isinstance(module, QATLinear):
                state.setdefault(f"{name}.{RANGE_BUFFER}", torch.zeros(()))

    model = build_and_fill(directory, config, state, model_class, prepare=prepare)
    for module in qat_modules(model).values():
        module.qat_frozen = True
    return model.eval()


def save_qat_dense(model: nn.Module, directory: str, tokenizer=None) -> str:
    """A plain transformers checkpoint holding the quantized weights as float32 (activations are not quantized
    there): any tool loads it; ``hfcompress quantize`` turns an int8-trained one into int8 kernels."""
    return save_dense_export(model, directory, QAT_KEY, tokenizer, state_dict=quantized_state_dict(model))
