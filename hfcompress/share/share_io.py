"""Checkpoints of models whose weights share values: small on disk, and a dense copy for any tool.

`save_shared(model, dir)` writes ``config.json`` (with ``hfcompress_weight_sharing``: k, index bits, the shared
matrices), the tokenizer, and instead of ``model.safetensors`` ``shared_model.safetensors``: every shared matrix as
its indices packed ``bits`` to an entry (4 bits for k = 16: 8 entries in 4 bytes) plus its codebook (k float32
values), every other tensor (biases, LayerNorms, the task head, unshared embeddings) as it is. `load_shared(dir)`
rebuilds the dense model, bit-identical to the one saved; a folder whose packed index widths disagree with its config
is refused before any weight is used. A model structurally pruned or factorized first keeps those config keys and is
rebuilt in that shape (`hfcompress.remote_code.shaped_class`).

`save_shared_dense(model, dir)` writes an ordinary transformers checkpoint (float32, every entry stored; any tool
loads it with ``from_pretrained``, with ``trust_remote_code=True`` when it was pruned structurally or factorized).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn

from ..arch.base import unwrap_model
from ..errors import UserInputError
from ..packed_io import (
    build_and_fill,
    packed_config,
    read_packed,
    refuse_disagreement,
    save_dense_export,
    unique_tensors,
    write_packed,
)
from ..packing import pack_bits, packed_nbytes, unpack_bits
from .sharing import SHARING_KEY

logger = logging.getLogger(__name__)

SHARED_WEIGHTS_NAME = "shared_model.safetensors"
FORMAT = "hfcompress-shared-v1"


def _shared_tensors(model: nn.Module, meta: dict) -> tuple[dict[str, torch.Tensor], dict]:
    modules = dict(model.named_modules())
    bits = int(meta["bits"])
    for name in meta["modules"]:
        if not hasattr(modules.get(name), "weight"):
            raise UserInputError(f"config.{SHARING_KEY} names {name!r}, which the model does not have")
    shared_keys = {f"{name}.weight" for name in meta["modules"]}
    tensors, packed, tied = {}, {}, {}
    for key, t, tied_to in unique_tensors(model):
        if tied_to is not None:
            tied[key] = tied_to
        elif key not in shared_keys:
            tensors[key] = t.detach().cpu().contiguous()
        else:
            values, inverse = torch.unique(t.detach().cpu().reshape(-1), return_inverse=True)
            if values.numel() > 2 ** bits:
                raise UserInputError(f"{key} holds {values.numel()} distinct values, more than {bits}-bit indices "
                                     "can address: it is not shared (train with WeightSharingCallback / "
                                     "share_weights first)")
            tensors[f"{key}.__indices"] = pack_bits(inverse, bits)
            tensors[f"{key}.__codebook"] = values.contiguous()
            packed[key] = list(t.shape)
    return tensors, {"format": FORMAT, "bits": bits, "packed": packed, "tied": tied}


def save_shared(model: nn.Module, directory: str, tokenizer=None) -> str:
    """Write the compact checkpoint of a model `share_weights` clustered (see the module docstring). The weights file
    is moved in last; a dense ``model.safetensors`` left by an earlier save is removed."""
    model = unwrap_model(model)
    meta = getattr(model.config, SHARING_KEY, None)
    if not meta:
        raise UserInputError(f"{type(model).__name__} has no {SHARING_KEY} in its config: its weights were not shared "
                             "(run hfcompress.share.share_weights or train with WeightSharingCallback first)")
    tensors, file_meta = _shared_tensors(model, meta)
    write_packed(model, directory, SHARED_WEIGHTS_NAME, tensors, file_meta, tokenizer)
    logger.info("Saved %d shared matrices (%d-bit indices + codebooks) to %s", len(file_meta["packed"]),
                file_meta["bits"], directory)
    return directory


def is_shared_checkpoint(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, SHARED_WEIGHTS_NAME))


def load_shared_state_dict(directory: str, config_meta: dict) -> dict[str, torch.Tensor]:
    """The dense tensors of `directory`'s packed file, after checking that every packed matrix's index width and
    size agree with the config's ``hfcompress_weight_sharing`` (`config_meta`)."""
    file_meta, raw = read_packed(directory, SHARED_WEIGHTS_NAME, FORMAT)
    bits = int(config_meta.get("bits", -1))
    bad = []
    if int(file_meta.get("bits", -1)) != bits:
        bad.append(f"the file's indices are {file_meta.get('bits')}-bit, the config says {bits}-bit")
    packed = file_meta.get("packed", {})
    named = {f"{m}.weight" for m in config_meta.get("modules", [])}
    if set(packed) != named:
        bad.append(f"packed matrices {sorted(set(packed) ^ named)[:4]} are in only one of the file and the config")
    for key, shape in packed.items():
        count = int(torch.tensor(shape).prod())
        indices, book = raw.get(f"{key}.__indices"), raw.get(f"{key}.__codebook")
        if indices is None or book is None:
            bad.append(f"{key}: indices or codebook missing")
        elif indices.numel() != packed_nbytes(count, bits) or book.numel() > 2 ** bits:
            bad.append(f"{key}: {indices.numel()} index bytes and {book.numel()} values for {count} weights, while "
                       f"{bits}-bit indices take {packed_nbytes(count, bits)} bytes and address {2 ** bits} values")
    refuse_disagreement(directory, SHARING_KEY, bad, "save_shared")
    state = {}
    for key, shape in packed.items():
        indices = unpack_bits(raw.pop(f"{key}.__indices"), bits, int(torch.tensor(shape).prod()))
        book = raw.pop(f"{key}.__codebook")
        if int(indices.max()) >= book.numel():
            raise UserInputError(f"{directory}: {key} has indices beyond its {book.numel()} codebook values")
        state[key] = book[indices].view(shape)
    state.update(raw)
    for key, source in file_meta.get("tied", {}).items():
        state[key] = state[source]
    return state


def load_shared(directory: str, model_class=None) -> nn.Module:
    """The model `save_shared` wrote in `directory`, dense in memory, in eval mode. `model_class` defaults to the
    transformers class config.json names (structurally pruned / low-rank shapes rebuilt from their config keys)."""
    if not is_shared_checkpoint(directory):
        raise UserInputError(f"{directory} holds no {SHARED_WEIGHTS_NAME}: not a checkpoint written by save_shared")
    config = packed_config(directory, SHARING_KEY, "the packed weights cannot be read without their index width")
    state = load_shared_state_dict(directory, getattr(config, SHARING_KEY))
    return build_and_fill(directory, config, state, model_class).eval()


def save_shared_dense(model: nn.Module, directory: str, tokenizer=None) -> str:
    """An ordinary transformers checkpoint of the shared model (every entry stored as float32): loads with
    ``from_pretrained`` (``trust_remote_code=True`` for a pruned or low-rank shape). The sharing key is left out of
    its config: the folder is a plain model."""
    return save_dense_export(model, directory, SHARING_KEY, tokenizer)
