"""`Pruner`: scores, masks and schedule of one model, independent of any training loop.

A training loop (the `PruningCallback`, or a user's own loop) calls, per optimizer step::

    pruner.before_optimizer_step()   # movement: gradients of the step -> scores (all processes reduced)
    optimizer.step()
    pruner.step(global_step)         # new target on the schedule -> new masks

and at the end `pruner.fold()` writes the masks into the weights and leaves a plain model.
"""

from __future__ import annotations

import json
import logging
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserInputError
from .config import CONFIG_NAME, PruningConfig
from .masks import global_topk_masks, mask_module, topk_mask, unmask_module
from .schedule import CubicSchedule, masks_due
from .targets import find_targets

logger = logging.getLogger(__name__)

STATE_NAME = "pruning_state.safetensors"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def mean_over_processes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor averaged element-wise over all processes, in one all-reduce (unchanged in a single process).
    Communicated on the backend's device (CUDA for NCCL, CPU for gloo), returned on the tensors' own device."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    device = tensors[0].device
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = torch.cat([t.reshape(-1).to(comm) for t in tensors])
    dist.all_reduce(flat)
    flat = (flat / dist.get_world_size()).to(device)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view_as(t))
        start += t.numel()
    return out


class ScheduledPruner:
    """What every pruner shares: the cubic schedule, when masks move on it, and the state kept in checkpoints.

    A subclass sets `config`, `schedule` (None), `last_step`, `current_target`, and provides `update_masks(target)`,
    `state_dict()`, `meta()` and `_restore(meta, tensors)`; `schedule_final` is what the schedule ramps to.
    """

    config: PruningConfig

    @property
    def schedule_final(self) -> float:
        return self.config.target_sparsity

    def set_total_steps(self, max_steps: int) -> CubicSchedule:
        start, end = self.config.steps(max_steps)
        self.schedule = CubicSchedule(self.schedule_final, start, end)
        return self.schedule

    def step(self, global_step: int) -> bool:
        """Called after the optimizer step `global_step`: recompute the masks if the schedule says so. Returns
        whether the masks were recomputed."""
        if self.schedule is None:
            raise RuntimeError(f"{type(self).__name__}.set_total_steps(max_steps) must be called before training")
        self.last_step = global_step
        target = self.schedule(global_step)
        if not masks_due(self.schedule, global_step, target, self.current_target, self.config.mask_update_every,
                         scores_move=self.config.method != "magnitude"):
            return False
        self.update_masks(target)
        return True

    def save(self, directory: str) -> None:
        save_state(directory, self.config, self.state_dict(), self.meta())

    def load(self, directory: str) -> bool:
        """Restore the state saved in `directory` (False if it holds none; another configuration is refused)."""
        read = read_state(directory, self.config)
        if read is None:
            return False
        self._restore(*read)
        logger.info("%s state restored from %s (step %d)", type(self).__name__, directory, self.last_step)
        return True


