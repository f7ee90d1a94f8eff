"""Pruning's registration (see `hfcompress.registry`): the two formats it writes (structurally pruned shapes with
their modeling code; compact sparse weights), the card's line for a ``pruning`` record entry, and the ``prune`` stage
with its order rules (a low-rank model is not pruned; structured pruning does not follow unstructured pruning)."""

from __future__ import annotations

import os

from ..registry import (
    PLAIN,
    CheckpointFormat,
    Method,
    StageOrderError,
    number_text,
    register_format,
    register_method,
)


def _is_structured(path: str, config: dict) -> bool:
    from .structure import STRUCTURE_KEY

    return bool(config.get(STRUCTURE_KEY))


def _load_structured(path: str, **_):
    from .structured_io import load_structured

    return load_structured(path)


def _is_sparse(path: str, config: dict) -> bool:
    from .sparse import SPARSE_WEIGHTS_NAME

    return os.path.exists(os.path.join(path, SPARSE_WEIGHTS_NAME))


def _load_sparse(path: str, **_):
    from .sparse import load_sparse

    return load_sparse(path)


def describe(m: dict) -> tuple[str, list[str]]:
    if m.get("granularity") == "structured":
        return (f"structured pruning ({m.get('method')} scores, {m.get('scope')} ranking): attention heads kept "
                f"per layer {m.get('heads_per_layer')} ({m.get('heads_after')} of {m.get('heads_before')}), FFN "
                f"neurons kept per layer {m.get('ffn_per_layer')} ({m.get('neurons_after')} of "
                f"{m.get('neurons_before')}), {removed_blocks_text(m.get('removed_blocks'))}; parameters "
                f"{number_text(m.get('parameters_before'))} -> {number_text(m.get('parameters_after'))}, physically "
                f"removed ({_share(m)})",
                ["pruned", "structured-pruning"])
    return (f"{m.get('method')} pruning ({m.get('scope', 'local')}) to sparsity "
            f"{number_text(m.get('reached_sparsity'), 3)} of the targeted weights (the share of those weights that are "
            "zero)", ["pruned", "sparse"])


def _share(m: dict) -> str:
    removed = m.get("parameters_removed_fraction", m.get("reached_sparsity"))
    text = f"{100 * removed:.1f}% of all parameters" if removed is not None else "share of parameters n/a"
    if m.get("head_neuron_sparsity") is not None:
        text += f"; sparsity {m['head_neuron_sparsity']:.3f} of the heads' and neurons' parameters"
    return text


def removed_blocks_text(removed) -> str:
    from .structured import removed_blocks_text as text

    return text(removed)


def follows(shape: str, args) -> str:
    structured = args.value("granularity") == "structured"
    if shape == "lowrank":
        raise StageOrderError("prunes a low-rank model: prune first, then factorize (lowrank after prune works)")
    if shape == "sparse" and structured:
        raise StageOrderError("structured pruning after unstructured pruning would refill the zeros: prune "
                              "structurally first")
    return "structured" if structured else ("sparse" if shape in (PLAIN, "sparse") else shape)


register_format(CheckpointFormat(
    "structured", detect=_is_structured, load=_load_structured, priority=50,
    loading_code="from transformers import AutoModelForSequenceClassification\n"
                 "model = AutoModelForSequenceClassification.from_pretrained(PATH, trust_remote_code=True)",
    loading_note="The pruned shapes are built by the modeling code saved beside the weights (or hfcompress's "
                 "`load_structured(PATH)` without remote code)."))
register_format(CheckpointFormat(
    "sparse", detect=_is_sparse, load=_load_sparse, priority=60,
    loading_code="from hfcompress.prune import load_sparse\nmodel = load_sparse(PATH)",
    loading_note="Needs hfcompress (compact sparse weights: values and positions of the non-zero entries)."))
register_method(Method(
    name="pruning", describe=describe, stage="prune", script="hfcompress.run.scripts:prune_script",
    follows=follows, fine_tunes=True, config_class="hfcompress.prune.config:PruningConfig"))
