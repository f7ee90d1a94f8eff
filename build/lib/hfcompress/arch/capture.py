"""Recording the query/key/value projections of chosen blocks during a forward pass (forward hooks).

Works with any attention implementation (eager, sdpa, flash): the hooks sit on the projection `nn.Linear`s, not on
the attention kernel. A fused projection (ModernBERT's ``Wqkv``) is hooked once and its output split into queries,
keys and values (`ArchAdapter.qkv_chunks`); those are the projections' outputs, before any rotary embedding.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import get_adapter, unwrap_model


class QKVCapture:
    """Forward hooks on the query, key and value projections of `blocks` (1-based) of `model`.

    While `enabled`, each forward stores ``outputs[block] = (q, k, v)``, each `[B, T, D]` as the projection returned
    it (autograd graph kept, so a loss on them trains the model). Use as a context manager for one forward (hooks
    removed on exit)::

        with QKVCapture(teacher, [12]) as cap:
            teacher(**batch)
        q, k, v = cap.outputs[12]

    or keep it attached (`remove()` when done), toggling `enabled` and calling `pop()` after each forward.
    """

    def __init__(self, model: nn.Module, blocks, enabled: bool = True):
        model = unwrap_model(model)
        adapter = get_adapter(model)
        self.blocks = sorted(set(int(b) for b in blocks))
        self.enabled = enabled
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._partial: dict[int, list] = {}
        self._handles = []
        chunks = adapter.qkv_chunks()
        for block in self.blocks:
            hooked: dict[int, list] = {}
            for slot, module in enumerate(adapter.qkv_modules(model, block)):
                hooked.setdefault(id(module), [module, []])[1].append((slot, *chunks[slot]))
            for module, slots in hooked.values():
                self._handles.append(module.register_forward_hook(self._hook(block, slots)))

    def _hook(self, block: int, slots: list[tuple[int, int, int]]):
        def hook(module, args, output):
            if not self.enabled:
                return
            parts = self._partial.setdefault(block, [None, None, None])
            for slot, chunk, chunks in slots:
                parts[slot] = output if chunks == 1 else output.chunk(chunks, dim=-1)[chunk]
            if all(p is not None for p in parts):
                self.outputs[block] = tuple(parts)
                del self._partial[block]

        return hook

    def pop(self) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The recorded outputs, which are then forgotten here."""
        out, self.outputs, self._partial = self.outputs, {}, {}
        return out

    def clear(self) -> None:
        self.outputs, self._partial = {}, {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> "QKVCapture":
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
