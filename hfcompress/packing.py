"""Packing small integers into bytes, and telling whether a model is already quantized: the storage primitives the
below-eight-bit methods share (weight sharing's cluster indices, ternary / binary / int8 codes). Imports nothing of
the package (ground floor), so method folders use it without importing each other.

``pack_bits(codes, bits)`` stores each code (an integer in ``[0, 2**bits)``) in exactly `bits` bits, most significant
bit first, as a flat ``uint8`` tensor of ``ceil(n * bits / 8)`` bytes; ``unpack_bits(packed, bits, n)`` reads them
back. Any width from 1 to 8 bits works (4-bit indices take half a byte each, ternary codes a quarter).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes `count` codes of `bits` bits take once packed."""
    return math.ceil(count * bits / 8)


def bits_for(levels: int) -> int:
    """Bits that index `levels` values (``ceil(log2 levels)``, at least 1)."""
    return max(1, math.ceil(math.log2(levels))) if levels > 1 else 1


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """`codes` (any shape, integers in ``[0, 2**bits)``) as a flat ``uint8`` tensor, `bits` bits each."""
    if not 1 <= bits <= 8:
        raise ValueError(f"pack_bits: bits must be 1..8, got {bits}")
    flat = codes.detach().reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2 ** bits):
        raise ValueError(f"pack_bits: codes outside [0, {2 ** bits}) cannot be stored in {bits} bits")
    as_bytes = flat.to(torch.uint8).cpu().numpy()
    if bits == 8:
        return torch.from_numpy(as_bytes.copy())
    # each code's `bits` low bits, most significant first, then the bit stream packed into bytes
    bit_rows = np.unpackbits(as_bytes[:, None], axis=1)[:, 8 - bits:]
    return torch.from_numpy(np.packbits(bit_rows.reshape(-1)))


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The `count` codes `pack_bits` stored in `packed`, as a flat ``int64`` tensor."""
    if not 1 <= bits <= 8:
        raise ValueError(f"unpack_bits: bits must be 1..8, got {bits}")
    data = packed.detach().reshape(-1).to(torch.uint8).cpu().numpy()
    if data.size != packed_nbytes(count, bits):
        raise ValueError(f"unpack_bits: {data.size} bytes hold {data.size * 8 // bits} codes of {bits} bits, not "
                         f"{count} ({packed_nbytes(count, bits)} bytes)")
    if bits == 8:
        return torch.from_numpy(data.astype(np.int64))
    stream = np.unpackbits(data, count=count * bits).reshape(count, bits)
    padded = np.zeros((count, 8), dtype=np.uint8)
    padded[:, 8 - bits:] = stream
    return torch.from_numpy(np.packbits(padded, axis=1).reshape(-1).astype(np.int64))


def quantized_by(model) -> str | None:
    """How `model` is already quantized (so a method working on float weights cannot take it), or None: not a
    PyTorch module (an ONNX Runtime model), a ``quantization_config`` in its config (bitsandbytes, GPTQ, ...),
    hfcompress's torch int8 key, or weights that are not floating point (quantized modules)."""
    if not isinstance(model, torch.nn.Module):
        return f"{type(model).__name__} is not a PyTorch model (an ONNX Runtime graph has no trainable weights)"
    config = getattr(model, "config", None)
    get = (config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))) if config else None
    if get is not None:
        qc = get("quantization_config")
        if qc:
            method = qc.get("quant_method", "?") if isinstance(qc, dict) else getattr(qc, "quant_method", "?")
            return f"{getattr(method, 'value', method)} (quantization_config in its config)"
        if get("hfcompress_quantization"):
            return "hfcompress torch int8 (hfcompress_quantization in its config)"
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ("Linear8bitLt", "Linear4bit") or ("quantized" in type(module).__module__ and "Linear" in kind):
            return f"{kind} at {name}"
    return None


__all__ = ["bits_for", "pack_bits", "packed_nbytes", "quantized_by", "unpack_bits"]
