"""Low rank's registration (see `hfcompress.registry`): its format (factorized layers with their modeling code), the
card's line for a ``lowrank`` record entry, and the ``lowrank`` stage (not after unstructured pruning)."""

from __future__ import annotations

from ..registry import CheckpointFormat, Method, StageOrderError, register_format, register_method, settings_text


def _is_lowrank(path: str, config: dict) -> bool:
    from .structure import LOWRANK_KEY

    return bool(config.get(LOWRANK_KEY))


def _load(path: str, **_):
    from .lowrank_io import load_lowrank

    return load_lowrank(path)


def describe(m: dict) -> tuple[str, list[str]]:
    return f"low-rank SVD factorization ({settings_text(m, ('rank', 'energy', 'parameter_budget'))})", ["low-rank"]


def follows(shape: str, args) -> str:
    if shape == "sparse":
        raise StageOrderError("low rank after unstructured pruning would refill the zeros: factorize first or prune "
                              "structurally")
    return "lowrank"


register_format(CheckpointFormat(
    "lowrank", detect=_is_lowrank, load=_load, priority=40,
    loading_code="from transformers import AutoModelForSequenceClassification\n"
                 "model = AutoModelForSequenceClassification.from_pretrained(PATH, trust_remote_code=True)",
    loading_note="The factorized layers are built by the modeling code saved beside the weights (or hfcompress's "
                 "`load_lowrank(PATH)` without remote code)."))
register_method(Method(
    name="lowrank", describe=describe, stage="lowrank", script="hfcompress.run.scripts:lowrank_script",
    follows=follows, config_class="hfcompress.lowrank.config:LowRankConfig"))
