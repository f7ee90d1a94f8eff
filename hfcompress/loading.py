"""One loader for every checkpoint hfcompress writes: `load_model(path)` reads the folder's markers and picks the
loader of the format, so a benchmark, a model card or a user needs no knowledge of which method produced it.

=============================================  ============================================================
what the folder holds                          loaded by
=============================================  ============================================================
``hfcompress_onnx.json`` + ``model.onnx``       `quantize.OnnxModelForSequenceClassification` (ONNX Runtime)
config ``hfcompress_quantization``             `quantize.load_dynamic_int8` (PyTorch dynamic int8)
config ``quantization_config`` (bitsandbytes)  `quantize.bnb.reload_quantized`
config ``hfcompress_lowrank``                   `lowrank.load_lowrank` (also when structurally pruned first)
config ``hfcompress_structure``                 `prune.load_structured`
``sparse_model.safetensors``                   `prune.load_sparse`
anything else                                  ``from_pretrained`` of the task auto class of the class
                                               ``architectures`` names (`arch.model_class_for`)
=============================================  ============================================================

Speech checkpoints load as what they were saved as: ``WhisperForConditionalGeneration`` through
``AutoModelForSpeechSeq2Seq``, ``Wav2Vec2ForCTC`` / ``HubertForCTC`` through ``AutoModelForCTC``, audio classifiers
(wav2vec2, HuBERT, ``WhisperForAudioClassification``) through ``AutoModelForAudioClassification``, in every format
above but ONNX (text classifiers only). A text checkpoint loads as before: ``AutoModelForSequenceClassification``
(also a bare encoder, which gets a new head).
"""

from __future__ import annotations

import json
import os

from .errors import UserInputError


def checkpoint_format(path: str) -> str:
    """``onnx``, ``torch_int8``, ``bnb``, ``lowrank``, ``structured``, ``sparse`` or ``transformers``."""
    if not os.path.isdir(path):
        raise UserInputError(f"{path} is not a checkpoint folder")
    if os.path.exists(os.path.join(path, "hfcompress_onnx.json")):
        return "onnx"
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise UserInputError(f"{path} has no config.json: not a saved model")
    with open(cfg_path) as fh:
        cfg = json.load(fh)
    from .quantize.dynamic import CONFIG_KEY

    if cfg.get(CONFIG_KEY):
        return "torch_int8"
    if (cfg.get("quantization_config") or {}).get("quant_method") == "bitsandbytes":
        return "bnb"
    if cfg.get("hfcompress_lowrank"):
        return "lowrank"
    if cfg.get("hfcompress_structure"):
        return "structured"
    if os.path.exists(os.path.join(path, "sparse_model.safetensors")):
        return "sparse"
    return "transformers"


def load_model(path: str, num_threads: int | None = None):
    """The model saved in `path`, in eval mode, whatever hfcompress format it is in (see the module docstring).
    `num_threads`: intra-op threads of an ONNX Runtime session (PyTorch models follow `torch.set_num_threads`)."""
    kind = checkpoint_format(path)
    if kind == "onnx":
        from .quantize.onnx import OnnxModelForSequenceClassification

        return OnnxModelForSequenceClassification.from_pretrained(path, num_threads=num_threads)
    if kind == "torch_int8":
        from .quantize.dynamic import load_dynamic_int8

        return load_dynamic_int8(path)
    if kind == "bnb":
        from .quantize.bnb import reload_quantized

        return reload_quantized(path)
    if kind == "lowrank":
        from .lowrank import load_lowrank

        return load_lowrank(path)
    if kind == "structured":
        from .prune import load_structured

        return load_structured(path)
    if kind == "sparse":
        from .prune import load_sparse

        return load_sparse(path)
    from .arch.base import model_class_for

    with open(os.path.join(path, "config.json")) as fh:
        return model_class_for(json.load(fh)).from_pretrained(path).eval()


def save_model(model, directory: str, tokenizer=None) -> str:
    """Save a full-precision model in the format its config calls for: low-rank (`save_lowrank`, also when pruned
    first) or structurally pruned (`save_structured`), both with their modeling code, else a plain transformers
    checkpoint; the tokenizer beside it. `load_model` reads any of them back."""
    if getattr(model.config, "hfcompress_lowrank", None):
        from .lowrank import save_lowrank

        return save_lowrank(model, directory, tokenizer)
    if getattr(model.config, "hfcompress_structure", None):
        from .prune import save_structured

        return save_structured(model, directory, tokenizer)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory
