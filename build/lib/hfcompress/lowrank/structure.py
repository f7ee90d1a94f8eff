"""Low-rank layers, and the code that gives a freshly built model the factorized shape its config records.

A dense ``nn.Linear`` with an ``out x in`` weight costs ``out * in`` parameters and multiply-adds per token. Written
as the product of two thin matrices of rank ``r`` (``up`` of ``out x r`` after ``down`` of ``r x in``) it costs
``r * (in + out)``: fewer whenever ``r < in * out / (in + out)``. `LowRankLinear` is that pair of layers; its
initial factors come from the truncated SVD of the dense weight (``hfcompress.lowrank.factorize``).

`config.json` cannot describe such a model with the family's own keys, so the ranks are stored in the config under
``hfcompress_lowrank`` (``{module name: rank}``, names as in ``model.named_modules()`` of the model that was
factorized), and `apply_lowrank` replaces those ``nn.Linear`` layers of a freshly built model by empty
`LowRankLinear` layers of the recorded ranks before the weights are loaded.

This file is self-contained on purpose (torch only; the lines `save_lowrank` appends import transformers):
`save_lowrank` copies it beside the weights as ``modeling_hfcompress_lowrank.py``, so the checkpoint loads with
``trust_remote_code=True`` where hfcompress is not installed, through the very code hfcompress itself uses.
"""

from __future__ import annotations

import torch
from torch import nn

LOWRANK_KEY = "hfcompress_lowrank"
CLASS_PREFIX = "HfcLowRank"


class LowRankLinear(nn.Module):
    """``y = up(down(x))``: a rank-``rank`` stand-in for an ``nn.Linear(in_features, out_features)``.

    ``down`` (``rank x in_features``, no bias) projects to the rank, ``up`` (``out_features x rank``) carries the
    original layer's bias. Both are ordinary ``nn.Linear`` layers, so the pair trains, casts and saves like any
    other part of the model (weights ``<name>.down.weight``, ``<name>.up.weight``, ``<name>.up.bias``).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if not 1 <= int(rank) <= min(int(in_features), int(out_features)):
            raise ValueError(f"rank {rank} is outside [1, {min(in_features, out_features)}] for a "
                             f"{out_features} x {in_features} weight")
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        self.down = nn.Linear(self.in_features, self.rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(self.rank, self.out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, svd: tuple | None = None) -> "LowRankLinear":
        """The rank-`rank` truncated SVD of `linear`, split evenly between the factors:
        ``W ~= (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``, so ``up`` and ``down`` start at the same scale (which keeps their
        gradients balanced when the pair is fine-tuned). The SVD runs in float32 (float64 for float64 weights) on
        the weight's device whatever the weight's dtype; the factors are cast back to it. `svd` is an already
        computed ``torch.linalg.svd(W, full_matrices=False)`` of the weight, to avoid computing it twice."""
        w = linear.weight.detach()
        if svd is None:
            svd = torch.linalg.svd(w.to(torch.float64 if w.dtype == torch.float64 else torch.float32),
                                   full_matrices=False)
        u, s, vh = svd
        root = s[:rank].sqrt()
        new = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None, device=w.device,
                  dtype=w.dtype)
        with torch.no_grad():
            new.up.weight.copy_(u[:, :rank] * root)
            new.down.weight.copy_(root[:, None] * vh[:rank])
            if linear.bias is not None:
                new.up.bias.copy_(linear.bias)
        for p in new.parameters():
            p.requires_grad_(linear.weight.requires_grad)
        return new.train(linear.training)

    def to_linear(self) -> nn.Linear:
        """The dense ``nn.Linear`` computing the same function (``W = up.weight @ down.weight``)."""
        w = self.up.weight
        dense = nn.Linear(self.in_features, self.out_features, bias=self.up.bias is not None, device=w.device,
                          dtype=w.dtype)
        with torch.no_grad():
            acc = torch.float64 if w.dtype == torch.float64 else torch.float32
            dense.weight.copy_(self.up.weight.to(acc) @ self.down.weight.to(acc))
            if self.up.bias is not None:
                dense.bias.copy_(self.up.bias)
        dense.requires_grad_(w.requires_grad)
        return dense.train(self.training)


def _set(root: nn.Module, name: str, value: nn.Module) -> None:
    head, _, last = name.rpartition(".")
    setattr(root.get_submodule(head) if head else root, last, value)


def resolve_name(model: nn.Module, name: str, modules: dict | None = None) -> str | None:
    """`name` (recorded on the model that was factorized) as a module name of `model`, which may be the bare base
    model of that model or the other way round (saved from ``BertModel``, loaded as
    ``BertForSequenceClassification``). None for a task-head layer that a bare base model does not have."""
    modules = dict(model.named_modules()) if modules is None else modules
    prefix = getattr(model, "base_model_prefix", "") or ""
    is_base = getattr(model, "base_model", model) is model
    candidates = [name]
    if prefix and is_base and name.startswith(prefix + "."):
        candidates.append(name[len(prefix) + 1:])
    elif prefix and not is_base:
        candidates.append(f"{prefix}.{name}")
    for candidate in candidates:
        if candidate in modules:
            return candidate
    if is_base and prefix and not name.startswith(prefix + "."):
        return None  # the task head of the model that was saved; a bare base model has none
    raise ValueError(f"{LOWRANK_KEY}: {name!r} is not a module of {type(model).__name__}: the ranks in the config "
                     "belong to another model")


def apply_lowrank(model: nn.Module, ranks: dict) -> nn.Module:
    """Replace the ``nn.Linear`` layers named in `ranks` (``{module name: rank}``) by untrained `LowRankLinear`
    layers of those ranks, on the same device and dtype (also the meta device, where a model is built before its
    weights load), so that the saved factors fit. Records the ranks in ``model.config.hfcompress_lowrank``, under
    this model's own module names."""
    modules = dict(model.named_modules())
    resolved = {}
    for name, rank in ranks.items():
        local = resolve_name(model, name, modules)
        if local is None:
            continue
        module, rank = modules[local], int(rank)
        if isinstance(module, nn.Linear):
            w = module.weight
            new = LowRankLinear(module.in_features, module.out_features, rank, bias=module.bias is not None,
                                device=w.device, dtype=w.dtype)
            new.requires_grad_(w.requires_grad)
            _set(model, local, new.train(module.training))
        elif type(module).__name__ != "LowRankLinear" or module.rank != rank:
            raise ValueError(f"{LOWRANK_KEY}: {local} is a {type(module).__name__}"
                             f"{f' of rank {module.rank}' if hasattr(module, 'rank') else ''}, not an nn.Linear "
                             f"to give rank {rank}")
        resolved[local] = rank
    if getattr(model, "config", None) is not None:
        setattr(model.config, LOWRANK_KEY, resolved)
    return model


def lowrank_class(base: type) -> type:
    """A subclass of the transformers class `base` that replaces the layers named in ``config.hfcompress_lowrank``
    by `LowRankLinear` layers when built, so that `from_pretrained` finds parameters of the saved shapes. `base` may
    itself be a structurally pruned class (``pruned_class(...)``): it is cut first, then factorized."""

    if base.__name__.startswith(CLASS_PREFIX):
        return base

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        ranks = getattr(config, LOWRANK_KEY, None)
        if ranks:
            apply_lowrank(self, ranks)

    return type(CLASS_PREFIX + base.__name__, (base,),
                {"__init__": __init__, "__module__": __name__, "__doc__": lowrank_class.__doc__})
