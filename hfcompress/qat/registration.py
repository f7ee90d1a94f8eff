"""Quantization-aware training's registration (see `hfcompress.registry`): its format (packed 1/2/8-bit codes + a
scale per row), the card's line for a ``qat`` record entry, and the ``qat`` stage (after pruning or weight sharing is
refused: the quantizer would move their zeros and shared values; not after quantization, which is final)."""

from __future__ import annotations

import os

from ..registry import CheckpointFormat, Method, StageOrderError, register_format, register_method

SCHEMES = {1: "binary {-a, +a}", 2: "ternary {-a, 0, +a}", 7: "int8 on a 7-bit grid", 8: "int8"}


def _is_qat(path: str, config: dict) -> bool:
    from .qat_io import QAT_WEIGHTS_NAME

    return os.path.exists(os.path.join(path, QAT_WEIGHTS_NAME))


def _load(path: str, **_):
    from .qat_io import load_qat

    return load_qat(path)


def describe(m: dict) -> tuple[str, list[str]]:
    bits, act, emb = m.get("qat_weight_bits"), m.get("qat_activation_bits"), m.get("qat_embedding_bits")
    line = (f"quantization-aware training: {SCHEMES.get(bits, bits)} weights ({bits}-bit, a scale per row) in "
            f"{m.get('layers')} layers, {f'{act}-bit' if act else 'float'} activations, word embeddings "
            f"{'float' if emb == 32 else f'{emb}-bit'}, straight-through gradients"
            + (", with distillation from the full-precision model" if m.get("qat_distill") else "")
            + ("; the binary layers were split from a ternary-trained model (BinaryBERT's ternary weight splitting: "
               "twice the width, 1 bit per weight, the same outputs before fine-tuning)" if m.get("qat_split_ternary")
               else "")
            + ("; model_onnx/ holds the int8 ONNX Runtime graph (QDQ) with the trained weight scales and static "
               "activation ranges" if bits in (7, 8) and act == 8 else ""))
    return line, ["quantized", "qat", {1: "binary", 2: "ternary", 7: "int8", 8: "int8"}.get(bits, f"{bits}-bit")]


def follows(shape: str, args) -> str:
    if shape == "quantized":
        raise StageOrderError("quantization-aware training of a quantized model: train the full-precision model")
    if shape in ("sparse", "shared"):
        raise StageOrderError(f"quantization-aware training after {shape} weights would move their zeros and shared "
                              "values: train with QAT first, or quantize the shared model post-training")
    return "qat"


register_format(CheckpointFormat(
    "qat", detect=_is_qat, load=_load, priority=36,
    loading_code="from hfcompress.qat import load_qat\nmodel = load_qat(PATH)",
    loading_note="Needs hfcompress (packed 1/2/8-bit codes and a scale per row, rebuilt into fake-quantized layers); "
                 "the run's model_dense/ folder holds the same weights as a plain transformers checkpoint."))
register_method(Method(
    name="qat", describe=describe, stage="qat", script="hfcompress.run.scripts:qat_script", follows=follows,
    fine_tunes=True, config_class="hfcompress.qat.config:QATConfig"))