class Pruner(ScheduledPruner):
    """Unstructured pruning of the layers `find_targets(model, config)` chooses.

    State (saved by `save`, restored by `load`): per layer the mask and, for movement, the scores (for
    soft_movement also the scores' Adam moments and the threshold), plus the last step and target.
    """

    def __init__(self, model: nn.Module, config: PruningConfig):
        self.config = config
        self.targets = find_targets(model, config)
        self.states = {name: mask_module(m) for name, m in self.targets.items()}
        self.scores: dict[str, torch.Tensor] = {}
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}
        self.thresholds: dict[str, float] = {}
        self.adam_steps = 0
        self.schedule: CubicSchedule | None = None
        self.last_step = 0
        self.current_target = 0.0
        self.folded = False
        if config.method != "magnitude":
            for name, m in self.targets.items():
                self.scores[name] = torch.zeros_like(m.weight, dtype=torch.float32)
                self.states[name].track = True
            if config.method == "soft_movement":
                for name, s in self.scores.items():
                    self.exp_avg[name] = torch.zeros_like(s)
                    self.exp_avg_sq[name] = torch.zeros_like(s)
        n = sum(m.weight.numel() for m in self.targets.values())
        logger.info("Pruning %d layers (%s weights) by %s, %s threshold, to sparsity %.2f",
                    len(self.targets), f"{n:,}", config.method, config.scope, config.target_sparsity)

    # ------------------------------------------------------------------ scores
    def before_optimizer_step(self) -> None:
        """Fold this step's ``dL/dW' * W`` (summed over micro-batches, averaged over processes) into the scores."""
        if self.config.method == "magnitude" or self.folded:
            return
        grads = {}
        for name, st in self.states.items():
            g = st.grad_times_weight
            st.grad_times_weight = None
            grads[name] = g if g is not None else torch.zeros_like(self.scores[name])
        grads = dict(zip(grads, mean_over_processes(list(grads.values()))))
        if self.config.method == "movement":
            for name, g in grads.items():
                self._score(name).sub_(g.to(self.scores[name].device))  # S += -dL/dW' * W
            return
        self._soft_update(grads)

    def _score(self, name: str) -> torch.Tensor:
        s = self.scores[name]
        dev = self.targets[name].weight.device
        if s.device != dev:
            s = self.scores[name] = s.to(dev)
        return s

    def _soft_update(self, grads: dict[str, torch.Tensor]) -> None:
        """Adam step on the scores: straight-through gradient plus the ramped regulariser mean(sigmoid(S))."""
        self.adam_steps += 1
        b1, b2 = ADAM_BETAS
        lr = self.config.score_learning_rate
        reg = self.config.regularization_weight * self._progress()
        c1, c2 = 1 - b1 ** self.adam_steps, 1 - b2 ** self.adam_steps
        total = sum(s.numel() for s in self.scores.values())
        for name, g in grads.items():
            s = self._score(name)
            g = g.to(s.device)
            if reg:
                sig = torch.sigmoid(s)
                # d/dS of reg * mean(sigmoid(S)) over all targeted weights, as if the regulariser were in the loss
                g = g + (reg / total) * sig * (1 - sig)
            m = self.exp_avg[name] = self.exp_avg[name].to(s.device).mul_(b1).add_(g, alpha=1 - b1)
            v = self.exp_avg_sq[name] = self.exp_avg_sq[name].to(s.device).mul_(b2).addcmul_(g, g, value=1 - b2)
            s.addcdiv_(m / c1, (v / c2).sqrt_().add_(ADAM_EPS), value=-lr)

    def _progress(self) -> float:
        if self.schedule is None or self.config.target_sparsity == 0:
            return 1.0
        return self.schedule(self.last_step) / self.config.target_sparsity

    def importance(self, name: str) -> torch.Tensor:
        """The score a weight is kept by: |W| for magnitude, the movement score otherwise."""
        if self.config.method == "magnitude":
            return self.targets[name].weight.detach().abs().float()
        return self._score(name)

    # ------------------------------------------------------------------ masks
    def update_masks(self, sparsity: float) -> None:
        self.current_target = sparsity
        if sparsity == 0:
            for st in self.states.values():
                st.mask.fill_(True)
            return
        if self.config.method == "soft_movement":
            self._soft_masks(sparsity)
            return
        scores = {n: self.importance(n) for n in self.targets}
        if self.config.scope == "global":
            masks = global_topk_masks(scores, sparsity)
        else:
            masks = {n: topk_mask(s, sparsity) for n, s in scores.items()}
        for name, m in masks.items():
            self.states[name].mask = m

    def _soft_masks(self, sparsity: float, exact: bool = False) -> None:
        """Keep the weights whose score, relative to the mean score of its matrix (or of all, with a global scope), is
        above a learned threshold; the threshold moves towards the cut that gives the scheduled sparsity (an
        exponential average with rate `threshold_learning_rate`; `exact` jumps to it). Relative to the mean, because
        the regulariser lowers all scores together, which must not prune everything."""
        rate = 1.0 if exact else self.config.threshold_learning_rate
        groups = [list(self.targets)] if self.config.scope == "global" else [[n] for n in self.targets]
        for names in groups:
            key = "global" if self.config.scope == "global" else names[0]
            flat = torch.cat([self._score(n).reshape(-1) for n in names])
            center = flat.mean()
            k = int(round(sparsity * flat.numel()))
            cut = float(flat.kthvalue(k).values - center) if k > 0 else float(flat.min() - center) - 1.0
            old = self.thresholds.get(key)
            tau = cut if old is None or exact else old + rate * (cut - old)
            self.thresholds[key] = tau
            if exact and k > 0:
                masks = global_topk_masks({n: self._score(n) for n in names}, sparsity)
            else:
                masks = {n: self._score(n) - center > tau for n in names}
            for n in names:
                self.states[n].mask = masks[n]

    # ------------------------------------------------------------------ reporting
    def sparsity(self) -> float:
        """Reached sparsity over all targeted weights."""
        zeros = sum(int((~st.mask).sum()) for st in self.states.values())
        total = sum(st.mask.numel() for st in self.states.values())
        return zeros / max(1, total)

    def layer_sparsity(self) -> dict[str, float]:
        return {n: float((~st.mask).float().mean()) for n, st in self.states.items()}

    def log_values(self) -> dict:
        out = {"sparsity_target": round(self.current_target, 4), "sparsity": round(self.sparsity(), 4)}
        if self.config.method == "soft_movement" and self.thresholds:
            out["pruning_threshold"] = round(sum(self.thresholds.values()) / len(self.thresholds), 6)
        return out

    # ------------------------------------------------------------------ end of training
    def fold(self) -> dict:
        """Write the masks into the weights (pruned weights become 0) and turn the layers back into plain ones.
        For soft_movement the final masks are first made exactly the target sparsity. Returns a summary."""
        if self.folded:
            return self.summary
        if self.config.method == "soft_movement" and self.current_target > 0:
            before = self.sparsity()
            self._soft_masks(self.current_target, exact=True)
            logger.info("soft_movement: sparsity %.4f at the learned threshold, %.4f after the final exact cut",
                        before, self.sparsity())
        self.summary = {
            "method": self.config.method,
            "scope": self.config.scope,
            "target_sparsity": self.config.target_sparsity,
            "reached_sparsity": self.sparsity(),
            "pruned_layers": len(self.targets),
            "pruned_weights_total": sum(st.mask.numel() for st in self.states.values()),
            "nonzero_pruned_weights": sum(int(st.mask.sum()) for st in self.states.values()),
            "layer_sparsity": self.layer_sparsity(),
        }
        for module in self.targets.values():
            unmask_module(module, fold=True)
        self.folded = True
        return self.summary

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for n, st in self.states.items():
            out[f"mask.{n}"] = st.mask.to(torch.uint8).cpu().contiguous()
        for prefix, table in (("score", self.scores), ("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            for n, t in table.items():
                out[f"{prefix}.{n}"] = t.cpu().contiguous()
        return out

    def meta(self) -> dict:
        return {"last_step": self.last_step, "current_target": self.current_target, "adam_steps": self.adam_steps,
                "thresholds": self.thresholds}

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        for n, st in self.states.items():
            st.mask = tensors[f"mask.{n}"].to(torch.bool).to(self.targets[n].weight.device)
        for prefix, table in (("score", self.scores), ("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            for n in table:
                table[n] = tensors[f"{prefix}.{n}"].to(self.targets[n].weight.device)
        self.last_step, self.current_target = meta["last_step"], meta["current_target"]
        self.adam_steps, self.thresholds = meta["adam_steps"], meta["thresholds"]

def save_state(directory: str, config: PruningConfig, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """A pruner's state (tensors + JSON metadata) and its configuration, beside a Trainer checkpoint."""
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, STATE_NAME), metadata={"meta": json.dumps(meta)})
    config.save_pretrained(directory)


def read_state(directory: str, config: PruningConfig) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(meta, tensors) saved by `save_state` in `directory`, None if there is none; a checkpoint written with another
    pruning configuration is refused (`check_resume_config`)."""
    path = os.path.join(directory, STATE_NAME)
    if not os.path.exists(path):
        return None
    check_resume_config(config, directory)
    with safe_open(path, "pt") as fh:  # one read: metadata and tensors
        return json.loads(fh.metadata()["meta"]), {k: fh.get_tensor(k) for k in fh.keys()}


def check_resume_config(config: PruningConfig, directory: str) -> None:
    """Refuse to resume from a checkpoint written without pruning or with another pruning configuration."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.exists(path):
        raise UserInputError(f"resuming pruning from {directory}: it holds no {CONFIG_NAME} (the checkpoint was not "
                             "written by a pruning run); start a new run instead")
    diff = PruningConfig.from_pretrained(directory).differences(config)
    if diff:
        listed = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise UserInputError(f"resuming from {directory} with a different pruning configuration ({listed}). Resume "
                             "with the checkpoint's settings, or start a new run")
