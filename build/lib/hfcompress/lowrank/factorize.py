"""Factorizing a model's ``nn.Linear`` layers into low-rank pairs from their truncated SVD.

By Eckart-Young, the truncated SVD ``U_r S_r V_r^T`` is the best rank-``r`` approximation of a weight in Frobenius
norm, and its squared error is the energy of the dropped singular values; so the singular values say, before
anything is replaced, how much of each matrix a rank keeps. That is how the ranks are chosen (`LowRankConfig`: a
fixed rank, a per-layer energy, or a global parameter budget), by `plan_ranks`, which also runs on its own to check a
configuration before a long fine-tuning run (a fixed rank even on a meta-device model; energy and budget need the
weights). `factorize` then replaces the layers in place by `LowRankLinear` pairs and records the ranks in
``model.config.hfcompress_lowrank``, which `save_lowrank` writes into config.json.

A factorized model computes a different function (the dropped singular values are gone); it is meant to be fine-tuned
afterwards, best with distillation from the unfactorized model as teacher. `merge_lowrank` turns it back into dense
``nn.Linear`` layers of the (now low-rank) product, for tools that need the plain architecture.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import get_adapter
from ..arch.base import UnsupportedArchitectureError
from ..errors import UserInputError
from .config import LowRankConfig
from .structure import LOWRANK_KEY, LowRankLinear

logger = logging.getLogger(__name__)


@dataclass
class LayerPlan:
    """The rank chosen for one targeted layer. `factorize` False: the layer stays dense (its factorized form would
    not be smaller, see `LowRankConfig.skip_if_not_smaller`). `kept_energy`: fraction of the squared Frobenius norm
    kept by `rank` (1.0 for a layer left dense; None when the singular values were not computed)."""

    name: str
    out_features: int
    in_features: int
    bias: bool
    rank: int
    factorize: bool
    kept_energy: float | None = None

    @property
    def max_rank(self) -> int:
        return min(self.in_features, self.out_features)

    @property
    def dense_parameters(self) -> int:
        return self.out_features * self.in_features + (self.out_features if self.bias else 0)

    @property
    def factorized_parameters(self) -> int:
        return self.rank * (self.in_features + self.out_features) + (self.out_features if self.bias else 0)

    @property
    def parameters_after(self) -> int:
        return self.factorized_parameters if self.factorize else self.dense_parameters

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(shape=[self.out_features, self.in_features], parameters_before=self.dense_parameters,
                 parameters_after=self.parameters_after)
        return d


def _count_parameters(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def is_factorized(model: nn.Module) -> bool:
    """Whether `model` already holds `LowRankLinear` layers or records ranks in its config."""
    if getattr(getattr(model, "config", None), LOWRANK_KEY, None):
        return True
    # by name too: a model loaded with trust_remote_code has its own copy of the class
    return any(type(m).__name__ == "LowRankLinear" for m in model.modules())


def _summarise_linears(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        return f"{type(model).__name__} has no nn.Linear modules"
    by_last = Counter(n.rpartition(".")[2] for n in names)
    kinds = ", ".join(f"{k} ({v})" for k, v in by_last.most_common(8))
    return (f"its {len(names)} nn.Linear modules are e.g. {', '.join(names[:3])}"
            f"{', ' + names[-1] if len(names) > 3 else ''}; by last name: {kinds}")


def _matches(pattern: str, name: str) -> bool:
    return name == pattern or name.endswith("." + pattern) or re.fullmatch(pattern, name) is not None


def resolve_targets(model: nn.Module, config: LowRankConfig) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers `config` targets, keyed by their name in ``model.named_modules()``, in model order."""
    if config.target_modules is None:
        try:
            return dict(get_adapter(model).prunable_linears(model))
        except UnsupportedArchitectureError as exc:
            raise UserInputError(f"{exc}. Name the layers to factorize with target_modules") from None
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    unmatched = [p for p in config.target_modules if not any(_matches(p, n) for n in linears)]
    if unmatched:
        raise UserInputError(f"target_modules: {', '.join(repr(p) for p in unmatched)} "
                             f"match{'es' if len(unmatched) == 1 else ''} no nn.Linear of {type(model).__name__}; "
                             f"{_summarise_linears(model)}")
    return {n: m for n, m in linears.items() if any(_matches(p, n) for p in config.target_modules)}


def _singular_values(weight: torch.Tensor) -> torch.Tensor:
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    return torch.linalg.svdvals(weight.detach().to(acc)).double().cpu()


