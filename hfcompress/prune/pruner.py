"""`Pruner`: scores, masks and schedule of one model, independent of any training loop.

A training loop (the `PruningCallback`, or a user's own loop) calls, per optimizer step::

    pruner.before_optimizer_step(lr_scale)   # movement: this step's gradients -> an Adam step on the scores
    optimizer.step()
    pruner.step(global_step)         # new target on the schedule -> new masks

and at the end `pruner.fold()` writes the masks into the weights and leaves a plain model.
"""

from __future__ import annotations

import json
import logging
import math
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
SCORE_RULE = "adamw-v1"  # movement scores trained as the reference trains them (saved in checkpoints)
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


class ScoreAdam:
    """AdamW without weight decay on named score tensors: the update `torch.optim.AdamW` makes on a parameter group
    holding them, as Sanh et al.'s reference trains its ``mask_scores`` (one score per weight) and nn_pruning its
    block scores (one per head or neuron, `StructuredPruner`'s ``movement``). Kept outside the weights' optimizer so
    that a plain `Trainer` needs none of its own; `betas` and `eps` are the weights' (the callback copies them from
    `TrainingArguments`). The moments and the step count go into checkpoints (`state_dict`)."""

    def __init__(self):
        self.betas = ADAM_BETAS
        self.eps = ADAM_EPS
        self.steps = 0
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}

    def add(self, name: str, score: torch.Tensor) -> None:
        """Zero moments for one score tensor (so that a checkpoint has them from the first save)."""
        self.exp_avg[name] = torch.zeros_like(score, dtype=torch.float32)
        self.exp_avg_sq[name] = torch.zeros_like(score, dtype=torch.float32)

    def step(self, scores: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], lr: float) -> None:
        """One AdamW step, in place, of every ``scores[name]`` from ``grads[name]``."""
        self.steps += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.steps, 1 - b2 ** self.steps
        for name, g in grads.items():
            s = scores[name]
            if name not in self.exp_avg:
                self.add(name, s)
            m = self.exp_avg[name] = self.exp_avg[name].to(s.device).lerp_(g, 1 - b1)
            v = self.exp_avg_sq[name] = self.exp_avg_sq[name].to(s.device).mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(c2)).add_(self.eps)
            s.addcdiv_(m, denom, value=-lr / c1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"exp_avg.{n}": t.cpu().contiguous() for n, t in self.exp_avg.items()},
                **{f"exp_avg_sq.{n}": t.cpu().contiguous() for n, t in self.exp_avg_sq.items()}}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], steps: int, names: list[str]) -> None:
        self.steps = int(steps)
        self.exp_avg = {n: tensors[f"exp_avg.{n}"] for n in names if f"exp_avg.{n}" in tensors}
        self.exp_avg_sq = {n: tensors[f"exp_avg_sq.{n}"] for n in names if f"exp_avg_sq.{n}" in tensors}


