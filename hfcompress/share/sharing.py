"""The mechanism of weight sharing: k-means per matrix, gradients summed per shared value, weights kept on their
values.

Each shared matrix stays an ordinary dense ``nn.Parameter`` whose entries take at most k values, plus an index per
entry (which value it takes). Training keeps it that way without any new parameter, so the optimizer a plain
`Trainer` built before the callback ran needs nothing new:

* before each optimizer step every weight's gradient is replaced by the sum of the gradients of all the weights that
  share its value (the centroid's gradient in Deep Compression). The weights of one cluster then get the same
  gradient and, from the same optimizer state, the same update (SGD, Adam and AdamW's decoupled decay are
  element-wise), so the shared value moves as one parameter would;
* after each step the weights are put back on their cluster's mean (`snap`), which removes the rounding drift of
  element-wise kernels, so the matrix holds exactly k values (or fewer) at every step and in every checkpoint.

A pruned matrix (exact zeros) keeps its zeros: value 0 is one of its k, fixed (its gradient is zeroed), and the
other k - 1 come from k-means over the non-zero weights. Resuming from a checkpoint needs no saved state: a matrix
that already holds at most k values is adopted as it is (its distinct values become the codebook).

HashedNets (Chen et al. 2015: each weight's value drawn from a small pool by a hash of its position) fits this
mechanism: the index of a weight would be a hash instead of a k-means assignment, and training, the gradient sums
and the packed storage would be the same. It is not built here: the pool indices would be recomputed rather than
stored (the saving is the index bits), which needs its own loader, and with a pool as small as k = 16 a random
assignment loses far more accuracy than clustering (the HashedNets paper hashes into pools of thousands of values).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..arch.base import linear_targets, unwrap_model
from ..errors import UserInputError
from ..packing import bits_for, quantized_by
from .config import WeightSharingConfig

logger = logging.getLogger(__name__)

SHARING_KEY = "hfcompress_weight_sharing"  # config.json: {"k", "bits", "modules"} of a model whose weights share


def sharing_targets(model: nn.Module, config: WeightSharingConfig) -> dict[str, nn.Module]:
    """Name -> module (``nn.Linear``, or the word-embedding ``nn.Embedding``) of every matrix that shares values, in
    `named_modules` order. A pattern matching nothing is a `UserInputError` listing the Linear layers there are."""
    model = unwrap_model(model)
    modules = dict(model.named_modules())
    chosen = {n: modules[n] for n in linear_targets(model, config.weight_sharing_modules, "weight_sharing_modules")}
    if config.weight_sharing_embeddings:
        emb = model.get_input_embeddings()
        chosen.update({n: m for n, m in model.named_modules() if m is emb})
    if not chosen:
        raise UserInputError(f"{type(model).__name__} has no nn.Linear layer outside its task head to share")
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(chosen.items(), key=lambda kv: order[kv[0]]))


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centroids, assignment)`` of 1-D k-means over `values` (a flat float tensor), centroids initialised linearly
    between the smallest and the largest value (Deep Compression's choice: it keeps the rare large weights, which
    density-based initialisations lose). Sorted centroids; an empty cluster keeps its place."""
    v = values.detach().to(torch.float64).reshape(-1)
    centroids = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64, device=v.device)
    for _ in range(iterations):
        assign = torch.bucketize(v, (centroids[1:] + centroids[:-1]) / 2)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros(k, dtype=torch.float64, device=v.device).index_add_(0, assign, v)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(new, centroids):
            break
        centroids = new
    assign = torch.bucketize(v, (centroids[1:] + centroids[:-1]) / 2)
    return centroids.to(values.dtype), assign


class SharedMatrix:
    """One matrix that shares values: its parameter, the index of each entry's value, the number of values, and
    whether value 0 is the fixed zero of pruned weights."""

    def __init__(self, name: str, param: nn.Parameter, indices: torch.Tensor, k: int, fixed_zero: bool):
        self.name, self.param, self.k, self.fixed_zero = name, param, k, fixed_zero
        self.indices = indices.reshape(-1).to(param.device)

    def codebook(self) -> torch.Tensor:
        """The current shared values (the mean of each cluster's weights; 0 for the fixed zero)."""
        w = self.param.detach().reshape(-1).to(torch.float64)
        sums = torch.zeros(self.k, dtype=torch.float64, device=w.device).index_add_(0, self.indices, w)
        counts = torch.bincount(self.indices, minlength=self.k).clamp(min=1)
        book = (sums / counts).to(self.param.dtype)
        if self.fixed_zero:
            book[0] = 0
        return book

    @torch.no_grad()
    def sum_gradients(self) -> None:
        g = self.param.grad
        if g is None:
            return
        sums = torch.zeros(self.k, dtype=torch.float32, device=g.device).index_add_(0, self.indices,
                                                                                    g.reshape(-1).float())
        if self.fixed_zero:
            sums[0] = 0
        g.copy_(sums[self.indices].view_as(g).to(g.dtype))

    @torch.no_grad()
    def snap(self) -> None:
        self.param.copy_(self.codebook()[self.indices].view_as(self.param))


