"""Saving and loading structurally pruned models.

`save_structured` writes a normal transformers checkpoint (safetensors + config.json) whose config also records the
pruned shape (``hfcompress_structure``) and maps the auto classes to ``modeling_hfcompress_pruned.py``, a copy of
`hfcompress/prune/structure.py` saved beside the weights. So the checkpoint loads:

* with hfcompress: ``load_structured(path)`` (no remote code is run);
* without hfcompress: ``AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)`` or
  ``pipeline("text-classification", model=path, trust_remote_code=True)``; the saved file needs torch and
  transformers only.

A plain ``from_pretrained`` without ``trust_remote_code`` cannot work: the family's own code builds every block at the
config's full width.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import tempfile

import torch
import torch.nn as nn
from safetensors import safe_open

from ..errors import UserInputError
from . import structure
from .structure import STRUCTURE_KEY, pruned_class

logger = logging.getLogger(__name__)

MODELING_NAME = "modeling_hfcompress_pruned"


def _auto_classes(model_type: str, class_name: str) -> list[str]:
    """The transformers auto classes (``AutoModelForSequenceClassification``, ...) that map `model_type` to
    `class_name`."""
    import transformers

    names = []
    for attr in dir(transformers):
        if not attr.startswith("AutoModel"):
            continue
        mapping = getattr(getattr(transformers, attr), "_model_mapping", None)
        table = getattr(mapping, "_model_mapping", None)
        if isinstance(table, dict):
            value = table.get(model_type)
            if value == class_name or (isinstance(value, (list, tuple)) and class_name in value):
                names.append(attr)
    return names


def _plain_class_name(model: nn.Module) -> str:
    return type(model).__name__.removeprefix("HfcPruned")


def modeling_code(class_names: list[str]) -> str:
    """The checkpoint's modeling file: `structure.py` itself plus one pruned subclass per transformers class."""
    with open(structure.__file__, encoding="utf-8") as fh:
        source = fh.read()
    lines = ["", "", "# --- written by hfcompress.save_structured: the classes config.json's auto_map names ---",
             "import transformers", ""]
    for name in class_names:
        lines.append(f"HfcPruned{name} = pruned_class(transformers.{name})")
    return source + "\n".join(lines) + "\n"


def save_structured(model: nn.Module, directory: str, tokenizer=None, **save_kwargs) -> str:
    """Save a model whose structure was cut by `StructuredPruner.fold` (or `apply_structure`). Files land under their
    final names only once complete; a dense or sparse checkpoint left in `directory` by an earlier save is removed."""
    import transformers

    spec = getattr(model.config, STRUCTURE_KEY, None)
    if not spec:
        raise ValueError(f"{type(model).__name__} has no {STRUCTURE_KEY} in its config: it was not structurally "
                         "pruned (fold the StructuredPruner first), save it with save_pretrained")
    plain = _plain_class_name(model)
    base_name = type(model.base_model).__name__.removeprefix("HfcPruned")
    class_names = [plain] + ([base_name] if base_name != plain and hasattr(transformers, base_name) else [])
    auto_map = {}
    for name in class_names:
        for auto in _auto_classes(model.config.model_type, name):
            auto_map[auto] = f"{MODELING_NAME}.HfcPruned{name}"
    os.makedirs(directory, exist_ok=True)
    parent = os.path.dirname(os.path.abspath(directory))
    with tempfile.TemporaryDirectory(dir=parent, prefix=".hfc-save-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **save_kwargs)
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path) as fh:
            cfg = json.load(fh)
        cfg["architectures"] = [plain]
        cfg["auto_map"] = auto_map
        with open(cfg_path, "w") as fh:
            json.dump(cfg, fh, indent=2, sort_keys=True)
        with open(os.path.join(tmp, MODELING_NAME + ".py"), "w", encoding="utf-8") as fh:
            fh.write(modeling_code(class_names))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for stale in ("sparse_model.safetensors", "model.safetensors.index.json"):
            path = os.path.join(directory, stale)
            if os.path.exists(path):
                os.remove(path)
        weights = [f for f in os.listdir(tmp) if f.endswith(".safetensors")]
        for name in sorted(os.listdir(tmp), key=lambda f: f in weights):  # weights last
            src = os.path.join(tmp, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(directory, name), dirs_exist_ok=True)
            else:
                os.replace(src, os.path.join(directory, name))
    logger.info("Saved structurally pruned %s to %s (loads with hfcompress.load_structured, or with "
                "trust_remote_code=True)", plain, directory)
    return directory


def is_structured_checkpoint(directory: str) -> bool:
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        return False
    with open(path) as fh:
        return bool(json.load(fh).get(STRUCTURE_KEY))


def _saved_shapes(directory: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        with safe_open(path, "pt") as fh:
            for key in fh.keys():
                shapes[key] = tuple(fh.get_slice(key).get_shape())
    return shapes


def check_saved_shapes(directory: str, model: nn.Module) -> None:
    """A `UserInputError` naming the tensors whose saved shape differs from the shape the config describes."""
    saved = _saved_shapes(directory)
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
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    for key in [k for k in kwargs if hasattr(config, k)]:  # config overrides (num_labels, id2label, ...)
        setattr(config, key, kwargs.pop(key))
    spec = getattr(config, STRUCTURE_KEY, None)
    if not spec:
        raise UserInputError(f"{directory}/config.json has no {STRUCTURE_KEY}: not a structurally pruned checkpoint "
                             "(load it with from_pretrained)")
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        name = archs[0].removeprefix("HfcPruned") if archs else None
        if not name or not hasattr(transformers, name):
            raise UserInputError(f"{directory}/config.json names no known architecture ({archs}); pass model_class")
        model_class = getattr(transformers, name)
    cls = pruned_class(model_class)
    try:
        with torch.device("meta"):
            probe = cls(config)
    except ValueError as exc:
        raise UserInputError(f"{directory}: {exc}") from exc
    check_saved_shapes(directory, probe)
    return cls.from_pretrained(directory, config=config, **kwargs).eval()
