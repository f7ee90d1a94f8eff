"""Weight sharing's registration (see `hfcompress.registry`): its format (packed indices + codebooks), the card's line
for a ``weight_sharing`` record entry, and the ``share`` stage (after pruning: zeros stay zero, Deep Compression's
prune -> share order; not after quantization, which is final; a shared model may still be quantized)."""

from __future__ import annotations

import os

from ..registry import CheckpointFormat, Method, StageOrderError, number_text, register_format, register_method


def _is_shared(path: str, config: dict) -> bool:
    from .share_io import SHARED_WEIGHTS_NAME

    return os.path.exists(os.path.join(path, SHARED_WEIGHTS_NAME))


def _load(path: str, **_):
    from .share_io import load_shared

    return load_shared(path)


def describe(m: dict) -> tuple[str, list[str]]:
    k = m.get("weight_sharing_k")
    return (f"weight sharing (Deep Compression trained quantization): {m.get('shared_matrices')} matrices"
            f"{' and the word embeddings' if m.get('weight_sharing_embeddings') else ''} keep {k} shared values each "
            f"({m.get('index_bits')}-bit indices + a codebook per matrix; {number_text(m.get('shared_weights'))} "
            "weights), values fine-tuned" + (f", {m.get('pruned_matrices')} pruned matrices keep their zeros"
                                            if m.get("pruned_matrices") else ""),
            ["weight-sharing", f"{m.get('index_bits')}-bit"])


def follows(shape: str, args) -> str:
    if shape == "quantized":
        raise StageOrderError("shares the weights of a quantized model: share the full-precision model, then "
                              "quantize")
    return "shared"


register_format(CheckpointFormat(
    "shared", detect=_is_shared, load=_load, priority=35,
    loading_code="from hfcompress.share import load_shared\nmodel = load_shared(PATH)",
    loading_note="Needs hfcompress (packed cluster indices and a codebook per matrix); the run's model_dense/ folder "
                 "is the same model as a plain transformers checkpoint."))
register_method(Method(
    name="weight_sharing", describe=describe, stage="share", script="hfcompress.run.scripts:share_script",
    follows=follows, fine_tunes=True, config_class="hfcompress.share.config:WeightSharingConfig"))
