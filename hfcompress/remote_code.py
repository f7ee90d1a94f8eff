"""Checkpoints that carry their own modeling code (structurally pruned, low-rank, or both): the weights and config as
transformers writes them, plus ``auto_map`` entries pointing every auto class of the family at subclasses defined in
modeling files saved beside the weights, so the folder loads with ``trust_remote_code=True`` where hfcompress is not
installed, and with hfcompress through the very same code (`shaped_class`, no remote code run).

A model's shape is described by config keys, one per `ShapeCode`; each names a self-contained module (torch and
transformers only) whose class factory rebuilds that shape when the model is constructed. When several apply, the
factories compose in `SHAPE_CODES` order (cut heads and neurons first, then factorize). The formats are data here,
so a method's saving code never imports another method's.

Files land under their final names only once complete (written in a temporary folder beside the target, the weights
moved last), and weight files of an earlier dense or sparse save are removed.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

STALE_WEIGHT_FILES = ("sparse_model.safetensors", "model.safetensors.index.json")


@dataclass(frozen=True)
class ShapeCode:
    config_key: str  # the config.json key that records the shape
    module: str  # the self-contained module copied beside the weights
    factory: str  # its function: transformers class -> subclass that takes the shape when built
    class_prefix: str  # the subclass names' prefix
    modeling_name: str  # the file name (stem) of the copy


SHAPE_CODES = (
    ShapeCode("hfcompress_structure", "hfcompress.prune.structure", "pruned_class", "HfcPruned",
              "modeling_hfcompress_pruned"),
    ShapeCode("hfcompress_lowrank", "hfcompress.lowrank.structure", "lowrank_class", "HfcLowRank",
              "modeling_hfcompress_lowrank"),
)


def shape_codes(config) -> list[ShapeCode]:
    """The shapes `config` (a transformers config or config.json as a dict) records, in build order."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    return [code for code in SHAPE_CODES if get(code.config_key)]


def config_records(directory: str, key: str) -> bool:
    """Whether ``<directory>/config.json`` exists and records `key` (a checkpoint format's marker)."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        return False
    with open(path) as fh:
        return bool(json.load(fh).get(key))


def plain_class_name(name: str) -> str:
    """The transformers class name under hfcompress's subclass prefixes (``HfcLowRankHfcPrunedBertModel`` ->
    ``BertModel``)."""
    prefixes = tuple(code.class_prefix for code in SHAPE_CODES)
    while name.startswith(prefixes):
        for prefix in prefixes:
            name = name.removeprefix(prefix)
    return name


def accept_in_pipelines(cls: type) -> type:
    """Let transformers' pipelines take `cls` (a subclass hfcompress built) wherever they take the transformers class it
    derives from, without logging that the model is not supported: its name joins the pipelines' lists of class names
    (``MODEL_FOR_..._MAPPING_NAMES``) under a model type no config has, so no auto class ever resolves to it. Written
    into saved modeling code too (`modeling_files`), so it holds with ``trust_remote_code=True`` alone."""
    try:
        from transformers.models.auto import modeling_auto
    except ImportError:  # a transformers without these tables: pipelines may log, nothing else changes
        return cls
    plain = next((c.__name__ for c in cls.__mro__[1:] if not c.__name__.startswith("Hfc")), None)
    for attr in dir(modeling_auto):
        names = getattr(modeling_auto, attr)
        if not (attr.startswith("MODEL_FOR_") and attr.endswith("_MAPPING_NAMES") and isinstance(names, dict)):
            continue
        if any(v == plain or (isinstance(v, (list, tuple)) and plain in v) for v in names.values()):
            names.setdefault(f"hfcompress-{cls.__name__}", cls.__name__)
    return cls


def shaped_class(config, base: type) -> type:
    """`base` (a transformers class) wrapped by the factory of every shape `config` records, in build order."""
    cls = base
    for code in shape_codes(config):
        cls = getattr(importlib.import_module(code.module), code.factory)(cls)
    return accept_in_pipelines(cls) if cls is not base else cls


def saved_shapes(directory: str) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in the checkpoint's safetensors files, read from their headers."""
    from safetensors import safe_open

    shapes = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        with safe_open(path, "pt") as fh:
            for key in fh.keys():
                shapes[key] = tuple(fh.get_slice(key).get_shape())
    return shapes


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