def _distinct_nonzero(w: torch.Tensor) -> int:
    flat = w.detach().reshape(-1)
    return int(torch.unique(flat[flat != 0]).numel())


def check_sharing(model, config: WeightSharingConfig, adopt: bool = False) -> dict[str, nn.Module]:
    """`UserInputError` for a model that cannot share values (already quantized: bitsandbytes, ONNX, int8) or a
    matrix with fewer distinct values than k (k - 1 non-zero ones for a pruned matrix); else the targets. With
    `adopt` (a resumed run, or a model whose config says it already shares), a matrix holding at most k values is
    taken as it is."""
    found = quantized_by(model)
    if found:
        raise UserInputError(f"weight sharing needs float weights to cluster; the model is already quantized: {found}. "
                             "Share the full-precision model; quantize after sharing if at all")
    targets = sharing_targets(model, config)
    k = config.weight_sharing_k
    for name, module in targets.items():
        w = module.weight
        if not w.is_floating_point():
            raise UserInputError(f"{name}: weights of dtype {w.dtype} cannot be clustered")
        zeros = bool((w == 0).any())
        distinct = _distinct_nonzero(w)
        need = k - 1 if zeros else k
        if adopt and distinct <= need:
            continue  # already shared: adopted as it is
        if distinct < need:
            raise UserInputError(f"weight_sharing_k={k} is larger than the {distinct} distinct "
                                 f"{'non-zero ' if zeros else ''}weights of {name} {tuple(w.shape)}: choose k <= "
                                 f"{distinct + (1 if zeros else 0)}")
    return targets


def _already_shared(w: torch.Tensor, k: int) -> bool:
    zeros = bool((w == 0).any())
    return _distinct_nonzero(w) <= (k - 1 if zeros else k)


class WeightSharing:
    """The shared matrices of a model and the two steps that keep them shared (see the module docstring)."""

    def __init__(self, matrices: list[SharedMatrix], config: WeightSharingConfig):
        self.matrices, self.config = matrices, config

    def sum_gradients(self) -> None:
        for m in self.matrices:
            m.sum_gradients()

    def snap(self) -> None:
        for m in self.matrices:
            m.snap()

    def summary(self) -> dict:
        shared = sum(m.param.numel() for m in self.matrices)
        bits = bits_for(self.config.weight_sharing_k)
        return {"shared_matrices": len(self.matrices), "shared_weights": shared, "index_bits": bits,
                "pruned_matrices": sum(m.fixed_zero for m in self.matrices),
                "values_per_matrix_max": max((int(m.indices.max()) + 1 for m in self.matrices), default=0)}


def share_weights(model: nn.Module, config: WeightSharingConfig | None = None, adopt: bool = False,
                  **kwargs) -> WeightSharing:
    """Cluster every targeted matrix of `model` in place (each weight replaced by its centroid; see
    `WeightSharingConfig`), record ``config.hfcompress_weight_sharing`` (k, index bits, matrices) and return the
    `WeightSharing` that keeps them shared while training. Matrices already holding at most k values (a resumed run)
    are adopted unchanged when `adopt` (a resumed run) or when the config already records sharing. Checks everything
    (`check_sharing`) before changing anything."""
    config = config or WeightSharingConfig(**kwargs)
    adopt = adopt or is_shared(model)
    targets = check_sharing(model, config, adopt)
    k = config.weight_sharing_k
    matrices = []
    with torch.no_grad():
        for name, module in targets.items():
            w = module.weight
            flat = w.detach().reshape(-1)
            zero_mask = flat == 0
            fixed_zero = bool(zero_mask.any())
            if adopt and _already_shared(w, k):
                values, inverse = torch.unique(flat, return_inverse=True)
                if fixed_zero:  # the zero first (index 0), the others after it
                    order = torch.cat([(values == 0).nonzero().reshape(-1), (values != 0).nonzero().reshape(-1)])
                    rank = torch.empty_like(order)
                    rank[order] = torch.arange(order.numel())
                    inverse = rank[inverse]
                matrices.append(SharedMatrix(name, w, inverse, k, fixed_zero))
                continue
            nonzero = flat[~zero_mask]
            centroids, assign = kmeans_1d(nonzero, k - 1 if fixed_zero else k, config.weight_sharing_iterations)
            indices = torch.zeros(flat.numel(), dtype=torch.int64, device=flat.device)
            indices[~zero_mask] = assign + (1 if fixed_zero else 0)
            shared = SharedMatrix(name, w, indices, k, fixed_zero)
            book = torch.cat([centroids.new_zeros(1), centroids]) if fixed_zero else centroids
            w.copy_(book[indices].view_as(w))
            matrices.append(shared)
    base = unwrap_model(model)
    setattr(base.config, SHARING_KEY, {"k": k, "bits": bits_for(k), "modules": list(targets)})
    sharing = WeightSharing(matrices, config)
    logger.info("Weight sharing: %d matrices (%d weights) keep at most %d values each (%d-bit indices)",
                len(matrices), sum(m.param.numel() for m in matrices), k, bits_for(k))
    return sharing


def is_shared(model: nn.Module) -> bool:
    return bool(getattr(getattr(unwrap_model(model), "config", None), SHARING_KEY, None))
