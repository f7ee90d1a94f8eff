"""`DistillationCallback`: the training-loop side of `DistillationLoss` (optimizer, processes, checkpoints)."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from .loss import DistillationLoss

logger = logging.getLogger(__name__)


class DistillationCallback(TrainerCallback):
    """Keeps the learnable parts of a `DistillationLoss` (hidden-state projections) in step with training:

    * puts them on the training device and, if the optimizer does not already hold them (a plain `Trainer` builds
      its optimizer from the student only), adds them as a param group that follows the first group's schedule;
    * averages their gradients across processes before each optimizer step (they live outside the DDP wrapper), and
      clears them after it (the Trainer only zeroes the student's);
    * saves them in every checkpoint, and reloads them when training resumes from one.
    """

    def __init__(self, loss: DistillationLoss):
        self.loss = loss
        self.loaded_from: str | None = None

    def _params(self):
        return [p for p in self.loss.parameters() if p.requires_grad]

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.loss.to(args.device)
        params = self._params()
        if params and optimizer is not None:
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            missing = [p for p in params if id(p) not in held]
            if missing:
                logger.info("Adding %d distillation projection tensors to the optimizer", len(missing))
                lr = optimizer.param_groups[0].get("initial_lr", args.learning_rate)
                optimizer.add_param_group({"params": missing, "weight_decay": 0.0, "lr": lr, "initial_lr": lr})
                _extend_scheduler(lr_scheduler, lr)
        if params and state.global_step > 0 and self.loaded_from is None:
            ckpt = args.resume_from_checkpoint if isinstance(args.resume_from_checkpoint, str) else None
            ckpt = ckpt or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if self.loss.load_projections(ckpt):
                self.loaded_from = ckpt

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            for p in self._params():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad.div_(world)

    def on_optimizer_step(self, args, state, control, **kwargs):
        # The Trainer zeroes only the student's gradients (`model.zero_grad()`); without this the projections'
        # gradients would keep accumulating from step to step.
        self.loss.zero_grad(set_to_none=True)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.loss.save_projections(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))


def _extend_scheduler(scheduler, lr: float) -> None:
    """Give a param group added after the scheduler was built the schedule of the first group (LambdaLR family)."""
    if scheduler is None:
        return
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs.append(lr)
    if hasattr(scheduler, "lr_lambdas"):
        scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr.append(scheduler._last_lr[0] if scheduler._last_lr else lr)
