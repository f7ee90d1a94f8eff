"""The quantization methods' registration (see `hfcompress.registry`): the three formats they write (ONNX Runtime,
PyTorch dynamic int8, bitsandbytes), the card's line for a ``quantization`` record entry, and the ``quantize`` stage
(always the last one of a recipe: a quantized model is not trained or compressed further)."""

from __future__ import annotations

import os

from ..registry import CheckpointFormat, Method, register_format, register_method, settings_text

TAGS = {"onnx_int8": ["onnx", "int8"], "onnx_fp32": ["onnx"], "torch_int8": ["int8"], "bnb_8bit": ["8-bit"],
        "bnb_4bit": ["4-bit"]}


def _is_onnx(path: str, config: dict) -> bool:
    from .onnx import METADATA_FILE

    return os.path.exists(os.path.join(path, METADATA_FILE))


def _load_onnx(path: str, num_threads: int | None = None, **_):
    from .onnx import onnx_model_class

    return onnx_model_class(path).from_pretrained(path, num_threads=num_threads)


def _is_torch_int8(path: str, config: dict) -> bool:
    from .dynamic import CONFIG_KEY

    return bool(config.get(CONFIG_KEY))


def _load_torch_int8(path: str, **_):
    from .dynamic import load_dynamic_int8

    return load_dynamic_int8(path)


def _is_bnb(path: str, config: dict) -> bool:
    return (config.get("quantization_config") or {}).get("quant_method") == "bitsandbytes"


def _load_bnb(path: str, **_):
    from .bnb import reload_quantized

    return reload_quantized(path)


def describe(m: dict) -> tuple[str, list[str]]:
    q = m.get("quantization", "none")
    prefix = {"onnx_int8": "onnx_", "torch_int8": "torch_", "bnb_4bit": "bnb_"}.get(q)
    keys = [k for k in m if prefix and k.startswith(prefix)] + ["skip_modules"]
    extra = settings_text(m, keys)
    return f"quantization: `{q}`" + (f" ({extra})" if extra else ""), (["quantized", *TAGS.get(q, [])]
                                                                         if q != "none" else [])


def requires(args) -> list[str]:
    q = args.value("quantization")
    if isinstance(q, str) and q.startswith("onnx"):
        return ["onnx", "onnxruntime"]
    if isinstance(q, str) and q.startswith("bnb"):
        return ["bitsandbytes"]
    return []


register_format(CheckpointFormat(
    "onnx", detect=_is_onnx, load=_load_onnx, priority=10, library_name="onnx", needs_config=False,
    loading_code="from hfcompress.quantize import OnnxModelForSequenceClassification\n"
                 "model = OnnxModelForSequenceClassification.from_pretrained(PATH)",
    loading_note="Needs hfcompress and onnxruntime (the model is an ONNX Runtime graph; `model(**inputs).logits` "
                 "and `transformers.pipeline(\"text-classification\", model=model, tokenizer=tokenizer)` work)."))
register_format(CheckpointFormat(
    "torch_int8", detect=_is_torch_int8, load=_load_torch_int8, priority=20,
    loading_code="from hfcompress.quantize import load_dynamic_int8\nmodel = load_dynamic_int8(PATH)",
    loading_note="Needs hfcompress (PyTorch dynamic int8 weights stored as int8 tensors and scales)."))
register_format(CheckpointFormat(
    "bnb", detect=_is_bnb, load=_load_bnb, priority=30,
    loading_code="from transformers import AutoModelForSequenceClassification\n"
                 "model = AutoModelForSequenceClassification.from_pretrained(PATH)",
    loading_note="Needs bitsandbytes (the quantization_config in config.json is read by transformers)."))
register_method(Method(
    name="quantization", describe=describe, stage="quantize", script="hfcompress.run.scripts:quantize_script",
    follows="hfcompress.run.quantize:follows", requires=requires, trains=False,
    final=True, config_class="hfcompress.quantize.config:QuantizationConfig"))
