"""BinaryBERT's ternary weight splitting (Bai et al. 2021, section 3.1): a ternary-trained model becomes a binary one
that computes the same function, then fine-tunes as binary.

Each ternary row ``T = a * t`` (t in {-1, 0, +1}, a = the mean |w| of the weights above the TWN threshold, as
`quantizers.quantize_rows` does) of latent weights ``w`` is split into two latent rows ``w1``, ``w2`` whose binary
versions sum to ``T``. With I the kept weights, J the dropped ones with w >= 0 and K the dropped ones with w < 0
(the paper's equations 4-5; a zero latent weight counts in J)::

    w1 = a' * w   (I),   b + w   (J),   b       (K)
    w2 = (1-a') * w (I),   -b      (J),   -b + w  (K)
    a' = (sum_I |w| + sum_J |w| - sum_K |w|) / (2 sum_I |w|),   b = (n / |I| * sum_I |w| - sum |w|) / (2 (|J| + |K|))

so w1 and w2 share w's sign on I and have opposite signs on J and K, and binarizing each (sign times mean |.|) gives
halves that sum to T. The reference code (huawei-noah/Pretrained-Language-Model, BinaryBERT) uses one scale per
matrix; here, as for every QAT layer of hfcompress, one scale per output row: the two halves are stored side by side
as one binary ``[out, 2 * in]`` weight with one scale per row (mean |[w1, w2]| = a / 2 exactly, whatever a' is), the
layer using ``B1 + B2``. That is the "twice as wide" binary network of the paper, stored in the existing packed format
at 1 bit per weight: 2 bits per original weight, the same size as the ternary model it came from (the paper's gain is
accuracy of a binary model started from a ternary one, not size against ternary). a' is clamped into (0, 1) in the
rare row where the paper's value leaves it: with one scale per row only the sum matters, so the split stays exact.

The word embeddings are not split: they keep the ternary model's bits (`split_ternary` leaves them as they are).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..arch.base import unwrap_model
from ..errors import UserInputError
from .modules import QAT_KEY, QATLinear, qat_modules
from .quantizers import TWN_THRESHOLD

logger = logging.getLogger(__name__)


def split_ternary_weight(w: torch.Tensor) -> torch.Tensor:
    """``[out, 2 * in]`` latent weights ``[w1 | w2]`` whose binary quantization (one scale per row over both halves),
    halves summed, equals the ternary quantization of `w` (``[out, in]``); see the module docstring."""
    w = w.detach().float()
    mag = w.abs()
    n = w.shape[1]
    delta = TWN_THRESHOLD * mag.mean(dim=1, keepdim=True)
    kept = mag > delta
    dropped_pos = ~kept & (w >= 0)
    dropped_neg = ~kept & (w < 0)
    s_i = (mag * kept).sum(dim=1, keepdim=True)
    s_j = (mag * dropped_pos).sum(dim=1, keepdim=True)
    s_k = (mag * dropped_neg).sum(dim=1, keepdim=True)
    n_i = kept.sum(dim=1, keepdim=True)
    safe_s_i = torch.where(s_i > 0, s_i, torch.ones_like(s_i))
    a = ((s_i + s_j - s_k) / (2 * safe_s_i)).clamp(0.01, 0.99)
    b = (n / n_i.clamp(min=1) * s_i - mag.sum(dim=1, keepdim=True)) / (2 * (n - n_i).clamp(min=1))
    w1 = torch.where(kept, a * w, torch.where(dropped_pos, b + w, b))
    w2 = torch.where(kept, (1 - a) * w, torch.where(dropped_pos, -b, -b + w))
    empty = (n_i == 0).expand_as(w)  # a row ternarized to zero: +c and -c, any c > 0
    c = mag.mean(dim=1, keepdim=True).clamp(min=1e-8).expand_as(w)
    w1 = torch.where(empty, c, w1)
    w2 = torch.where(empty, -c, w2)
    return torch.cat([w1, w2], dim=1)


def split_ternary(model: nn.Module) -> list[str]:
    """Split every ternary QAT Linear of `model` (in place) into a binary layer of twice the width computing the same
    function (`split_ternary_weight`); returns their names. The config's ``hfcompress_qat`` records the new bits and
    the split layers (the loader widens them back). Optimizers built before hold the old parameters: split before
    the trainer is built."""
    base = unwrap_model(model)
    meta = getattr(base.config, QAT_KEY, None)
    ternary = {n: m for n, m in qat_modules(base).items()
               if isinstance(m, QATLinear) and m.weight_bits == 2 and not m.split}
    if not meta or not ternary:
        raise UserInputError("ternary weight splitting needs a model with ternary QAT layers (hfcompress.qat.apply_qat "
                             "with qat_weight_bits=2, or a ternary run's model_dense/ prepared that way)")
    for name, module in ternary.items():
        module.weight = nn.Parameter(split_ternary_weight(module.weight).to(module.weight.dtype),
                                     requires_grad=module.weight.requires_grad)
        module.split = True
        module.weight_bits = 1
        module.qat_frozen = False  # the binary halves are new latent weights: they train
    meta = dict(meta, weight_bits=1, modules={**meta["modules"], **dict.fromkeys(ternary, 1)},
                split=sorted(set(meta.get("split", [])) | set(ternary)))
    setattr(base.config, QAT_KEY, meta)
    logger.info("Ternary weight splitting: %d ternary layers are now binary layers of twice the width", len(ternary))
    return sorted(ternary)


def check_ternary_weights(model: nn.Module, names) -> None:
    """`UserInputError` unless each named Linear's weight rows hold at most three values {-a, 0, +a}: the student of
    a split run must be a ternary-trained model (a ternary run's model_dense/)."""
    modules = dict(unwrap_model(model).named_modules())
    for name in names:
        w = modules[name].weight.detach()
        mag = w.abs()
        top = mag.amax(dim=1, keepdim=True)
        if not bool(((mag == 0) | torch.isclose(mag, top.expand_as(mag), rtol=1e-5, atol=0)).all()):
            raise UserInputError(f"ternary weight splitting: {name} holds more than three values per row: the student "
                                 "must be a ternary-trained model (the model_dense/ folder of a --qat_weight_bits 2 run)")
