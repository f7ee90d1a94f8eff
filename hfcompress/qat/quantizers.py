"""Row-wise weight quantizers (binary, ternary, int8), the 8-bit activation quantizer, and the straight-through
estimator that lets gradients pass them. Each weight quantizer returns integer codes (what a checkpoint stores,
`bits` bits each) and one float scale per row; `dequantize` is the single way back to float, used both by the
training forward pass and by the loader, so a reloaded model computes with the very same numbers."""

from __future__ import annotations

import torch

# code stored = level + OFFSET[bits] (levels: binary -1/+1 stored as 0/1, ternary -1/0/+1 as 0/1/2, int8 -127..127
# as 1..255, int8 on a 7-bit grid (-63..63, "reduce range") as 1..127 in 7 bits)
TWN_THRESHOLD = 0.7  # Li & Liu's ternary weight networks: delta = 0.7 * mean|W|


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1)


def quantize_rows(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, scales)``: `w` (2-D; rows are output units, or embedding rows) quantized per row to `bits` bits:
    codes are integers in ``[0, 2**bits)`` of `w`'s shape, scales one float per row."""
    x = _rows(w)
    mag = x.abs()
    if bits == 1:
        scales = mag.mean(dim=1)
        codes = (x >= 0).to(torch.int64)
    elif bits == 2:
        delta = TWN_THRESHOLD * mag.mean(dim=1, keepdim=True)
        keep = mag > delta
        scales = (mag * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
        codes = (torch.sign(x) * keep).to(torch.int64) + 1
    elif bits in (7, 8):
        qmax = 2 ** (bits - 1) - 1
        scales = mag.amax(dim=1) / qmax
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = torch.round(x / safe[:, None]).clamp(-qmax, qmax).to(torch.int64) + qmax + 1
    else:
        raise ValueError(f"weights are quantized to 1, 2, 7 or 8 bits, not {bits}")
    return codes.reshape(w.shape), scales


def dequantize(codes: torch.Tensor, scales: torch.Tensor, bits: int, dtype=torch.float32) -> torch.Tensor:
    """The float weights `codes` and `scales` (from `quantize_rows`) stand for."""
    c = codes.reshape(codes.shape[0], -1)
    levels = (2 * c - 1) if bits == 1 else (c - 1) if bits == 2 else (c - 2 ** (bits - 1))
    return (scales.to(dtype)[:, None] * levels.to(dtype)).reshape(codes.shape)


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantized tensor; backward: the gradient unchanged (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x, quantized):
        return quantized.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def fake_quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """`w` quantized and dequantized per row, with straight-through gradients to `w`."""
    with torch.no_grad():
        q = dequantize(*quantize_rows(w, bits), bits, dtype=w.dtype)
    return _StraightThrough.apply(w, q) if w.requires_grad and torch.is_grad_enabled() else q


def fake_quantize_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """`x` rounded to `bits`-bit symmetric levels over its own range (one scale per tensor, max|x| / (2**(bits-1)-1)),
    with straight-through gradients."""
    qmax = 2 ** (bits - 1) - 1
    with torch.no_grad():
        scale = x.detach().abs().amax() / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero tensor stays zero
        q = torch.round(x / scale).clamp(-qmax, qmax) * scale
    return _StraightThrough.apply(x, q) if x.requires_grad and torch.is_grad_enabled() else q


def activation_scale(max_abs: float, bits: int = 8) -> float:
    """The static scale of an activation whose observed range is ``[-max_abs, max_abs]``: max_abs / (2**(bits-1)-1)
    (1.0 for a range of zero, so an all-zero input stays zero)."""
    return float(max_abs) / (2 ** (bits - 1) - 1) if float(max_abs) > 0 else 1.0


def static_quantize_activation(x: torch.Tensor, max_abs: float, bits: int = 8) -> torch.Tensor:
    """`x` on the fixed grid of `activation_scale` (a range observed in training or calibration), as ONNX Runtime
    computes it: ``torch.fake_quantize_per_tensor_affine`` with unsigned codes and zero point 2**(bits-1), i.e. levels
    -2**(bits-1) .. 2**(bits-1)-1 times the scale. The traced graph holds QuantizeLinear / DequantizeLinear for it,
    so the exported model and this one round alike."""
    zero = 2 ** (bits - 1)
    return torch.fake_quantize_per_tensor_affine(x, activation_scale(max_abs, bits), zero, 0, 2 * zero - 1)
