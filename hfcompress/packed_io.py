"""What every packed checkpoint of a below-eight-bit method shares (weight sharing's indices + codebooks,
quantization-aware training's codes + scales): one weights file of its own name beside an ordinary ``config.json``
(which records the method's key) and the tokenizer, written atomically; the model rebuilt from the config in its
recorded shape (structurally pruned, low-rank: `remote_code.shaped_class`) and filled strictly; and a dense export,
a plain transformers checkpoint without the method's key. The methods keep what differs: how a matrix is packed.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import torch
import torch.nn as nn

from .arch.base import unwrap_model
from .errors import UserInputError
from .files import atomic_path
from .remote_code import architecture_class, plain_class_name, save_with_modeling_code, shape_codes, shaped_class

STALE_DENSE_FILES = ("model.safetensors", "model.safetensors.index.json")


def unique_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, str | None]]:
    """``(key, tensor, tied_to)`` for every entry of the state dict; `tied_to` names the first key holding the same
    storage (tied weights are stored once), else None."""
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict().items():
        ident = (t.data_ptr(), tuple(t.shape))
        if t.numel() and ident in seen:
            yield key, t, seen[ident]
            continue
        if t.numel():
            seen[ident] = key
        yield key, t, None


def write_packed(model: nn.Module, directory: str, weights_name: str, tensors: dict, metadata: dict,
                 tokenizer=None) -> str:
    """``config.json`` (with whatever method key the model's config holds), the tokenizer and `tensors` as
    `weights_name` (safetensors, `metadata` as JSON under ``"hfcompress"``), moved in last; a dense weights file of an
    earlier save is removed (it would be loaded by mistake)."""
    from safetensors.torch import save_file

    model = unwrap_model(model)
    os.makedirs(directory, exist_ok=True)
    model.config.architectures = [plain_class_name(type(model).__name__)]
    model.config.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    for stale in STALE_DENSE_FILES:
        if os.path.exists(os.path.join(directory, stale)):
            os.remove(os.path.join(directory, stale))
    with atomic_path(os.path.join(directory, weights_name), suffix=".safetensors") as tmp:
        save_file(tensors, tmp, metadata={"hfcompress": json.dumps(metadata)})
    return directory


def read_packed(directory: str, weights_name: str, fmt: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of `write_packed`'s file; a file of another format is a `UserInputError`."""
    from safetensors import safe_open

    path = os.path.join(directory, weights_name)
    if not os.path.exists(path):
        raise UserInputError(f"{directory} holds no {weights_name}")
    with safe_open(path, "pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("hfcompress", "{}"))
        if meta.get("format") != fmt:
            raise UserInputError(f"{path}: unknown format {meta.get('format')!r} (expected {fmt})")
        return meta, {k: fh.get_tensor(k) for k in fh.keys()}


def refuse_disagreement(directory: str, key: str, bad: list[str], saver: str) -> None:
    """One error listing (the first four of) `bad`, the ways a folder's packed file disagrees with its config's
    `key`; nothing when `bad` is empty."""
    if bad:
        raise UserInputError(f"{directory}: the packed weights disagree with config.json's {key}: "
                             f"{'; '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}. Save config and weights together "
                             f"with {saver}")


def packed_config(directory: str, key: str, what: str):
    """The folder's transformers config, which must record `key` (`what` says what is lost without it)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    if not getattr(config, key, None):
        raise UserInputError(f"{directory}/config.json has no {key}: {what}")
    return config


def build_and_fill(directory: str, config, state: dict[str, torch.Tensor], model_class=None, prepare=None):
    """The model `config` describes (its recorded shape), `prepare(model)` applied (layers swapped before loading),
    filled strictly with `state` (tied weights may be missing)."""
    cls = shaped_class(config, architecture_class(config, directory, model_class))
    model = cls(config)
    if prepare is not None:
        prepare(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in (getattr(model, "_tied_weights_keys", None) or ())]
    if missing or unexpected:
        raise UserInputError(f"{directory}: weights do not match {type(model).__name__} (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
    return model


def save_dense_export(model: nn.Module, directory: str, key: str, tokenizer=None, state_dict=None) -> str:
    """A plain transformers checkpoint of `model` (`state_dict` if given), without the method's config `key`: loads
    with ``from_pretrained`` (``trust_remote_code=True`` for a pruned or low-rank shape)."""
    model = unwrap_model(model)
    kept = getattr(model.config, key, None)
    if kept is not None:
        delattr(model.config, key)
    extra = {} if state_dict is None else {"state_dict": state_dict}
    try:
        if shape_codes(model.config):
            save_with_modeling_code(model, directory, tokenizer, **extra)
        else:
            model.save_pretrained(directory, safe_serialization=True, **extra)
            if tokenizer is not None:
                tokenizer.save_pretrained(directory)
    finally:
        if kept is not None:
            setattr(model.config, key, kept)
    return directory