def _energy_ratio(s: torch.Tensor) -> torch.Tensor:
    """Cumulative fraction of the energy kept by ranks 1..k (the last one exactly 1; all 1 for a zero matrix)."""
    cum = (s.double() ** 2).cumsum(0)
    return cum / cum[-1] if cum[-1] > 0 else torch.ones_like(cum)


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values (`s`, descending) keep at least `energy` of the energy."""
    ratio = _energy_ratio(s)
    return min(int((ratio < energy).sum()) + 1, len(s))


def _budget_ranks(plans: list[LayerPlan], values: dict[str, torch.Tensor], budget: float, min_rank: int,
                  skip: bool) -> dict[str, int]:
    """Ranks meeting the parameter budget, by the rule in `LowRankConfig` (greedy on energy fraction per parameter)."""
    dense_total = sum(p.dense_parameters for p in plans)
    bias_total = sum(p.out_features for p in plans if p.bias)
    allowance = budget * dense_total - bias_total  # for the weight matrices; biases are kept as they are

    def cost(p: LayerPlan, r: int) -> int:
        c = r * (p.in_features + p.out_features)
        return min(c, p.in_features * p.out_features) if skip else c

    ranks = {p.name: min_rank for p in plans}
    used = sum(cost(p, min_rank) for p in plans)
    if used > allowance:
        raise UserInputError(
            f"parameter_budget {budget:g} cannot be met: it allows {int(budget * dense_total):,} of the targeted "
            f"layers' {dense_total:,} parameters, but min_rank {min_rank} alone needs "
            f"{used + bias_total:,}. Raise parameter_budget or lower min_rank")
    owners, indices, scores = [], [], []
    for layer, p in enumerate(plans):
        s = values[p.name]
        total = float((s ** 2).sum())
        if total <= 0:
            continue
        score = (s[min_rank:] ** 2) / total / (p.in_features + p.out_features)
        owners.append(torch.full_like(score, layer, dtype=torch.long))
        indices.append(torch.arange(min_rank, len(s)))
        scores.append(score)
    if scores:
        # stable: equal scores keep model order, and within a layer the singular values stay in order
        order = torch.sort(torch.cat(scores), descending=True, stable=True).indices
        owners_t, indices_t = torch.cat(owners)[order].tolist(), torch.cat(indices)[order].tolist()
        for layer, i in zip(owners_t, indices_t):
            p = plans[layer]
            if ranks[p.name] != i:  # (only reachable through equal singular values across the layer's prefix)
                continue
            step = cost(p, i + 1) - cost(p, i)
            if used + step > allowance:
                break
            used += step
            ranks[p.name] = i + 1
    for p in plans:
        if skip and cost(p, ranks[p.name]) >= p.in_features * p.out_features:
            ranks[p.name] = p.max_rank  # dense anyway: keeps everything for the same parameters
    return ranks


def plan_ranks(model: nn.Module, config: LowRankConfig, show_progress: bool = True) -> dict[str, LayerPlan]:
    """The rank of every targeted layer under `config`, without changing the model.

    ``rank`` mode needs only the shapes (it works on a model built on the meta device, and reports no energy);
    ``energy`` and ``parameter_budget`` read the singular values of every targeted weight. Raises `UserInputError`
    for a model already factorized, patterns matching nothing, and ranks a matrix cannot have (naming the layer and
    its shape)."""
    if is_factorized(model):
        count = sum(type(m).__name__ == "LowRankLinear" for m in model.modules())
        raise UserInputError(
            f"{type(model).__name__} is already factorized ({count} LowRankLinear layers, config.{LOWRANK_KEY} set): "
            "factorizing the factors again is not supported; merge_lowrank(model) first to start again from dense "
            "layers")
    targets = resolve_targets(model, config)
    if not targets:
        raise UserInputError(f"no layers to factorize in {type(model).__name__}")
    bad = [f"{n} is {tuple(m.weight.shape)} {m.weight.dtype}" for n, m in targets.items()
           if not m.weight.is_floating_point()]
    if bad:
        raise UserInputError(f"only floating-point weights can be factorized (quantize after factorizing): "
                             f"{'; '.join(bad[:5])}")
    plans = [LayerPlan(n, m.out_features, m.in_features, m.bias is not None, 0, True) for n, m in targets.items()]
    need = config.rank if config.mode == "rank" else config.min_rank
    too_big = [p for p in plans if need > p.max_rank]
    if too_big:
        what = f"rank {config.rank}" if config.mode == "rank" else f"min_rank {config.min_rank}"
        listed = "; ".join(f"{p.name} (weight {p.out_features} x {p.in_features}, at most {p.max_rank})"
                           for p in too_big[:5])
        raise UserInputError(f"{what} is larger than min(in, out) of {len(too_big)} targeted layer"
                             f"{'s' if len(too_big) > 1 else ''}: {listed}{' ...' if len(too_big) > 5 else ''}")
    values: dict[str, torch.Tensor] = {}
    if config.mode != "rank":
        meta = [n for n, m in targets.items() if m.weight.device.type == "meta"]
        if meta:
            raise UserInputError(f"{config.mode} needs the weights' singular values, but {meta[0]} is on the meta "
                                 "device; only a fixed rank can be planned without weights")
        for name, module in tqdm(targets.items(), desc="Singular values", leave=False,
                                 disable=not show_progress or len(targets) < 8):
            values[name] = _singular_values(module.weight)
    if config.mode == "rank":
        ranks = {p.name: config.rank for p in plans}
    elif config.mode == "energy":
        ranks = {p.name: max(config.min_rank, energy_rank(values[p.name], config.energy)) for p in plans}
    else:
        ranks = _budget_ranks(plans, values, config.parameter_budget, config.min_rank, config.skip_if_not_smaller)
    for p in plans:
        p.rank = ranks[p.name]
        p.factorize = not (config.skip_if_not_smaller and p.rank * (p.in_features + p.out_features)
                           >= p.in_features * p.out_features)
        if p.name in values:
            p.kept_energy = float(_energy_ratio(values[p.name])[p.rank - 1]) if p.factorize else 1.0
        elif not p.factorize:
            p.kept_energy = 1.0
    return {p.name: p for p in plans}


def factorize(model: nn.Module, config: LowRankConfig | None = None, show_progress: bool = True,
              **config_kwargs) -> dict:
    """Replace the targeted ``nn.Linear`` layers of `model` in place by `LowRankLinear` pairs initialised from their
    truncated SVD, and record the ranks in ``model.config.hfcompress_lowrank`` (``{module name: rank}``, the layers
    left dense omitted). `config` or its fields as keywords (``factorize(model, energy=0.95)``).

    Returns a JSON-serialisable summary: the mode, per layer its shape, rank, whether it was factorized, the energy
    kept and its parameters before/after, and the parameters of the targeted layers and of the whole model before
    and after."""
    if config is None:
        config = LowRankConfig(**config_kwargs)
    elif config_kwargs:
        raise TypeError("give a LowRankConfig or its fields as keywords, not both")
    plans = plan_ranks(model, config, show_progress=show_progress)
    model_before = _count_parameters(model)
    modules = dict(model.named_modules())
    todo = [p for p in plans.values() if p.factorize]
    for p in tqdm(todo, desc="Factorizing (SVD)", leave=False, disable=not show_progress or len(todo) < 8):
        linear = modules[p.name]
        w = linear.weight.detach()
        svd = torch.linalg.svd(w.to(torch.float64 if w.dtype == torch.float64 else torch.float32),
                               full_matrices=False)
        if p.kept_energy is None:
            p.kept_energy = float(_energy_ratio(svd[1])[p.rank - 1])
        head, _, last = p.name.rpartition(".")
        setattr(model.get_submodule(head) if head else model, last, LowRankLinear.from_linear(linear, p.rank, svd))
    ranks = {p.name: p.rank for p in todo}
    if getattr(model, "config", None) is not None:
        setattr(model.config, LOWRANK_KEY, ranks)
    before = sum(p.dense_parameters for p in plans.values())
    after = sum(p.parameters_after for p in plans.values())
    summary = {
        "mode": config.mode,
        "value": getattr(config, config.mode),
        "layers": {name: p.to_dict() for name, p in plans.items()},
        "factorized_layers": len(todo),
        "dense_layers": [p.name for p in plans.values() if not p.factorize],
        "targeted_parameters_before": before,
        "targeted_parameters_after": after,
        "targeted_fraction_kept": after / before,
        "model_parameters_before": model_before,
        "model_parameters_after": _count_parameters(model),
    }
    energies = [p.kept_energy for p in todo if p.kept_energy is not None]
    logger.info("Factorized %d of %d layers (%s %s; ranks %s; energy kept %s): targeted parameters %s -> %s "
                "(%.3f), model %s -> %s", len(todo), len(plans), config.mode, summary["value"],
                f"{min(ranks.values())}..{max(ranks.values())}" if ranks else "-",
                f"{min(energies):.3f}..{max(energies):.3f}" if energies else "-", f"{before:,}", f"{after:,}",
                after / before, f"{model_before:,}", f"{summary['model_parameters_after']:,}")
    if not todo:
        logger.warning("No layer was factorized: at the chosen ranks none would be smaller than its dense matrix")
    elif summary["dense_layers"]:
        logger.info("Left dense (factorized form not smaller): %s", ", ".join(summary["dense_layers"]))
    return summary


def merge_lowrank(model: nn.Module) -> nn.Module:
    """Undo `factorize` in place: every `LowRankLinear` becomes an ``nn.Linear`` holding the product of its factors
    (the function is unchanged; the parameters are not reduced any more), and ``config.hfcompress_lowrank`` is
    removed, so the model saves and loads as its plain architecture."""
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__ == "LowRankLinear"]
    for name, module in found:
        head, _, last = name.rpartition(".")
        setattr(model.get_submodule(head) if head else model, last, module.to_linear())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, LOWRANK_KEY):
        delattr(config, LOWRANK_KEY)
    logger.info("Merged %d low-rank layers back into dense nn.Linear layers", len(found))
    return model
