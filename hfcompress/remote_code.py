"""One writer for checkpoints that carry their own modeling code (structurally pruned, low-rank): the model's weights
and config as transformers writes them, plus ``auto_map`` entries pointing every auto class of the family at
subclasses defined in modeling files saved beside the weights, so the folder loads with ``trust_remote_code=True``
where hfcompress is not installed. Files land under their final names only once complete (written in a temporary
folder beside the target, the weights moved last), and weight files of an earlier dense or sparse save are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

STALE_WEIGHT_FILES = ("sparse_model.safetensors", "model.safetensors.index.json")


def auto_classes(model_type: str, class_name: str) -> list[str]:
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


def class_names_to_map(model, plain_name) -> list[str]:
    """The transformers classes the saved code must define: the model's own (``plain_name`` strips hfcompress's
    subclass prefixes from a class name) and, when different, its base model's (so ``AutoModel`` loads too)."""
    import transformers

    plain = plain_name(type(model).__name__)
    base = plain_name(type(model.base_model).__name__)
    return [plain] + ([base] if base != plain and hasattr(transformers, base) else [])


def save_with_modeling_code(model, directory: str, tokenizer, class_names: list[str], class_prefix: str,
                            modeling_name: str, modeling_files: dict[str, str], **save_kwargs) -> str:
    """Save `model` to `directory` with ``auto_map`` entries ``<modeling_name>.<class_prefix><class>`` for every auto
    class of each of `class_names`, ``architectures`` set to the plain class, and `modeling_files` (file stem ->
    source) written beside the weights."""
    auto_map = {}
    for name in class_names:
        for auto in auto_classes(model.config.model_type, name):
            auto_map[auto] = f"{modeling_name}.{class_prefix}{name}"
    os.makedirs(directory, exist_ok=True)
    parent = os.path.dirname(os.path.abspath(directory))
    with tempfile.TemporaryDirectory(dir=parent, prefix=".hfc-save-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True, **save_kwargs)
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path) as fh:
            cfg = json.load(fh)
        cfg["architectures"] = [class_names[0]]
        cfg["auto_map"] = auto_map
        with open(cfg_path, "w") as fh:
            json.dump(cfg, fh, indent=2, sort_keys=True)
        for stem, source in modeling_files.items():
            with open(os.path.join(tmp, stem + ".py"), "w", encoding="utf-8") as fh:
                fh.write(source)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for stale in STALE_WEIGHT_FILES:
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
    return directory