def class_names_to_map(model) -> list[str]:
    """The transformers classes the saved code must define: the model's own and, when different, its base model's
    (so ``AutoModel`` loads too)."""
    import transformers

    plain = plain_class_name(type(model).__name__)
    base = plain_class_name(type(model.base_model).__name__)
    return [plain] + ([base] if base != plain and hasattr(transformers, base) else [])


def modeling_files(codes: list[ShapeCode], class_names: list[str]) -> dict[str, str]:
    """File stem -> source: a copy of each shape's module; the last one also defines the classes ``auto_map`` names,
    composing the factories of all of them (importing the earlier ones from their copies)."""
    files = {}
    for code in codes:
        with open(importlib.import_module(code.module).__file__, encoding="utf-8") as fh:
            files[code.modeling_name] = fh.read()
    last = codes[-1]
    lines = ["", "", "# --- written by hfcompress: the classes config.json's auto_map names ---", "import transformers"]
    lines += [f"from .{code.modeling_name} import {code.factory}" for code in codes[:-1]]
    lines += ["", "", inspect.getsource(accept_in_pipelines), ""]
    for name in class_names:
        built = f"transformers.{name}"
        for code in codes:
            built = f"{code.factory}({built})"
        lines.append(f"{last.class_prefix}{name} = accept_in_pipelines({built})")
    files[last.modeling_name] += "\n".join(lines) + "\n"
    return files


def save_with_modeling_code(model, directory: str, tokenizer=None, **save_kwargs) -> str:
    """Save `model`, whose config records one or more shapes (`SHAPE_CODES`), to `directory` with the modeling files
    that rebuild it, ``auto_map`` entries for every auto class of its family and ``architectures`` set to the plain
    transformers class."""
    codes = shape_codes(model.config)
    if not codes:
        raise ValueError(f"{type(model).__name__}'s config records none of "
                         f"{', '.join(c.config_key for c in SHAPE_CODES)}: save it with save_pretrained")
    class_names = class_names_to_map(model)
    last = codes[-1]
    auto_map = {}
    for name in class_names:
        for auto in auto_classes(model.config.model_type, name):
            auto_map[auto] = f"{last.modeling_name}.{last.class_prefix}{name}"
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
        for stem, source in modeling_files(codes, class_names).items():
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


def architecture_class(config, directory: str, model_class=None) -> type:
    """The plain transformers class to build: `model_class` (hfcompress prefixes stripped) or the one config.json's
    ``architectures`` names; a `UserInputError` when neither names a transformers class."""
    import transformers

    from .errors import UserInputError

    if model_class is not None:
        return getattr(transformers, plain_class_name(model_class.__name__), model_class)
    archs = getattr(config, "architectures", None) or []
    name = plain_class_name(archs[0]) if archs else None
    if not name or not hasattr(transformers, name):
        raise UserInputError(f"{directory}/config.json names no known architecture ({archs}); pass model_class")
    return getattr(transformers, name)


def load_shaped(directory: str, key: str, not_found: str, check_weights, model_class=None, **kwargs):
    """A checkpoint whose config records the shape `key`, through hfcompress's own code (no remote code), in eval
    mode: the plain class (`architecture_class`) wrapped by `shaped_class`, built on the meta device first so that
    ``check_weights(directory, probe)`` compares the saved tensors with the shapes the config describes before any
    weight is read. ``kwargs`` that are config attributes (``num_labels``, ``id2label``, ...) override the config;
    the rest go to ``from_pretrained``. `not_found`: the error when the config does not record `key` (or a function
    of the config giving it)."""
    import torch
    from transformers import AutoConfig

    from .errors import UserInputError

    config = AutoConfig.from_pretrained(directory)
    for name in [k for k in kwargs if hasattr(config, k)]:
        setattr(config, name, kwargs.pop(name))
    if not getattr(config, key, None):
        raise UserInputError(f"{directory}/config.json has no {key}: "
                             f"{not_found(config) if callable(not_found) else not_found}")
    cls = shaped_class(config, architecture_class(config, directory, model_class))
    try:
        with torch.device("meta"):
            probe = cls(config)
    except ValueError as exc:
        raise UserInputError(f"{directory}: {exc}") from exc
    check_weights(directory, probe)
    return cls.from_pretrained(directory, config=config, **kwargs).eval()
