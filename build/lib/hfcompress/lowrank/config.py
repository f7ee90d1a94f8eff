"""`LowRankConfig`: which ``nn.Linear`` layers are factorized, and how their ranks are chosen. Validated on creation.

The ranks depend on the weights (energy and budget modes read their singular values), so what can be checked
without a model is checked here, and the rest (a rank larger than a matrix allows, a pattern matching nothing) by
`hfcompress.lowrank.plan_ranks` against the model, with the layer's name and shape in the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..configs import MethodConfig
from ..errors import UserInputError

CONFIG_NAME = "lowrank_config.json"
MODES = ("rank", "energy", "parameter_budget")


@dataclass
class LowRankConfig(MethodConfig):
    """Low-rank factorization of ``nn.Linear`` layers from their truncated SVD (``W ~= U_r S_r V_r^T``, each layer
    replaced by two thinner ones, `LowRankLinear`).

    Give exactly one way of choosing the ranks:
      * ``rank``: the same rank for every targeted layer;
      * ``energy``: per layer, the smallest rank whose singular values keep this fraction of the squared Frobenius
        norm (the "energy", ``sum_{i<r} s_i^2 / sum_i s_i^2``);
      * ``parameter_budget``: the targeted layers keep at most this fraction of their parameters (weights and
        biases), the ranks chosen across layers together: every singular value not already kept by `min_rank` is
        scored by the fraction of its layer's energy it carries per parameter it costs,
        ``s_i^2 / sum_j s_j^2 / (in + out)``, and singular values are kept in decreasing order of that score until
        the next one would not fit the budget. (A layer that reaches the size of its dense matrix stays dense, and
        its further singular values cost nothing.)

    With `skip_if_not_smaller`, a layer whose factorized form would not be smaller than its dense matrix
    (``r * (in + out) >= in * out``) stays dense.
    """

    config_name = CONFIG_NAME

    target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Module names choosing the nn.Linear layers to factorize: each pattern matches a name "
                  "equal to it, ending in '.' + pattern (a suffix such as 'intermediate.dense'), or matching it "
                  "whole as a regular expression (e.g. '.*\\.(query|key|value)'); several patterns may be given as "
                  "one comma-separated word. Any nn.Linear can match, the pooler and task head included. Default: "
                  "the q/k/v, attention-output and feed-forward projections of every encoder block (from the "
                  "architecture adapter)."},
    )
    rank: int | None = field(
        default=None,
        metadata={"help": "Fixed rank for every targeted layer, 1 .. min(in, out) of each. One of rank, energy, "
                  "parameter_budget."},
    )
    energy: float | None = field(
        default=None,
        metadata={"help": "Per layer, keep the smallest rank whose squared singular values sum to at least this "
                  "fraction of the layer's total, in (0, 1]: 0.95 keeps 95 in 100 parts of the energy. One of rank, "
                  "energy, parameter_budget."},
    )
    parameter_budget: float | None = field(
        default=None,
        metadata={"help": "Fraction of the targeted layers' parameters to keep, in (0, 1]; the per-layer ranks are "
                  "chosen together: singular values are kept in decreasing order of the fraction of their layer's "
                  "energy per parameter they cost, until the budget is spent. One of rank, energy, parameter_budget."},
    )
    min_rank: int = field(
        default=1,
        metadata={"help": "Energy and budget modes: no layer gets a rank below this (>= 1)."},
    )
    skip_if_not_smaller: bool = field(
        default=True,
        metadata={"help": "Leave a layer dense when its factorized form would have at least as many parameters as "
                  "the dense matrix (rank * (in + out) >= in * out)."},
    )

    def __post_init__(self):
        errors = []
        chosen = [name for name in MODES if getattr(self, name) is not None]
        if len(chosen) != 1:
            errors.append(f"give exactly one of rank, energy, parameter_budget (got "
                          f"{', '.join(chosen) if chosen else 'none'})")
        if self.rank is not None:
            if isinstance(self.rank, bool) or not _is_int(self.rank) or int(self.rank) < 1:
                errors.append(f"rank must be a whole number >= 1, got {self.rank!r}")
            else:
                self.rank = int(self.rank)
        for name in ("energy", "parameter_budget"):
            v = getattr(self, name)
            if v is None:
                continue
            try:
                v = float(v)
            except (TypeError, ValueError):
                errors.append(f"{name}: {v!r} is not a number")
                continue
            if not 0.0 < v <= 1.0:
                errors.append(f"{name} must be in (0, 1], got {v:g}")
            setattr(self, name, v)
        if isinstance(self.min_rank, bool) or not _is_int(self.min_rank) or int(self.min_rank) < 1:
            errors.append(f"min_rank must be a whole number >= 1, got {self.min_rank!r}")
        else:
            self.min_rank = int(self.min_rank)
            if isinstance(self.rank, int) and self.min_rank > self.rank:
                errors.append(f"min_rank ({self.min_rank}) is above rank ({self.rank}); min_rank applies to the "
                              "energy and parameter_budget modes")
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if self.target_modules is not None:
            # 'query,key' (one command-line word) is two patterns; a comma inside a {m,n} quantifier is not a separator
            self.target_modules = [part.strip() for p in self.target_modules
                                   for part in (re.split(r",(?![^{]*\})", p) if isinstance(p, str) else [p])]
            if not self.target_modules:
                errors.append("target_modules is an empty list: leave it unset for the default layers")
            for pattern in self.target_modules:
                if not isinstance(pattern, str) or not pattern:
                    errors.append(f"target_modules: {pattern!r} is not a module name or pattern")
                    continue
                try:
                    re.compile(pattern)
                except re.error as exc:
                    errors.append(f"target_modules: {pattern!r} is not a regular expression: {exc}")
        self.skip_if_not_smaller = bool(self.skip_if_not_smaller)
        if errors:
            raise UserInputError("Low-rank configuration: " + "; ".join(errors))

    @property
    def mode(self) -> str:
        """``"rank"``, ``"energy"`` or ``"parameter_budget"``."""
        return next(name for name in MODES if getattr(self, name) is not None)

def _is_int(v) -> bool:
    try:
        return float(v) == int(v)
    except (TypeError, ValueError):
        return False
