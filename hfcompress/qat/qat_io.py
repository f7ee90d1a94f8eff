"""Checkpoints of quantization-aware trained models: packed codes on disk, the same forward pass after reloading.

`save_qat(model, dir)` writes ``config.json`` (with ``hfcompress_qat``: bits of weights, activations, embeddings and
every quantized layer's bits), the tokenizer and, instead of ``model.safetensors``, ``qat_model.safetensors``: each
quantized matrix as its codes packed at its bit width (1 bit binary, 2 bits ternary, 8 bits int8) plus one float32
scale per row; every other tensor as it is. `load_qat(dir)` rebuilds the model with the same fake-quantized layers,
their weights set to the stored quantized values (``qat_frozen``), so its logits are those of the model that was
saved. A file whose code widths or sizes disagree with the config is refused before any weight is used.

Size, not speed: PyTorch and ONNX Runtime have no CPU kernels for 1- or 2-bit weights, so the reloaded model
computes in float32 (its activations fake-quantized) at the speed of the float model, or a little slower. An int8
model (``qat_weight_bits=8``) is fast once converted: `save_qat_dense` writes its quantized weights as a plain
transformers checkpoint, which ``hfcompress quantize --quantization onnx_int8`` (or ``torch_int8``) turns into int8
kernels; being on a per-row int8 grid already, the weights lose nothing more there.
"""

from __future__ import annotations

import json
import logging
import os

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ..arch.base import unwrap_model
from ..errors import UserInputError
from ..files import atomic_path
from ..packing import pack_bits, packed_nbytes, unpack_bits
from ..remote_code import architecture_class, plain_class_name, save_with_modeling_code, shape_codes, shaped_class
from .config import QATConfig
from .modules import QAT_KEY, apply_qat, qat_modules
from .quantizers import dequantize, quantize_rows

logger = logging.getLogger(__name__)

QAT_WEIGHTS_NAME = "qat_model.safetensors"
FORMAT = "hfcompress-qat-v1"


def _meta(model: nn.Module) -> dict:
    meta = getattr(model.config, QAT_KEY, None)
    if not meta:
        raise UserInputError(f"{type(model).__name__} has no {QAT_KEY} in its config: it was not prepared for "
                             "quantization-aware training (hfcompress.qat.apply_qat)")
    return meta


def quantized_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every quantized layer's weight replaced by its quantized values (what the forward
    pass uses): the weights of `save_qat_dense`."""
    model = unwrap_model(model)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    for name, module in qat_modules(model).items():
        state[f"{name}.weight"] = module.quantized_weight().detach()
    return state


def save_qat(model: nn.Module, directory: str, tokenizer=None) -> str:
    """Write the packed checkpoint (see the module docstring); the weights file is moved in last, a dense
    ``model.safetensors`` of an earlier save removed."""
    model = unwrap_model(model)
    _meta(model)  # a model apply_qat prepared, or a clear error
    modules = qat_modules(model)
    tensors, packed, tied, seen = {}, {}, {}, {}
    quantized = {f"{n}.weight": m for n, m in modules.items()}
    for key, t in model.state_dict().items():
        ident = (t.data_ptr(), tuple(t.shape))
        if t.numel() and ident in seen:
            tied[key] = seen[ident]
            continue
        if t.numel():
            seen[ident] = key
        module = quantized.get(key)
        if module is None:
            tensors[key] = t.detach().cpu().contiguous()
            continue
        bits = module.weight_bits
        codes, scales = quantize_rows(t, bits)  # what the forward pass dequantizes (of a reloaded model: ~its own)
        tensors[f"{key}.__codes"] = pack_bits(codes.cpu(), bits)
        tensors[f"{key}.__scales"] = scales.detach().cpu().float().contiguous()
        packed[key] = {"shape": list(t.shape), "bits": bits}
    os.makedirs(directory, exist_ok=True)
    model.config.architectures = [plain_class_name(type(model).__name__)]
    model.config.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    for stale in ("model.safetensors", "model.safetensors.index.json"):
        if os.path.exists(os.path.join(directory, stale)):
            os.remove(os.path.join(directory, stale))
    with atomic_path(os.path.join(directory, QAT_WEIGHTS_NAME), suffix=".safetensors") as tmp:
        save_file(tensors, tmp, metadata={"hfcompress": json.dumps({"format": FORMAT, "packed": packed,
                                                                    "tied": tied})})
    logger.info("Saved %d quantized layers (%s) to %s", len(packed),
                ", ".join(sorted({f"{v['bits']}-bit" for v in packed.values()})), directory)
    return directory


def is_qat_checkpoint(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, QAT_WEIGHTS_NAME))


def _read(directory: str, meta: dict) -> dict[str, torch.Tensor]:
    path = os.path.join(directory, QAT_WEIGHTS_NAME)
    with safe_open(path, "pt") as fh:
        file_meta = json.loads((fh.metadata() or {}).get("hfcompress", "{}"))
        if file_meta.get("format") != FORMAT:
            raise UserInputError(f"{path}: unknown format {file_meta.get('format')!r} (expected {FORMAT})")
        raw = {k: fh.get_tensor(k) for k in fh.keys()}
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
    if bad:
        raise UserInputError(f"{directory}: the packed weights disagree with config.json's {QAT_KEY}: "
                             f"{'; '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}. Save config and weights together "
                             "with save_qat")
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
    from transformers import AutoConfig

    if not is_qat_checkpoint(directory):
        raise UserInputError(f"{directory} holds no {QAT_WEIGHTS_NAME}: not a checkpoint written by save_qat")
    config = AutoConfig.from_pretrained(directory)
    meta = getattr(config, QAT_KEY, None)
    if not meta:
        raise UserInputError(f"{directory}/config.json has no {QAT_KEY}: the packed weights cannot be read without "
                             "their bit widths")
    state = _read(directory, meta)
    cls = shaped_class(config, architecture_class(config, directory, model_class))
    model = cls(config)
    qconfig = QATConfig(qat_weight_bits=meta["weight_bits"], qat_activation_bits=meta["activation_bits"],
                        qat_embedding_bits=meta.get("embedding_bits"))
    apply_qat(model, qconfig, targets=meta["modules"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in (getattr(model, "_tied_weights_keys", None) or ())]
    if missing or unexpected:
        raise UserInputError(f"{directory}: weights do not match {type(model).__name__} (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
    for module in qat_modules(model).values():
        module.qat_frozen = True
    return model.eval()


def save_qat_dense(model: nn.Module, directory: str, tokenizer=None) -> str:
    """A plain transformers checkpoint holding the quantized weights as float32 (activations are not quantized
    there): any tool loads it; ``hfcompress quantize`` turns an int8-trained one into int8 kernels."""
    model = unwrap_model(model)
    state = quantized_state_dict(model)
    meta = getattr(model.config, QAT_KEY, None)
    if meta is not None:
        delattr(model.config, QAT_KEY)
    try:
        if shape_codes(model.config):
            save_with_modeling_code(model, directory, tokenizer, state_dict=state)
        else:
            model.save_pretrained(directory, safe_serialization=True, state_dict=state)
            if tokenizer is not None:
                tokenizer.save_pretrained(directory)
    finally:
        if meta is not None:
            setattr(model.config, QAT_KEY, meta)
    return directory
