"""Saving and loading structurally pruned models.

`save_structured` writes a normal transformers checkpoint (safetensors + config.json) whose config also records the
pruned shape (``hfcompress_structure``) and maps the auto classes to ``modeling_hfcompress_pruned.py``, a copy of
`hfcompress/prune/structure.py` saved beside the weights. So the checkpoint loads:

* with hfcompress: ``load_structured(path)`` (no remote code is run);
* without hfcompress: ``AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)`` or
  ``pipeline("text-classification", model=path, trust_remote_code=True)``; the saved file needs torch and
  transformers only. Speech models the same way through their own auto classes (``auto_map`` names every auto class
  that maps the model's class): ``AutoModelForSpeechSeq2Seq`` (Whisper; ``generate`` works), ``AutoModelForCTC``
  (wav2vec2 / HuBERT CTC), ``AutoModelForAudioClassification`` (wav2vec2 / HuBERT / Whisper classifiers).

A plain ``from_pretrained`` without ``trust_remote_code`` cannot work: the family's own code builds every block at the
config's full width.
"""

from __future__ import annotations

import logging

import torch.nn as nn

from ..errors import UserInputError
from ..remote_code import (
    config_records,
    load_shaped,
    plain_class_name,
    save_with_modeling_code,
    saved_shapes,
)
from .structure import STRUCTURE_KEY

logger = logging.getLogger(__name__)



def save_structured(model: nn.Module, directory: str, tokenizer=None, **save_kwargs) -> str:
    """Save a model whose structure was cut by `StructuredPruner.fold` (or `apply_structure`). Files land under their
    final names only once complete; a dense or sparse checkpoint left in `directory` by an earlier save is removed."""
    spec = getattr(model.config, STRUCTURE_KEY, None)
    if not spec:
        raise ValueError(f"{type(model).__name__} has no {STRUCTURE_KEY} in its config: it was not structurally "
                         "pruned (fold the StructuredPruner first), save it with save_pretrained")
    save_with_modeling_code(model, directory, tokenizer, **save_kwargs)
    logger.info("Saved structurally pruned %s to %s (loads with hfcompress.load_structured, or with "
                "trust_remote_code=True)", plain_class_name(type(model).__name__), directory)
    return directory


def is_structured_checkpoint(directory: str) -> bool:
    return config_records(directory, STRUCTURE_KEY)


def check_saved_shapes(directory: str, model: nn.Module) -> None:
    """A `UserInputError` naming the tensors whose saved shape differs from the shape the config describes."""
    saved = saved_shapes(directory)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad = [f"{k}: saved {saved[k]}, config {expected[k]}" for k in expected if k in saved and saved[k] != expected[k]]
    if bad:
        raise UserInputError(
            f"{directory}: {len(bad)} saved weights do not have the shapes its config.json describes "
            f"({STRUCTURE_KEY} and the model's sizes): {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. The "
            "config and the weights come from different models; save them together with save_structured"
        )


def load_structured(directory: str, model_class=None, **kwargs) -> nn.Module:
    """The structurally pruned model saved in `directory`, in eval mode, through hfcompress's own code (no remote code).
    `model_class` defaults to the transformers class named in config.json; ``kwargs`` go to `from_pretrained`."""
    return load_shaped(directory, STRUCTURE_KEY, "not a structurally pruned checkpoint (load it with from_pretrained)",
                       check_saved_shapes, model_class, **kwargs)
