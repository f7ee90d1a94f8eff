"""Which `nn.Linear` layers are pruned: the architecture adapter's encoder projections, or a user's pattern."""

from __future__ import annotations

import re

import torch.nn as nn

from ..arch import get_adapter, unwrap_model
from ..errors import UserInputError
from .config import PruningConfig


def _head_names(model: nn.Module) -> set[str]:
    """Linear layers outside the encoder blocks and embeddings: pooler and task head."""
    base = getattr(model, "base_model", model)
    base_prefix = next((n for n, m in model.named_modules() if m is base), "")
    names = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        inside_base = base_prefix == "" or name.startswith(base_prefix + ".")
        if not inside_base or ".pooler" in name or name.endswith("pooler.dense"):
            names.add(name)
    return names


def find_targets(model: nn.Module, config: PruningConfig) -> dict[str, nn.Module]:
    """Name -> module of every layer to prune (in `named_modules` order). Raises `UserInputError` for a pattern that
    matches nothing (listing the Linear layers that exist) or an architecture without an adapter (naming it)."""
    model = unwrap_model(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    heads = _head_names(model)
    if config.target_modules:
        pattern = re.compile(config.target_modules)
        chosen = {n: m for n, m in linears.items() if pattern.fullmatch(n) or pattern.search(n)}
        chosen = {n: m for n, m in chosen.items() if config.prune_head or n not in heads}
        if not chosen:
            raise UserInputError(
                f"target_modules {config.target_modules!r} matches no nn.Linear layer of {type(model).__name__}"
                f"{' (task head and pooler excluded: set prune_head to include them)' if not config.prune_head else ''}. "
                f"Its Linear layers: {', '.join(linears) or 'none'}"
            )
    else:
        chosen = dict(get_adapter(model).prunable_linears(model))
        if config.prune_head:
            chosen.update({n: linears[n] for n in linears if n in heads})
    if config.prune_embeddings:
        emb = model.get_input_embeddings()
        name = next(n for n, m in model.named_modules() if m is emb)
        chosen[name] = emb
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return dict(sorted(chosen.items(), key=lambda kv: order[kv[0]]))
