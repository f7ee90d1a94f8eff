"""Checkpoints of unstructured-sparse models that are small on disk.

`save_sparse(model, dir)` writes the usual `config.json` (and the tokenizer, if given) and, instead of
`model.safetensors`, `sparse_model.safetensors`: every matrix with at least `min_sparsity` zeros is stored as a
packed bit mask (1 bit per entry) plus its non-zero values; everything else dense. At 10% density a float32 matrix
takes 0.1 * 4 + 1/8 bytes per entry instead of 4 (13%). `load_sparse(dir)` rebuilds the dense model, bit-identical.

Which loader a user needs: the compact folder needs hfcompress (`hfcompress.load_sparse`); `save_dense` writes a
plain transformers checkpoint (zeros stored explicitly, full size) that any tool loads with `from_pretrained`.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

SPARSE_WEIGHTS_NAME = "sparse_model.safetensors"
FORMAT = "hfcompress-bitmask-v1"


def _pack(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = t.detach().cpu().contiguous().reshape(-1)
    nz = flat != 0
    bits = torch.from_numpy(np.packbits(nz.numpy()))
    return bits, flat[nz].clone()


def _unpack(bits: torch.Tensor, values: torch.Tensor, shape: list[int]) -> torch.Tensor:
    n = int(np.prod(shape))
    nz = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool))
    out = torch.zeros(n, dtype=values.dtype)
    out[nz] = values
    return out.view(shape)


def sparse_state_dict(model: nn.Module, min_sparsity: float = 0.3) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors to write and the format's metadata (which names are packed, their shapes)."""
    state = model.state_dict()
    seen: dict[tuple, str] = {}
    tensors, packed, tied = {}, {}, {}
    for name, t in state.items():
        key = (t.data_ptr(), tuple(t.shape))
        if t.numel() and key in seen:  # tied weights (e.g. decoder and word embeddings): store once
            tied[name] = seen[key]
            continue
        if t.numel():
            seen[key] = name
        zeros = float((t == 0).float().mean()) if t.is_floating_point() and t.dim() >= 2 else 0.0
        if zeros >= min_sparsity:
            bits, values = _pack(t)
            tensors[f"{name}.__bitmask"] = bits
            tensors[f"{name}.__values"] = values
            packed[name] = list(t.shape)
        else:
            tensors[name] = t.detach().cpu().contiguous()
    return tensors, {"format": FORMAT, "packed": packed, "tied": tied}


def save_sparse(model: nn.Module, directory: str, tokenizer=None, min_sparsity: float = 0.3) -> str:
    """Write the compact checkpoint (see the module doc). Returns the folder."""
    os.makedirs(directory, exist_ok=True)
    tensors, meta = sparse_state_dict(model, min_sparsity)
    tmp = os.path.join(directory, SPARSE_WEIGHTS_NAME + ".tmp")
    save_file(tensors, tmp, metadata={"hfcompress": json.dumps(meta)})
    os.replace(tmp, os.path.join(directory, SPARSE_WEIGHTS_NAME))  # never a half-written file under the real name
    model.config.architectures = [type(model).__name__]  # as save_pretrained records it
    model.config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    stale = os.path.join(directory, "model.safetensors")
    if os.path.exists(stale):
        os.remove(stale)  # a dense file left from an earlier save would be loaded by mistake
    logger.info("Saved %d packed sparse matrices to %s", len(meta["packed"]), directory)
    return directory


def load_sparse_state_dict(directory: str) -> dict[str, torch.Tensor]:
    path = os.path.join(directory, SPARSE_WEIGHTS_NAME)
    with safe_open(path, "pt") as fh:
        meta = json.loads(fh.metadata()["hfcompress"])
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown sparse format {meta.get('format')!r} (expected {FORMAT})")
        raw = {k: fh.get_tensor(k) for k in fh.keys()}
    state = {}
    for name, shape in meta["packed"].items():
        state[name] = _unpack(raw.pop(f"{name}.__bitmask"), raw.pop(f"{name}.__values"), shape)
    state.update(raw)
    for name, source in meta["tied"].items():
        state[name] = state[source]
    return state


def is_sparse_checkpoint(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, SPARSE_WEIGHTS_NAME))


def load_sparse(directory: str, model_class=None, **config_kwargs) -> nn.Module:
    """The model saved by `save_sparse`, dense in memory, in eval mode. `model_class` defaults to the class named in
    `config.json` (`architectures[0]`)."""
    import transformers
    from transformers import AutoConfig

    if not is_sparse_checkpoint(directory):
        raise FileNotFoundError(f"{directory} holds no {SPARSE_WEIGHTS_NAME}: not a checkpoint written by save_sparse "
                                "(a dense checkpoint loads with from_pretrained)")
    config = AutoConfig.from_pretrained(directory, **config_kwargs)
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        if not archs or not hasattr(transformers, archs[0]):
            raise ValueError(f"{directory}/config.json names no known architecture ({archs}); pass model_class")
        model_class = getattr(transformers, archs[0])
    model = model_class(config) if not hasattr(model_class, "from_config") else model_class.from_config(config)
    state = load_sparse_state_dict(directory)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in (getattr(model, "_tied_weights_keys", None) or ())]
    if missing or unexpected:
        raise ValueError(f"{directory}: weights do not match {type(model).__name__} (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model.eval()


def save_dense(model: nn.Module, directory: str, tokenizer=None) -> str:
    """A plain transformers checkpoint (any tool loads it with `from_pretrained`): zeros stored explicitly."""
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory

