"""The shape of a structurally pruned model, and the code that gives a model that shape.

A structurally pruned model has, per block, fewer attention heads (uneven across blocks), a narrower feed-forward
layer, and possibly fewer blocks. `config.json` cannot say that with the family's own keys, so the shape is stored
in the config under ``hfcompress_structure`` (a JSON "spec", below), and `apply_structure` cuts a freshly built
model of the family to that shape before its weights are loaded.

This file is self-contained on purpose (torch and transformers only): `save_structured` copies it beside the
weights as the checkpoint's modeling code, so the checkpoint loads with ``trust_remote_code=True`` where hfcompress
is not installed, through the very code hfcompress itself uses.

Spec (all paths relative to ``model.base_model``)::

    {"version": 1,
     "stacks": [{"layers": "encoder.layer", "num_layers_key": "num_hidden_layers",
                 "removed_layers": [4],                       # original indices of blocks removed (record only)
                 "blocks": [{"attentions": [{"module": "attention.self", "q": ..., "k": ..., "v": ..., "o": ...,
                                             "count_attrs": ["num_attention_heads"], "width_attrs": ["all_head_size"],
                                             "head_dim_attr": "attention_head_size", "head_dim": 32,
                                             "position_bias": null, "heads": [0, 3, 7],     # kept, original index
                                             "producers": [["attention.self.query", 1], ...]}],
                             "ffn": {"up": "intermediate.dense", "down": "output.dense", "size": 768,
                                     "up_chunks": 1}}],
                 "layer_types_key": null, "first_block": []}]}

``producers`` (optional; default q, k, v with one chunk each): every projection whose output rows hold the heads, as
``[path, chunks]``: its rows are `chunks` equal parts and a head is ``head_dim`` rows of each (ModernBERT's fused
``Wqkv``: ``[["attn.Wqkv", 3]]``; DeBERTa adds ``pos_key_proj`` / ``pos_query_proj`` where built). ``up_chunks``
likewise for a neuron of a gated FFN (ModernBERT's ``Wi``: input half and gate half, 2). ``layer_types_key``: the
config list with one entry per block, kept for the kept blocks (written by the pruner; the saved config already holds
the kept entries). ``first_block``: ``[path, template]`` pairs for a first block that was not block 0: the family
builds `nn.Identity` there in block 0 only, so the reload puts a copy of the block's `template` module in its place.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

STRUCTURE_KEY = "hfcompress_structure"
SPEC_VERSION = 1


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    head, _, last = path.rpartition(".")
    setattr(_get(module, head) if head else module, last, value)


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new `nn.Linear` keeping the output rows (`dim` 0, bias too) or input columns (`dim` 1) listed in `index`,
    on the same device and dtype (also on the meta device, where a model is built before its weights load)."""
    w = linear.weight
    index = index.to(w.device) if w.device.type != "meta" else index.to("meta")
    out_f, in_f = (len(index), linear.in_features) if dim == 0 else (linear.out_features, len(index))
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w.index_select(dim, index))
        if linear.bias is not None:
            new.bias.copy_(linear.bias if dim == 1 else linear.bias.index_select(0, index))
    new.weight.requires_grad_(w.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def member_rows(members, width: int, chunks: int, rows: int) -> torch.Tensor:
    """Row indices of `members` (each `width` consecutive rows) in every one of `chunks` equal parts of `rows` rows."""
    per_chunk = rows // chunks
    return torch.tensor([c * per_chunk + int(m) * width + j for c in range(chunks) for m in members
                         for j in range(width)], dtype=torch.long, device="cpu")


def _producers(spec: dict) -> list[tuple[str, int]]:
    return [(p, int(c)) for p, c in spec.get("producers") or [(spec["q"], 1), (spec["k"], 1), (spec["v"], 1)]]


def _slice_position_bias(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook: a per-head bias computed for all heads, cut to this attention's kept heads."""
    name, position = module._hfc_position_bias
    heads = module._hfc_heads  # a tuple, not a tensor: the model may be built on the meta device
    if len(args) > position and args[position] is not None:
        bias = args[position]
        args = (*args[:position], bias[:, list(heads)], *args[position + 1:])
    elif kwargs.get(name) is not None:
        kwargs[name] = kwargs[name][:, list(heads)]
    return args, kwargs


def shrink_attention(block: nn.Module, spec: dict, heads: list[int]) -> None:
    """Keep only `heads` (original indices, sorted) of one attention: the rows of its q/k/v (and other per-head)
    projections, output-projection columns, and the attention module's head count / width attributes."""
    module = _get(block, spec["module"])
    d = int(spec["head_dim"])
    for path, chunks in _producers(spec):
        linear = _get(block, path)
        _set(block, path, slice_linear(linear, member_rows(heads, d, chunks, linear.out_features), 0))
    index = member_rows(heads, d, 1, _get(block, spec["o"]).in_features)
    _set(block, spec["o"], slice_linear(_get(block, spec["o"]), index, 1))
    for attr in spec["count_attrs"]:
        setattr(module, attr, len(heads))
    for attr in spec.get("width_attrs", ()):
        setattr(module, attr, len(heads) * d)
    if spec.get("position_bias"):
        module._hfc_heads = tuple(int(h) for h in heads)
        if not getattr(module, "_hfc_position_bias", None):
            module.register_forward_pre_hook(_slice_position_bias, with_kwargs=True)
        module._hfc_position_bias = tuple(spec["position_bias"])


def shrink_ffn(block: nn.Module, spec: dict, index: torch.Tensor) -> None:
    """Keep only the feed-forward neurons in `index`: rows of the up projection (of each of its ``up_chunks`` parts),
    columns of the down projection."""
    up = _get(block, spec["up"])
    _set(block, spec["up"], slice_linear(up, member_rows(index.tolist(), 1, int(spec.get("up_chunks", 1)),
                                                         up.out_features), 0))
    _set(block, spec["down"], slice_linear(_get(block, spec["down"]), index, 1))


def remove_layers(model: nn.Module, stack: dict, keep: list[int]) -> None:
    """Drop the blocks of one stack not in `keep` (original indices) and renumber the rest (their `layer_idx`, used
    by caches, follows the new order); the config's layer count follows, and so does its per-block list
    (``layer_types_key``) where the stack has one."""
    layers = _get(model.base_model, stack["layers"])
    if stack.get("layer_types_key"):
        types = list(getattr(model.config, stack["layer_types_key"]))
        setattr(model.config, stack["layer_types_key"], [types[i] for i in keep])
    kept = nn.ModuleList([layers[i] for i in keep])
    for new_index, block in enumerate(kept):
        for sub in block.modules():
            if hasattr(sub, "layer_idx") and isinstance(sub.layer_idx, int):
                sub.layer_idx = new_index
    _set(model.base_model, stack["layers"], kept)
    setattr(model.config, stack["num_layers_key"], len(kept))


def apply_structure(model: nn.Module, spec: dict, ffn_index: dict | None = None) -> nn.Module:
    """Cut `model` (of the family the spec was written for, with the spec's number of blocks) to the spec's shape.

    Heads are kept by their original indices (the spec lists them). Neurons: `ffn_index[(stack, block)]` gives which
    to keep when the weights are real (pruning); when the model is only being built to receive saved weights
    (`ffn_index` None), the first ``size`` are kept, whose values the checkpoint then replaces. Records the spec in
    ``model.config.hfcompress_structure``."""
    if int(spec.get("version", 0)) != SPEC_VERSION:
        raise ValueError(f"{STRUCTURE_KEY}: unknown version {spec.get('version')!r} (this code reads {SPEC_VERSION})")
    for s, stack in enumerate(spec["stacks"]):
        layers = _get(model.base_model, stack["layers"])
        if len(layers) != len(stack["blocks"]):
            raise ValueError(f"{STRUCTURE_KEY}: {stack['layers']} has {len(layers)} blocks but the spec describes "
                             f"{len(stack['blocks'])} (config {stack['num_layers_key']} = "
                             f"{getattr(model.config, stack['num_layers_key'], None)})")
        for path, template in stack.get("first_block") or ():
            if layers and isinstance(_get(layers[0], path), nn.Identity):
                _set(layers[0], path, copy.deepcopy(_get(layers[0], template)))
        for b, (block, block_spec) in enumerate(zip(layers, stack["blocks"])):
            for att in block_spec["attentions"]:
                shrink_attention(block, att, list(att["heads"]))
            ffn = block_spec["ffn"]
            index = (ffn_index or {}).get((s, b))
            if index is None:
                index = torch.arange(int(ffn["size"]), device="cpu")
            elif len(index) != int(ffn["size"]):
                raise ValueError(f"stack {s} block {b}: {len(index)} neurons to keep but the spec says {ffn['size']}")
            shrink_ffn(block, ffn, index)
    setattr(model.config, STRUCTURE_KEY, spec)
    return model


def pruned_class(base: type) -> type:
    """A subclass of the transformers class `base` that cuts itself to ``config.hfcompress_structure`` when built,
    so that `from_pretrained` finds parameters of the saved shapes."""

    if base.__name__.startswith("HfcPruned"):
        return base

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        spec = getattr(config, STRUCTURE_KEY, None)
        if spec:
            apply_structure(self, spec)

    return type("HfcPruned" + base.__name__, (base,), {"__init__": __init__, "__module__": __name__, "__doc__": pruned_class.__doc__})
