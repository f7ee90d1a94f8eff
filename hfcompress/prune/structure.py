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
                                             "position_bias": null, "heads": [0, 3, 7]}],   # kept, original index
                             "ffn": {"up": "intermediate.dense", "down": "output.dense", "size": 768}}]}]}
"""

from __future__ import annotations

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
    """Keep only `heads` (original indices, sorted) of one attention: q/k/v rows, output-projection columns, and the
    attention module's head count / width attributes."""
    module = _get(block, spec["module"])
    d = int(spec["head_dim"])
    index = torch.tensor([h * d + j for h in heads for j in range(d)], dtype=torch.long)
    for key in ("q", "k", "v"):
        _set(block, spec[key], slice_linear(_get(block, spec[key]), index, 0))
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
    """Keep only the feed-forward neurons in `index`: rows of the up projection, columns of the down projection."""
    _set(block, spec["up"], slice_linear(_get(block, spec["up"]), index, 0))
    _set(block, spec["down"], slice_linear(_get(block, spec["down"]), index, 1))


def remove_layers(model: nn.Module, stack: dict, keep: list[int]) -> None:
    """Drop the blocks of one stack not in `keep` (original indices) and renumber the rest (their `layer_idx`, used
    by caches, follows the new order); the config's layer count follows."""
    layers = _get(model.base_model, stack["layers"])
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
        for b, (block, block_spec) in enumerate(zip(layers, stack["blocks"])):
            for att in block_spec["attentions"]:
                shrink_attention(block, att, list(att["heads"]))
            ffn = block_spec["ffn"]
            index = (ffn_index or {}).get((s, b))
            if index is None:
                index = torch.arange(int(ffn["size"]))
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
