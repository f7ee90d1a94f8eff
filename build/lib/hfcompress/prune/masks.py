"""Masks from scores, and the masked forward of a pruned layer.

A pruned layer keeps its dense `weight` (so a weight pruned early can come back, and checkpoints hold the plain
parameter names) and multiplies it by its mask in the forward. That multiplication is also where the movement
score gets its gradient: a hook on the masked weight ``W' = W * M`` receives ``dL/dW'`` for every entry, pruned or
not (the straight-through estimator of Sanh et al. 2020).

Structured pruning (heads, neurons, blocks) is another grouping of the same scores: sum the element scores over a
group, keep the top groups, broadcast the group mask back to the elements (`group_scores`, `expand_group_mask`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry (1-based) of a flat float tensor; k == 0 gives -inf (nothing is pruned)."""
    if k <= 0:
        return values.new_tensor(float("-inf"))
    return values.float().reshape(-1).kthvalue(k).values


def topk_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``round((1 - sparsity) * n)`` highest scores of one tensor -> bool mask. Exact count: scores tied at
    the cut are kept in order of position. (A k-th value and a comparison: about twice as fast as `topk` on CPU.)"""
    n = scores.numel()
    k = int(round(sparsity * n))  # entries removed
    flat = scores.float().reshape(-1)
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.zeros_like(scores, dtype=torch.bool)
    cut = flat.kthvalue(k).values
    mask = flat > cut
    missing = (n - k) - int(mask.sum())
    if missing > 0:  # ties at the cut
        tied = (flat == cut).nonzero().squeeze(1)
        mask[tied[-missing:]] = True
    return mask.view_as(scores)


def global_topk_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One cut over all tensors together: the highest ``(1 - sparsity)`` of all scores are kept."""
    flat = torch.cat([s.float().reshape(-1) for s in scores.values()])
    full = topk_mask(flat, sparsity)
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = full[start:start + s.numel()].view_as(s)
        start += s.numel()
    return out


def group_scores(scores: torch.Tensor, group_size: int, dim: int = 0) -> torch.Tensor:
    """Sum element scores over consecutive groups of `group_size` rows (dim 0) or columns (dim 1): an attention
    head's rows of a query projection, an FFN neuron's row of the up projection."""
    s = scores.transpose(0, 1) if dim == 1 else scores
    return s.reshape(s.shape[0] // group_size, -1).sum(-1)


def expand_group_mask(group_mask: torch.Tensor, shape: torch.Size, group_size: int, dim: int = 0) -> torch.Tensor:
    """Broadcast a mask over groups back to the elements of a `shape` matrix."""
    m = group_mask.repeat_interleave(group_size)
    return m[:, None].expand(shape) if dim == 0 else m[None, :].expand(shape)


class _PruneState:
    """What a masked layer needs at forward time: its mask and, while movement scores are tracked, the buffer
    collecting ``dL/dW' * W`` over the micro-batches of one optimizer step."""

    __slots__ = ("mask", "grad_times_weight", "track", "weight")

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.mask = torch.ones_like(weight, dtype=torch.bool)
        self.grad_times_weight: torch.Tensor | None = None
        self.track = False

    def hook(self, grad: torch.Tensor) -> None:
        g = grad.detach().float() * self.weight.detach().float()
        if self.grad_times_weight is None:
            self.grad_times_weight = g
        else:
            self.grad_times_weight.add_(g)


def _masked_weight(module: nn.Module) -> torch.Tensor:
    state: _PruneState = module._hfc_prune
    w = module.weight
    if state.mask.device != w.device:
        state.mask = state.mask.to(w.device)
    w = w * state.mask.to(w.dtype)
    if state.track and w.requires_grad:
        w.register_hook(state.hook)
    return w


class MaskedLinear(nn.Linear):
    """An `nn.Linear` whose forward uses ``weight * mask`` (installed by changing the class of the existing module,
    so parameters, names and hooks stay as they were; `unmask_module` turns it back into a plain `nn.Linear`)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, _masked_weight(self), self.bias)


class MaskedEmbedding(nn.Embedding):
    """The same for an embedding matrix (rows are tokens)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.embedding(input, _masked_weight(self), self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)


_MASKED = {nn.Linear: MaskedLinear, nn.Embedding: MaskedEmbedding}
_PLAIN = {v: k for k, v in _MASKED.items()}


def mask_module(module: nn.Module) -> _PruneState:
    if type(module) in _PLAIN:
        return module._hfc_prune
    if type(module) not in _MASKED:
        raise TypeError(f"cannot prune a {type(module).__name__}: only nn.Linear and nn.Embedding (not subclasses)")
    module._hfc_prune = _PruneState(module.weight)
    module.__class__ = _MASKED[type(module)]
    return module._hfc_prune


def unmask_module(module: nn.Module, fold: bool = True) -> None:
    """Back to a plain layer; with `fold`, pruned weights are set to zero first (the mask lives in the weights)."""
    if type(module) not in _PLAIN:
        return
    if fold:
        with torch.no_grad():
            module.weight.mul_(module._hfc_prune.mask.to(module.weight.device, module.weight.dtype))
    module.__class__ = _PLAIN[type(module)]
    del module._hfc_prune
