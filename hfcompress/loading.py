"""One loader for every checkpoint hfcompress writes: `load_model(path)` reads the folder's markers and picks the
loader of the format, so a benchmark, a model card or a user needs no knowledge of which method produced it.

The formats are the methods' registrations (`hfcompress.registry`), tried in their order:

=============================================  ============================================================
what the folder holds                          loaded by (registered in)
=============================================  ============================================================
``hfcompress_onnx.json`` + ``model.onnx``       `quantize.OnnxModelFor...` of the exported task (quantize/)
config ``hfcompress_quantization``             `quantize.load_dynamic_int8` (quantize/)
config ``quantization_config`` (bitsandbytes)  `quantize.bnb.reload_quantized` (quantize/)
config ``hfcompress_lowrank``                   `lowrank.load_lowrank`, also when pruned first (lowrank/)
config ``hfcompress_structure``                 `prune.load_structured` (prune/)
``sparse_model.safetensors``                   `prune.load_sparse` (prune/)
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
from .registry import PLAIN, formats, get_format


def checkpoint_format(path: str) -> str:
    """The name of the registered format the folder is in (``onnx``, ``torch_int8``, ``bnb``, ``lowrank``,
    ``structured``, ``sparse``, or one a user registered), else ``transformers``."""
    if not os.path.isdir(path):
        raise UserInputError(f"{path} is not a checkpoint folder")
    cfg_path = os.path.join(path, "config.json")
    cfg = None
    if os.path.exists(cfg_path):
        with open(cfg_path) as fh:
            cfg = json.load(fh)
    for fmt in formats():
        if cfg is None and fmt.needs_config:
            continue
        if fmt.detect(path, cfg or {}):
            return fmt.name
    if cfg is None:
        raise UserInputError(f"{path} has no config.json: not a saved model")
    return PLAIN


def load_model(path: str, num_threads: int | None = None):
    """The model saved in `path`, in eval mode, whatever hfcompress format it is in (see the module docstring).
    `num_threads`: intra-op threads of an ONNX Runtime session (PyTorch models follow `torch.set_num_threads`)."""
    kind = checkpoint_format(path)
    fmt = get_format(kind)
    if fmt is not None:
        return fmt.load(path, num_threads=num_threads)
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
