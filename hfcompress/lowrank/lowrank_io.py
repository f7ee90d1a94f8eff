"""Saving and loading low-rank factorized models.

`save_lowrank` writes a normal transformers checkpoint (safetensors + config.json) whose config also records the
ranks (``hfcompress_lowrank``) and maps the family's auto classes to ``modeling_hfcompress_lowrank.py``, a copy of
`hfcompress/lowrank/structure.py` saved beside the weights. So the checkpoint loads:

* with hfcompress: ``load_lowrank(path)`` (no remote code is run);
* without hfcompress: ``AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)`` (or
  ``AutoModel``, ``pipeline(..., trust_remote_code=True)``); the saved file needs torch and transformers only.

A plain ``from_pretrained`` without ``trust_remote_code`` builds dense layers, finds none of their weights (the file
holds ``<layer>.down.weight`` / ``<layer>.up.weight``) and leaves them randomly initialised: transformers only warns.

A model that was first structurally pruned (``hfcompress_structure``, `hfcompress.prune.save_structured`) and then
factorized keeps both keys (they do not overlap): the pruned shape is rebuilt first, then the pruned layers are
factorized. Its checkpoint holds both modeling files, ``modeling_hfcompress_lowrank.py`` importing
``modeling_hfcompress_pruned.py`` (`hfcompress.remote_code` composes the two). It loads with `load_lowrank`,
`load_structured` or remote code alike. The other order (factorize, then prune
structurally) is not supported: structured pruning slices ``nn.Linear`` layers and finds `LowRankLinear` pairs.
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
    shape_codes,
)
from .structure import LOWRANK_KEY

logger = logging.getLogger(__name__)



def _check_ranks(model: nn.Module, ranks: dict) -> None:
    modules = dict(model.named_modules())
    bad = []
    for name, rank in ranks.items():
        module = modules.get(name)
        if type(module).__name__ != "LowRankLinear" or module.rank != int(rank):
            bad.append(f"{name}: config says rank {rank}, the model has "
                       f"{type(module).__name__ if module is not None else 'no such module'}"
                       f"{f' of rank {module.rank}' if hasattr(module, 'rank') else ''}")
    if bad:
        raise UserInputError(f"config.{LOWRANK_KEY} does not describe the model's layers: {'; '.join(bad[:5])}"
                             f"{' ...' if len(bad) > 5 else ''}")


def save_lowrank(model: nn.Module, directory: str, tokenizer=None, **save_kwargs) -> str:
    """Save a model factorized by `factorize` so that it reloads with `load_lowrank`, or with
    ``trust_remote_code=True`` without hfcompress. Files land under their final names only once complete (written
    in a temporary folder beside `directory`, the weights moved last); a dense or sparse checkpoint index left in
    `directory` by an earlier save is removed."""
    import transformers

    ranks = getattr(model.config, LOWRANK_KEY, None)
    if not ranks:
        raise UserInputError(f"{type(model).__name__} has no {LOWRANK_KEY} in its config: it was not factorized "
                             "(run hfcompress.lowrank.factorize first), save it with save_pretrained")
    _check_ranks(model, ranks)
    pruned = len(shape_codes(model.config)) > 1
    plain = plain_class_name(type(model).__name__)
    if not hasattr(transformers, plain):
        raise UserInputError(f"{type(model).__name__} is not a transformers model class (nor a low-rank or pruned "
                             "subclass of one): save_lowrank writes modeling code for transformers classes only")
    save_with_modeling_code(model, directory, tokenizer, **save_kwargs)
    logger.info("Saved low-rank %s (%d factorized layers%s) to %s (loads with hfcompress.lowrank.load_lowrank, or "
                "with trust_remote_code=True)", plain, len(ranks), ", structurally pruned" if pruned else "", directory)
    return directory


def is_lowrank_checkpoint(directory: str) -> bool:
    return config_records(directory, LOWRANK_KEY)


def check_saved_weights(directory: str, model: nn.Module) -> None:
    """A `UserInputError` naming the factors the checkpoint lacks, or whose saved shape differs from the rank the
    config records (keys compared across the base-model prefix, as transformers loads them)."""
    saved = saved_shapes(directory)
    prefix = getattr(model, "base_model_prefix", "") or ""
    missing, bad = [], []
    for key, tensor in model.state_dict().items():
        candidates = [key, f"{prefix}.{key}", key.removeprefix(prefix + ".")] if prefix else [key]
        found = next((k for k in candidates if k in saved), None)
        if found is None:
            if key.endswith((".down.weight", ".up.weight", ".up.bias")):
                missing.append(key)
        elif saved[found] != tuple(tensor.shape):
            bad.append(f"{found}: saved {saved[found]}, config {tuple(tensor.shape)}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} low-rank factors the config names are not saved ({', '.join(missing[:4])}"
                        f"{' ...' if len(missing) > 4 else ''})")
    if bad:
        problems.append(f"{len(bad)} saved weights do not have the shapes its config.json describes: "
                        f"{'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    if problems:
        raise UserInputError(f"{directory}: {'; '.join(problems)}. The config ({LOWRANK_KEY}"
                             f"{''.join(', ' + c.config_key for c in shape_codes(model.config) if c.config_key != LOWRANK_KEY)}) and the "
                             "weights come from different models; save them together with save_lowrank")


def load_lowrank(directory: str, model_class=None, **kwargs) -> nn.Module:
    """The low-rank model saved in `directory`, in eval mode, through hfcompress's own code (no remote code).
    `model_class` defaults to the transformers class named in config.json (another class of the family works too,
    e.g. ``transformers.BertModel`` for the encoder alone); ``kwargs`` go to `from_pretrained`. A checkpoint that
    was also structurally pruned is cut to its pruned shape first."""
    def not_found(config) -> str:
        loader = "hfcompress.load_structured" if shape_codes(config) else "from_pretrained"
        return f"not a low-rank checkpoint (load it with {loader})"

    return load_shaped(directory, LOWRANK_KEY, not_found, check_saved_weights, model_class, **kwargs)


__all__ = ["check_saved_weights", "is_lowrank_checkpoint", "load_lowrank", "save_lowrank"]