def clip_factor(layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
    """The factor between the gradients the weights' optimizer is about to use and the ones the backward produced:
    the clipping coefficient (and, under fp16, one over the loss scale). `layers`: ``(weight, dL/dW' * W, mask)`` of
    masked layers, where ``weight.grad = c * dL/dW' * M``, so ``c = ||W.grad * W|| / ||dL/dW' * W * M||``. 1 when no
    weight has a gradient (a loop calling this before backward, or frozen weights)."""
    nums, dens = [], []
    for w, g, mask in layers:
        if w.grad is None:
            continue
        nums.append((w.grad.detach().float() * w.detach().float()).to(g.device).square().sum())
        dens.append((g * mask.to(g.device)).square().sum())
    if not nums:
        return 1.0
    num, den = (float(torch.stack([t.to(nums[0].device) for t in ts]).sum()) for ts in (nums, dens))  # one sync
    if den == 0.0:
        return 1.0 if math.isfinite(num) else float("nan")
    c = math.sqrt(num / den)
    return 1.0 if abs(c - 1.0) < 1e-4 else c  # no clipping: float noise of the two sums, not a factor


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
        shortfall = self.config.soft_movement_shortfall(max_steps)
        if shortfall:
            logger.warning(shortfall)
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

    Movement scores (``movement`` and ``soft_movement``) are trained as Sanh et al.'s reference trains its
    ``mask_scores`` parameters: an AdamW step per optimizer step (learning rate `score_learning_rate` times the ratio
    of the weights' scheduled learning rate to their initial one, no weight decay), from the straight-through
    gradient ``dL/dS = dL/dW' * W`` as the weights' optimizer sees it (summed over micro-batches, averaged over
    processes, after the Trainer's gradient clipping), plus for ``soft_movement`` the regulariser's gradient.
    The update is the one `torch.optim.AdamW` would make if the scores were a parameter group of the weights'
    optimizer; it is kept here so that a plain `Trainer` needs no optimizer of its own.

    State (saved by `save`, restored by `load`): per layer the mask and, for movement, the scores and their Adam
    moments, plus the Adam step count, the last step and target.
    """

    def __init__(self, model: nn.Module, config: PruningConfig):
        self.config = config
        self.targets = find_targets(model, config)
        self.states = {name: mask_module(m) for name, m in self.targets.items()}
        self.scores: dict[str, torch.Tensor] = {}
        self.thresholds: dict[str, float] = {}
        self.adam = ScoreAdam()
        # True under fp16 loss scaling: the ratio of optimizer gradient to hook gradient then holds the loss scale,
        # and the regulariser (not scaled) is added unclipped.
        self.loss_scaled = False
        self.last_grad_scale = 1.0
        self.schedule: CubicSchedule | None = None
        self.last_step = 0
        self.current_target = 0.0
        self.folded = False
        if config.method != "magnitude":
            for name, m in self.targets.items():
                self.scores[name] = torch.zeros_like(m.weight, dtype=torch.float32)
                self.adam.add(name, self.scores[name])
                self.states[name].track = True
        n = sum(m.weight.numel() for m in self.targets.values())
        logger.info("Pruning %d layers (%s weights) by %s, %s threshold, to sparsity %.2f",
                    len(self.targets), f"{n:,}", config.method, config.scope, config.target_sparsity)

    # ------------------------------------------------------------------ scores
    def before_optimizer_step(self, lr_scale: float = 1.0, grad_scale: float | None = None) -> None:
        """One AdamW step on the movement scores from this optimizer step's ``dL/dW' * W``.

        Call it after the backward passes (and after gradient clipping) of an optimizer step, before
        `optimizer.step()`. `lr_scale`: the weights' current learning rate over their initial one (the scores follow
        the same schedule). `grad_scale`: the factor the weights' gradients received between backward and optimizer
        (clipping, loss-scale removal); by default it is measured from the weights' ``.grad``
        (`optimizer_grad_scale`). A step whose gradients are not finite (an fp16 overflow the optimizer skips) is
        skipped here too."""
        if self.config.method == "magnitude" or self.folded:
            return
        grads = self.step_gradients()
        if grad_scale is None:
            grad_scale = self.optimizer_grad_scale(grads)
        self.last_grad_scale = grad_scale
        if not math.isfinite(grad_scale):
            logger.info("movement scores: non-finite gradients, step skipped (as the optimizer skips it)")
            return
        reg = self.regularizer_gradients() if self.config.method == "soft_movement" else {}
        reg_scale = 1.0 if self.loss_scaled else min(1.0, grad_scale)
        for name, g in grads.items():
            g = g.to(self._score(name).device).mul_(grad_scale)
            if name in reg:
                g.add_(reg[name], alpha=reg_scale)
            grads[name] = g
        self.adam.step({n: self._score(n) for n in grads}, grads, self.config.score_learning_rate * float(lr_scale))

    def step_gradients(self) -> dict[str, torch.Tensor]:
        """This optimizer step's straight-through score gradients ``dL/dW' * W`` (summed over the micro-batches,
        averaged over processes); the buffers are emptied."""
        grads = {}
        for name, st in self.states.items():
            g = st.grad_times_weight
            st.grad_times_weight = None
            grads[name] = g if g is not None else torch.zeros_like(self.scores[name])
        return dict(zip(grads, mean_over_processes(list(grads.values()))))

    def optimizer_grad_scale(self, grads: dict[str, torch.Tensor]) -> float:
        """The factor between the gradients the weights' optimizer is about to use and the ones the backward
        produced (`clip_factor` over the pruned layers)."""
        return clip_factor([(self.targets[n].weight, g, self.states[n].mask) for n, g in grads.items()])

    def regularizer_gradients(self) -> dict[str, torch.Tensor]:
        """d/dS of ``lambda_t * R``, the reference's l1 regulariser ``R = mean over matrices of mean(sigmoid(S))``,
        with ``lambda_t = regularization_weight`` ramped like the threshold (``lambda * tau_t / tau_final``)."""
        lam = self.config.regularization_weight * self._progress()
        if not lam:
            return {}
        out = {}
        for name in self.scores:
            sig = torch.sigmoid(self._score(name))
            out[name] = sig.mul_(1 - sig).mul_(lam / (len(self.scores) * sig.numel()))
        return out

    def _score(self, name: str) -> torch.Tensor:
        s = self.scores[name]
        dev = self.targets[name].weight.device
        if s.device != dev:
            s = self.scores[name] = s.to(dev)
        return s

    def _progress(self) -> float:
        """Where the schedule stands, 0 (warm-up) to 1 (end of the ramp): tau_t / tau_final in the reference."""
        if self.schedule is None:
            return 1.0
        return CubicSchedule(1.0, self.schedule.start, self.schedule.end)(self.last_step)

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

    def _soft_masks(self, sparsity: float) -> None:
        """Soft movement (Sanh et al.'s sigmoied_threshold): keep the weights with ``sigmoid(S) > tau_t``, one
        absolute threshold for every matrix, ``tau_t = soft_threshold * progress`` on the schedule's cubic ramp
        (`sparsity` / `target_sparsity`); how many weights go is decided by the scores, i.e. by the regulariser's
        weight. As in the reference, a matrix keeps at least 0.5% of its weights (+1), its highest scores."""
        progress = sparsity / self.config.target_sparsity if self.config.target_sparsity else 1.0
        tau = self.config.soft_threshold * progress
        self.thresholds = {"tau": tau}
        for name in self.targets:
            s = self._score(name)
            mask = torch.sigmoid(s) > tau
            n_min = int(0.005 * s.numel()) + 1
            if int(mask.sum()) < n_min:
                mask = topk_mask(s, 1.0 - n_min / s.numel())
            self.states[name].mask = mask

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
            out["pruning_threshold"] = round(self.thresholds["tau"], 6)
        return out

    # ------------------------------------------------------------------ end of training
    def fold(self) -> dict:
        """Write the masks into the weights (pruned weights become 0) and turn the layers back into plain ones.
        The masks are the last ones trained with (soft_movement: whatever sparsity the regulariser reached, as in
        the reference; no final cut without training after it). Returns a summary."""
        if self.folded:
            return self.summary
        if self.config.method == "soft_movement" and abs(self.sparsity() - self.current_target) > 0.02:
            logger.warning("soft_movement reached sparsity %.4f (target_sparsity %.4f is not enforced: the "
                           "regulariser decides; raise regularization_weight for a sparser model, lower it for a "
                           "denser one)", self.sparsity(), self.current_target)
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
        for n, t in self.scores.items():
            out[f"score.{n}"] = t.cpu().contiguous()
        out.update(self.adam.state_dict())
        return out

    def meta(self) -> dict:
        return {"last_step": self.last_step, "current_target": self.current_target, "adam_steps": self.adam.steps,
                "thresholds": self.thresholds, "score_rule": SCORE_RULE}

    def _restore(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        if self.scores and meta.get("score_rule") != SCORE_RULE:
            raise UserInputError("this checkpoint's movement scores were made by an older hfcompress (raw sums of "
                                 "-dL/dW' * W, or a learned relative threshold), not by the Adam rule of this version: "
                                 "start a new run instead of resuming it")
        for n, st in self.states.items():
            st.mask = tensors[f"mask.{n}"].to(torch.bool).to(self.targets[n].weight.device)
        for n in self.scores:
            self.scores[n] = tensors[f"score.{n}"].to(self.targets[n].weight.device)
        self.adam.load_state_dict(tensors, meta["adam_steps"], list(self.scores))
        self.last_step, self.current_target = meta["last_step"], meta["current_target"]
        self.thresholds = meta["thresholds"]

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
