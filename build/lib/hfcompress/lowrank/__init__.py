"""Low-rank factorization: ``nn.Linear`` layers replaced by two thinner ones from their truncated SVD (a fixed rank,
a per-layer energy, or a global parameter budget), meant to be fine-tuned afterwards (best with distillation from
the unfactorized model), with checkpoints that reload with or without hfcompress.

    from hfcompress.lowrank import LowRankConfig, factorize, save_lowrank, load_lowrank
    summary = factorize(model, LowRankConfig(energy=0.95))
    ...                                  # fine-tune
    save_lowrank(model, "out", tokenizer)
    load_lowrank("out")                  # or AutoModelFor...from_pretrained("out", trust_remote_code=True)
"""

from .config import LowRankConfig
from .factorize import LayerPlan, factorize, is_factorized, merge_lowrank, plan_ranks, resolve_targets
from .lowrank_io import is_lowrank_checkpoint, load_lowrank, save_lowrank
from .structure import LOWRANK_KEY, LowRankLinear, apply_lowrank, lowrank_class

__all__ = [
    "LOWRANK_KEY",
    "LayerPlan",
    "LowRankConfig",
    "LowRankLinear",
    "apply_lowrank",
    "factorize",
    "is_factorized",
    "is_lowrank_checkpoint",
    "load_lowrank",
    "lowrank_class",
    "merge_lowrank",
    "plan_ranks",
    "resolve_targets",
    "save_lowrank",
]
