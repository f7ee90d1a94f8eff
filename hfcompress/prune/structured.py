"""`StructuredPruner`: attention heads, feed-forward neurons and blocks, pruned during training and cut out at the end.

Same loop contract as `Pruner` (the `PruningCallback` drives either)::

    pruner.before_optimizer_step()   # this step's head/neuron scores (all processes reduced)
    optimizer.step()
    pruner.step(global_step)         # new target on the schedule -> new head/neuron masks
    ...
    pruner.fold()                    # heads, neurons (and emptied blocks) physically removed

While training, a removed head is masked where its output enters the model: its columns of the attention's output
projection (a removed neuron: its column of the down projection). The model's output is then exactly that of the
model with the head cut out, which `fold` makes true (`structure.apply_structure`). A block removed with
`allow_layer_removal` is skipped (its input passes through) from the moment it is emptied.

Taylor scores come from one hook per group: the input ``x`` of the output projection (the heads' concatenated
outputs, or the neurons' activations) and its gradient ``g``. Per example, ``c = sum over tokens and the head's dims
of x * g`` is the first-order change of the loss if the head were removed (Michel et al. 2019, without head masks).

Block movement scores (``movement``; nn_pruning's hybrid pruning, Lagunas et al. 2021, with a block = one head's
output-projection columns, or one neuron's down-projection column) are trained like Sanh et al.'s ``mask_scores``,
one score per block: ``dL/dS = sum over the block of dL/dW' * W`` (``W'`` the masked weight: a removed block keeps
its gradient and can come back), an AdamW step per optimizer step (`ScoreAdam`, rate `score_learning_rate` on the
weights' schedule, after their clipping), the top blocks kept on the cubic schedule.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..arch import get_adapter, get_submodule, unwrap_model
from ..errors import UserInputError
from .config import PruningConfig
from .masks import expand_group_mask, mask_module, topk_mask, unmask_module
from .pruner import SCORE_RULE, ScheduledPruner, ScoreAdam, clip_factor, mean_over_processes
from .schedule import CubicSchedule
from .structure import SPEC_VERSION, apply_structure, remove_layers

logger = logging.getLogger(__name__)


@dataclass
class _Group:
    """The heads of one attention, or the neurons of one feed-forward layer, of one block."""

    kind: str  # "heads" | "neurons"
    stack: int
    block: int
    attention: int | None
    consumer: nn.Linear  # output projection / down projection: a group member is `width` of its input columns
    producers: list[tuple[nn.Linear, int]]  # (q/k/v / up projection, chunks): a member is `width` rows of each chunk
    size: int
    width: int
    mask: torch.Tensor = None
    score: torch.Tensor = None
    pending: torch.Tensor | None = None  # [2, size]: sum |c| and sum c over this step's examples
    hook: object = None

    @property
    def key(self) -> str:
        return f"{self.kind}.{self.stack}.{self.block}" + ("" if self.attention is None else f".{self.attention}")

    @property
    def layer(self) -> tuple[int, int]:
        return self.stack, self.block

    def cost(self) -> int:
        """Parameters removed with one member: its producer rows (and biases) and consumer columns."""
        rows = sum(chunks * self.width * (p.in_features + (p.bias is not None)) for p, chunks in self.producers)
        return rows + self.width * self.consumer.out_features


def _skip_block(module, args, kwargs, output):
    """Forward hook of a removed block: its input passes through unchanged (as if the block were gone)."""
    if not getattr(module, "_hfc_skip", False):
        return output
    hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


def _chosen_stacks(stacks, names: list[str], model_name: str) -> tuple:
    """The stacks `names` choose (a stack's path, ``decoder.layers``, or its first part, ``decoder``)."""
    known = {s.layers_path: s for s in stacks}
    short = {s.layers_path.split(".")[0]: s for s in stacks}
    unknown = [n for n in names if n not in known and n not in short]
    if unknown:
        raise UserInputError(f"structured_stacks {unknown}: {model_name} has the stacks "
                             f"{', '.join(repr(p) for p in known)} (or by first part: "
                             f"{', '.join(repr(p) for p in short)})")
    chosen = {id(known.get(n) or short[n]) for n in names}
    return tuple(s for s in stacks if id(s) in chosen)


class StructuredPruner(ScheduledPruner):
    """Heads and neurons of every block of the model's stacks (from its architecture adapter)."""

    def __init__(self, model: nn.Module, config: PruningConfig):
        if not config.structured:
            raise ValueError("StructuredPruner needs a PruningConfig with granularity='structured'")
        self.config = config
        self.model = unwrap_model(model)
        self.adapter = get_adapter(self.model)
        self.stacks = self.adapter.structure(getattr(self.model.config, "model_type", None), self.model)
        if self.adapter.check_model is not None:
            self.adapter.check_model(self.model)
        if config.stack_list:
            self.stacks = _chosen_stacks(self.stacks, config.stack_list, type(self.model).__name__)
        self.groups: list[_Group] = []
        self.blocks: dict[tuple[int, int], nn.Module] = {}
        self.num_blocks: list[int] = []  # per stack, before any block is removed
        for s, stack in enumerate(self.stacks):
            layers = get_submodule(self.model.base_model, stack.layers_path)
            self.num_blocks.append(len(layers))
            for b, block in enumerate(layers):
                self.blocks[(s, b)] = block
                for a, att in enumerate(stack.attentions):
                    module = get_submodule(block, att.module)
                    d = int(getattr(module, att.head_dim_attr))
                    o = get_submodule(block, att.o)
                    producers = [(get_submodule(block, p), chunks) for p, chunks in att.producers(block)]
                    self.groups.append(_Group("heads", s, b, a, o, producers, o.in_features // d, d))
                up, down = (get_submodule(block, p) for p in stack.ffn)
                self.groups.append(_Group("neurons", s, b, None, down, [(up, stack.ffn_up_chunks)], down.in_features, 1))
        for g in self.groups:
            if not isinstance(g.consumer, nn.Linear) or any(not isinstance(p, nn.Linear) for p, _ in g.producers):
                raise UserInputError(f"{type(self.model).__name__}: structured pruning needs nn.Linear projections "
                                     f"({g.key} has {type(g.consumer).__name__})")
        self.head_fraction, self.ffn_fraction = config.fractions()
        self.check_targets()
        self.budget: dict | None = None
        self.states = {}
        for g in self.groups:
            g.mask = torch.ones(g.size, dtype=torch.bool)
            g.score = torch.zeros(g.size, dtype=torch.float32)
            self.states[g.key] = mask_module(g.consumer)
            if config.method == "taylor":
                g.hook = g.consumer.register_forward_hook(self._capture(g))
            elif config.method == "movement":
                self.states[g.key].track = True  # dL/dW' * W of the consumer, summed over a step's micro-batches
        self.adam = ScoreAdam()  # block movement's scores (the callback sets betas and eps from the Trainer)
        if config.method == "movement":
            for g in self.groups:
                self.adam.add(g.key, g.score)
        self.loss_scaled = False
        self.skip_hooks = []
        if config.allow_layer_removal:
            self.skip_hooks = [b.register_forward_hook(_skip_block, with_kwargs=True) for b in self.blocks.values()]
        self.removed: set[tuple[int, int]] = set()
        self.schedule: CubicSchedule | None = None
        self.last_step = 0
        self.current_target = 0.0  # progress of the schedule in [0, 1]
        self.folded = False
        self.summary: dict | None = None
        logger.info("Structured pruning (%s, %s): %d blocks, %d heads, %d neurons; removing %.3f of heads, %.3f of "
                    "neurons", config.method, config.scope, len(self.blocks), self.total("heads"),
                    self.total("neurons"), self.head_fraction, self.ffn_fraction)

    # ------------------------------------------------------------------ targets
    def total(self, kind: str) -> int:
        return sum(g.size for g in self.groups if g.kind == kind)

    def _removed_count(self, g: _Group, fraction: float) -> int:
        return int(round(fraction * g.size))

    def check_targets(self) -> None:
        """Bad targets are errors before training: all heads or all neurons of the model, or (local scope, no layer
        removal) all of one block's."""
        for kind, fraction in (("heads", self.head_fraction), ("neurons", self.ffn_fraction)):
            total = self.total(kind)
            if int(round(fraction * total)) >= total:
                raise UserInputError(f"removing {fraction:g} of the {total} {kind} leaves none: lower "
                                     f"{'head_sparsity' if kind == 'heads' else 'ffn_sparsity'} / target_sparsity")
            if self.config.scope == "local" and not self.config.allow_layer_removal:
                for g in self.groups:
                    if g.kind == kind and self._removed_count(g, fraction) >= g.size:
                        raise UserInputError(
                            f"removing {fraction:g} of the {g.size} {kind} of every block prunes all of them in block "
                            f"{g.block} ({g.key}): set allow_layer_removal to remove such blocks, or lower the "
                            "fraction")

    def parameters_at(self, heads: float, ffn: float) -> int:
        """Parameters of the model once `heads` / `ffn` of them are removed (local counts, every block alike)."""
        removed = sum(self._removed_count(g, heads if g.kind == "heads" else ffn) * g.cost() for g in self.groups)
        return sum(p.numel() for p in self.model.parameters()) - removed

    def max_uniform_fraction(self) -> float:
        """The largest equal fraction of heads and neurons that leaves every block one of each."""
        return min((g.size - 1) / g.size for g in self.groups)

    def resolve_budget(self, latency_kwargs: dict | None = None) -> dict | None:
        """Turn `target_parameters` / `target_speedup` into one fraction of heads and neurons (the smallest that
        meets the budget, by bisection); latency is measured on a CPU copy cut to each candidate shape."""
        cfg = self.config
        if cfg.target_parameters is None and cfg.target_speedup is None:
            return None
        hi = self.max_uniform_fraction()
        if cfg.target_parameters is not None:
            goal = int(cfg.target_parameters)
            measure = lambda f: self.parameters_at(f, f)  # noqa: E731
            if measure(hi) > goal:
                raise UserInputError(f"target_parameters {goal:,} cannot be met: removing all but one head and neuron "
                                     f"per block leaves {measure(hi):,} parameters")
            ok = lambda f: measure(f) <= goal  # noqa: E731
        else:
            from ..costs import measure_latency

            if getattr(self.model, "main_input_name", "input_ids") != "input_ids":
                raise UserInputError(f"target_speedup measures latency on token ids; {type(self.model).__name__} takes "
                                     f"{self.model.main_input_name}: give head_sparsity / ffn_sparsity or "
                                     "target_parameters instead")

            kwargs = {"batch_size": 32, "seq_len": 128, "runs": 5, "warmup": 1, **(latency_kwargs or {})}
            dense = measure_latency(self._shaped_copy(0.0), **kwargs)["median_ms"]
            times = {}

            def measure(f):
                if f not in times:
                    times[f] = measure_latency(self._shaped_copy(f), **kwargs)["median_ms"]
                    logger.info("latency budget: %.3f of heads and neurons removed -> %.1f ms (dense %.1f ms, "
                                "%.2fx)", f, times[f], dense, dense / times[f])
                return times[f]

            ok = lambda f: dense / measure(f) >= cfg.target_speedup  # noqa: E731
            if not ok(hi):
                raise UserInputError(f"target_speedup {cfg.target_speedup:g} cannot be met: even one head and neuron "
                                     f"per block measures {dense / measure(hi):.2f}x here")
        lo = 0.0
        for _ in range(7):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shared = torch.tensor([hi], dtype=torch.float64)  # every process prunes to rank 0's measurement
            dist.broadcast(shared, src=0)
            hi = float(shared)
        self.head_fraction = self.ffn_fraction = hi
        self.budget = {"fraction": hi, "parameters": self.parameters_at(hi, hi)}
        if cfg.target_speedup is not None:
            self.budget.update(measured_ms=measure(hi), dense_ms=dense, measured_speedup=dense / measure(hi))
        logger.info("Budget resolved: remove %.4f of heads and neurons (%s)", hi, self.budget)
        return self.budget

    def _shaped_copy(self, fraction: float) -> nn.Module:
        """A CPU float32 copy of the model cut to `fraction` of heads and neurons removed (the first ones kept)."""
        model = copy.deepcopy(self.model).float().cpu()
        for m in model.modules():
            unmask_module(m, fold=False)
        spec = self._spec({g.key: torch.arange(g.size) >= self._removed_count(g, fraction) for g in self.groups},
                          removed=set())
        apply_structure(model, spec)  # which heads/neurons are kept does not change the speed: the first ones
        return model.eval()

    # ------------------------------------------------------------------ scores
    def _capture(self, g: _Group):
        def hook(module, args, output):
            x = args[0]
            if not (torch.is_grad_enabled() and x.requires_grad) or self.folded:
                return
            xd = x.detach()

            def on_grad(grad):
                c = (grad.detach().float() * xd.float()).reshape(xd.shape[0], -1, g.size, g.width).sum((1, 3))
                step = torch.stack([c.abs().sum(0), c.sum(0)]).cpu()
                g.pending = step if g.pending is None else g.pending + step

            x.register_hook(on_grad)

        return hook

    def before_optimizer_step(self, lr_scale: float = 1.0, grad_scale: float | None = None) -> None:
        """Fold this step's products (summed over micro-batches, averaged over processes) into the scores: Taylor
        adds them; block movement takes an AdamW step (see the module docstring; `lr_scale` and `grad_scale` as in
        `Pruner.before_optimizer_step`)."""
        if self.config.method == "magnitude" or self.folded:
            return
        if self.config.method == "movement":
            self._movement_step(lr_scale, grad_scale)
            return
        pending = [g.pending if g.pending is not None else torch.zeros(2, g.size) for g in self.groups]
        for g in self.groups:
            g.pending = None
        for g, p in zip(self.groups, mean_over_processes(pending)):
            g.score += p[0]

    def _movement_step(self, lr_scale: float, grad_scale: float | None) -> None:
        full = []
        for g in self.groups:
            st = self.states[g.key]
            gw, st.grad_times_weight = st.grad_times_weight, None
            full.append(gw if gw is not None else torch.zeros_like(g.consumer.weight, dtype=torch.float32))
        full = mean_over_processes(full)
        if grad_scale is None:
            grad_scale = clip_factor([(g.consumer.weight, gw, self.states[g.key].mask)
                                      for g, gw in zip(self.groups, full)])
        if not math.isfinite(grad_scale):
            logger.info("block movement scores: non-finite gradients, step skipped (as the optimizer skips it)")
            return
        grads = {g.key: gw.reshape(gw.shape[0], g.size, g.width).sum((0, 2)).cpu().mul_(grad_scale)
                 for g, gw in zip(self.groups, full)}
        self.adam.step({g.key: g.score for g in self.groups}, grads,
                       self.config.score_learning_rate * float(lr_scale))

    def importance(self, g: _Group) -> torch.Tensor:
        if self.config.method != "magnitude":
            return g.score
        with torch.no_grad():
            total = g.consumer.weight.detach().abs().float().reshape(g.consumer.out_features, g.size, g.width).sum((0, 2))
            for p, chunks in g.producers:
                w = p.weight.detach().abs().float().reshape(chunks, g.size, g.width, p.in_features).sum((0, 2, 3))
                if p.bias is not None:
                    w = w + p.bias.detach().abs().float().reshape(chunks, g.size, g.width).sum((0, 2))
                total = total + w
        return total.cpu()

    # ------------------------------------------------------------------ masks
    @property
    def schedule_final(self) -> float:
        return 1.0  # the schedule gives the progress; head_fraction / ffn_fraction scale it

    def _select(self, kind: str, fraction: float) -> dict[str, torch.Tensor]:
        groups = [g for g in self.groups if g.kind == kind and g.layer not in self.removed]
        keep_one = not self.config.allow_layer_removal
        if self.config.scope == "local":
            out = {}
            for g in groups:
                k = min(self._removed_count(g, fraction), g.size - 1 if keep_one else g.size)
                out[g.key] = topk_mask(self.importance(g), k / g.size)
            return out
        scores = []
        for g in groups:
            s = self.importance(g).float().clone()
            norm = s.norm()
            if self.config.method == "taylor" and norm > 0:
                # each block's gradient scores on one scale (Michel et al.); weights compare as they are, and block
                # movement's Adam-trained scores are in one unit (score learning rate x steps) everywhere
                s = s / norm
            if keep_one:
                s[s.argmax()] = float("inf")  # every block keeps its best head / neuron
            scores.append(s)
        flat = torch.cat(scores)
        total = sum(g.size for g in self.groups if g.kind == kind)  # removed blocks count as already pruned
        already = total - flat.numel()
        k = max(0, min(int(round(fraction * total)) - already, flat.numel() - (len(groups) if keep_one else 0)))
        full = topk_mask(flat, k / max(1, flat.numel()))
        out, start = {}, 0
        for g in groups:
            out[g.key] = full[start:start + g.size]
            start += g.size
        return out

    def update_masks(self, progress: float) -> None:
        self.current_target = progress
        masks = {**self._select("heads", self.head_fraction * progress),
                 **self._select("neurons", self.ffn_fraction * progress)}
        for g in self.groups:
            if g.key in masks:
                g.mask = masks[g.key]
        if self.config.allow_layer_removal:
            for g in self.groups:
                if g.layer not in self.removed and not bool(g.mask.any()):
                    self._check_removal(g.layer)
                    self.removed.add(g.layer)
                    logger.info("Block %d of stack %d has no %s left: removed", g.block, g.stack, g.kind)
            for g in self.groups:
                if g.layer in self.removed:
                    g.mask = torch.zeros(g.size, dtype=torch.bool)
            for key, block in self.blocks.items():
                block._hfc_skip = key in self.removed
        self._apply_masks()

    def _check_removal(self, layer: tuple[int, int]) -> None:
        """The family's check (`StackLayout.check_layers`) of the blocks left once `layer` is removed too."""
        s, b = layer
        check = self.stacks[s].check_layers
        if check is not None:
            check(self.model.config, self._kept_blocks(s, self.removed | {layer}))

    def _apply_masks(self) -> None:
        for g in self.groups:
            w = g.consumer.weight
            self.states[g.key].mask = expand_group_mask(g.mask.to(w.device), w.shape, g.width, dim=1)

    # ------------------------------------------------------------------ reporting
    def kept(self, kind: str) -> dict:
        """Kept heads (summed over a block's attentions) or neurons per block, per stack (removed blocks: 0)."""
        out: dict[str, list[int]] = {}
        for s, stack in enumerate(self.stacks):
            counts = [0] * self.num_blocks[s]
            for g in self.groups:
                if g.kind == kind and g.stack == s:
                    counts[g.block] += int(g.mask.sum())
            out[stack.layers_path] = counts
        return out

    def sparsity(self) -> float:
        """Reached fraction of removed heads and neurons, weighted by the parameters they hold."""
        total = sum(g.size * g.cost() for g in self.groups)
        removed = sum(int((~g.mask).sum()) * g.cost() for g in self.groups)
        return removed / max(1, total)

    def log_values(self) -> dict:
        heads = sum(int(g.mask.sum()) for g in self.groups if g.kind == "heads")
        neurons = sum(int(g.mask.sum()) for g in self.groups if g.kind == "neurons")
        return {"sparsity_target": round(self.current_target * self.head_fraction, 4),
                "sparsity": round(self.sparsity(), 4), "heads_kept": heads, "neurons_kept": neurons,
                "blocks_removed": len(self.removed)}

    # ------------------------------------------------------------------ end of training
    def _kept_blocks(self, stack: int, removed: set) -> list[int]:
        """Original indices of the blocks of `stack` that stay."""
        return [b for b in range(self.num_blocks[stack]) if (stack, b) not in removed]

    def _spec(self, masks: dict[str, torch.Tensor], removed: set) -> dict:
        """The structure spec (see `structure`) of the model these masks and removed blocks leave."""
        stacks = []
        for s, stack in enumerate(self.stacks):
            kept_blocks = self._kept_blocks(s, removed)
            blocks = []
            for b in kept_blocks:
                atts = []
                for a, att in enumerate(stack.attentions):
                    g = next(x for x in self.groups if x.kind == "heads" and x.layer == (s, b) and x.attention == a)
                    producers = [[p, c] for p, c in att.producers(self.blocks[(s, b)])]
                    atts.append({"module": att.module, "q": att.q, "k": att.k, "v": att.v, "o": att.o,
                                 "count_attrs": list(att.count_attrs), "width_attrs": list(att.width_attrs),
                                 "head_dim_attr": att.head_dim_attr, "head_dim": g.width,
                                 "position_bias": list(att.position_bias) if att.position_bias else None,
                                 "heads": masks[g.key].nonzero().flatten().tolist(), "producers": producers})
                g = next(x for x in self.groups if x.kind == "neurons" and x.layer == (s, b))
                blocks.append({"attentions": atts,
                               "ffn": {"up": stack.ffn[0], "down": stack.ffn[1], "size": int(masks[g.key].sum()),
                                       "up_chunks": stack.ffn_up_chunks}})
            # a first block that has a real module where the family builds nn.Identity in block 0 only (block 0
            # removed, now or by an earlier pruning): recorded, so that a reload builds it
            first = [list(pair) for pair in stack.first_block_only if kept_blocks and not isinstance(
                get_submodule(self.blocks[(s, kept_blocks[0])], pair[0]), nn.Identity)]
            stacks.append({"layers": stack.layers_path, "num_layers_key": stack.num_layers_key,
                           "removed_layers": sorted(b for (si, b) in removed if si == s), "blocks": blocks,
                           "layer_types_key": stack.layer_types_key, "first_block": first})
        return {"version": SPEC_VERSION, "stacks": stacks}

    def fold(self) -> dict:
        """Cut the removed heads, neurons and blocks out of the model (masks are dropped: what they hid is gone).
        Returns a summary; the model's config records the new shape (``hfcompress_structure``)."""
        if self.folded:
            return self.summary
        params_before = sum(p.numel() for p in self.model.parameters())
        heads_before, neurons_before = self.total("heads"), self.total("neurons")
        kept_heads, kept_neurons = self.kept("heads"), self.kept("neurons")
        masks = {g.key: g.mask for g in self.groups}
        spec = self._spec(masks, self.removed)
        ffn_index = {}
        for s in range(len(self.stacks)):
            for new_b, b in enumerate(self._kept_blocks(s, self.removed)):
                g = next(x for x in self.groups if x.kind == "neurons" and x.layer == (s, b))
                ffn_index[(s, new_b)] = g.mask.nonzero().flatten()
        for g in self.groups:
            unmask_module(g.consumer, fold=False)
            if g.hook is not None:
                g.hook.remove()
        for h in self.skip_hooks:
            h.remove()
        for block in self.blocks.values():
            block.__dict__.pop("_hfc_skip", None)
        for s, stack in enumerate(spec["stacks"]):
            if stack["removed_layers"]:
                remove_layers(self.model, stack, self._kept_blocks(s, self.removed))
        apply_structure(self.model, spec, ffn_index)
        self._renumber_alignment_heads()
        self.folded = True
        params_after = sum(p.numel() for p in self.model.parameters())
        self.summary = {
            "granularity": "structured",
            "method": self.config.method,
            "scope": self.config.scope,
            "head_fraction": self.head_fraction,
            "ffn_fraction": self.ffn_fraction,
            "budget": self.budget,
            "heads_before": heads_before,
            "heads_after": sum(sum(v) for v in kept_heads.values()),
            "neurons_before": neurons_before,
            "neurons_after": sum(sum(v) for v in kept_neurons.values()),
            "removed_blocks": {st["layers"]: st["removed_layers"] for st in spec["stacks"]},
            "heads_per_layer": self._flat(kept_heads),
            "ffn_per_layer": self._flat(kept_neurons),
            "parameters_before": params_before,
            "parameters_after": params_after,
            # two shares, named apart: of the heads' and neurons' parameters (what the schedule and the logs call
            # sparsity) and of every parameter of the model (embeddings and classifier included)
            "head_neuron_sparsity": round(self.sparsity(), 4),
            "parameters_removed_fraction": 1 - params_after / params_before,
        }
        logger.info("Structured pruning done: heads %d -> %d, neurons %d -> %d, %s; parameters %s -> %s (%.1f%% of all "
                    "parameters removed; sparsity %.4f of the heads' and neurons' parameters)",
                    heads_before, self.summary["heads_after"], neurons_before, self.summary["neurons_after"],
                    removed_blocks_text(self.summary["removed_blocks"]), f"{params_before:,}", f"{params_after:,}",
                    100 * self.summary["parameters_removed_fraction"], self.summary["head_neuron_sparsity"])
        return self.summary

    def _renumber_alignment_heads(self) -> None:
        """The generation config's ``alignment_heads`` (``[layer, head]`` pairs, Whisper's word-timestamp heads) follow
        the cut: kept heads get their new layer and head index, removed ones are dropped."""
        where = self.adapter.alignment_heads
        gen = getattr(self.model, "generation_config", None)
        pairs = getattr(gen, "alignment_heads", None) if gen is not None else None
        if not where or not pairs:
            return
        stack_path, module = where
        s = next((i for i, st in enumerate(self.stacks) if st.layers_path == stack_path), None)
        if s is None:
            return  # that stack was not pruned
        a = next(i for i, att in enumerate(self.stacks[s].attentions) if att.module == module)
        new_layer = {b: i for i, b in enumerate(self._kept_blocks(s, self.removed))}
        kept = {g.block: g.mask.nonzero().flatten().tolist() for g in self.groups
                if g.kind == "heads" and g.stack == s and g.attention == a}
        renumbered = [[new_layer[l], kept[l].index(h)] for l, h in pairs if l in new_layer and h in kept.get(l, ())]
        if len(renumbered) < len(pairs):
            logger.info("generation_config.alignment_heads: %d of %d word-timestamp heads were pruned",
                        len(pairs) - len(renumbered), len(pairs))
        gen.alignment_heads = renumbered or None

    @staticmethod
    def _flat(per_stack: dict) -> list | dict:
        """Per-block counts: a list for a one-stack model, by stack otherwise (removed blocks count 0)."""
        return next(iter(per_stack.values())) if len(per_stack) == 1 else per_stack

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for g in self.groups:
            out[f"mask.{g.key}"] = g.mask.to(torch.uint8).contiguous()
            out[f"score.{g.key}"] = g.score.contiguous()
        out.update(self.adam.state_dict())
        return out

    def meta(self) -> dict:
        return {"last_step": self.last_step, "current_target": self.current_target,
                "removed": sorted(list(x) for x in self.removed), "head_fraction": self.head_fraction,
                "ffn_fraction": self.ffn_fraction, "budget": self.budget, "adam_steps": self.adam.steps,
                "score_rule": SCORE_RULE}

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        if self.config.method == "movement" and meta.get("score_rule") != SCORE_RULE:
            raise UserInputError("this checkpoint's block movement scores were made by an older hfcompress (raw sums "
                                 "of -dL/dW * W), not by the Adam rule of this version: start a new run instead of "
                                 "resuming it")
        self.adam.load_state_dict(tensors, meta.get("adam_steps", 0), [g.key for g in self.groups])
        for g in self.groups:
            g.mask = tensors[f"mask.{g.key}"].to(torch.bool)
            g.score = tensors[f"score.{g.key}"]
        self.last_step, self.current_target = meta["last_step"], meta["current_target"]
        self.removed = {tuple(x) for x in meta["removed"]}
        self.head_fraction, self.ffn_fraction, self.budget = meta["head_fraction"], meta["ffn_fraction"], meta["budget"]
        for key, block in self.blocks.items():
            if self.config.allow_layer_removal:
                block._hfc_skip = key in self.removed
        self._apply_masks()

def make_pruner(model: nn.Module, config: PruningConfig):
    """The pruner a config asks for: `StructuredPruner` or (weights) `Pruner`."""
    if config.structured:
        return StructuredPruner(model, config)
    from .pruner import Pruner

    return Pruner(model, config)


def removed_blocks_text(removed: dict | None) -> str:
    """``removed_blocks`` of a structured-pruning summary in words: ``no block removed`` or
    ``blocks 2, 5 of encoder.layer removed``."""
    parts = [f"block{'s' if len(v) > 1 else ''} {', '.join(str(b) for b in v)} of {k} removed"
             for k, v in (removed or {}).items() if v]
    return "; ".join(parts) or "no block removed"
