"""`DistillationCallback`: the training-loop side of `DistillationLoss` (optimizer, processes, checkpoints)."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from ..checkpoints import resume_checkpoint_dirs, step_checkpoint_dir
from ..errors import UserInputError
from .loss import DistillationLoss

logger = logging.getLogger(__name__)


class DistillationCallback(TrainerCallback):
    """Keeps the learnable parts of a `DistillationLoss` (hidden-state projections) in step with training:

    * puts them on the training device and, if the optimizer does not already hold them (a plain `Trainer` builds
      its optimizer from the student only), adds them as a param group that follows the first group's schedule;
    * averages their gradients across processes before each optimizer step (they live outside the DDP wrapper), and
      clears them after it (the Trainer only zeroes the student's);
    * saves them in every checkpoint, and reloads them when training resumes from one;
    * with a plain `Trainer` (`kd.attach(student)`), turns `remove_unused_columns` off at `on_init_end`, so that the
      teacher's columns (`teacher_input_ids`, cached outputs) reach the loss;
    * tells the loss the training progress before every optimizer step (`set_progress`), which the staged schedule
      (`intermediate_fraction`) needs, and adds `distill_stage` to a plain Trainer's log history.
    """

    def __init__(self, loss: DistillationLoss):
        self.loss = loss
        self.loaded_from: str | None = None

    def _params(self):
        return [p for p in self.loss.parameters() if p.requires_grad]

    def on_init_end(self, args, state, control, **kwargs):
        # A plain Trainer (the `attach` path) keeps only the dataset columns its model's forward names: it would drop
        # `teacher_input_ids`/`teacher_attention_mask` and cached teacher outputs before the loss sees them, and the
        # teacher would read the student's ids. Keep every column; the `attach` hook drops, at the student's forward,
        # what the Trainer would have dropped. (DistillationTrainer keeps the teacher's columns itself.)
        if self.loss._hooked is None or not getattr(args, "remove_unused_columns", False):
            return
        try:
            args.remove_unused_columns = False
        except Exception as exc:  # e.g. frozen arguments
            raise UserInputError(
                "TrainingArguments.remove_unused_columns: found True and it could not be changed; expected False for "
                "distillation with a plain Trainer (it would drop the teacher's columns). Pass "
                "TrainingArguments(..., remove_unused_columns=False)."
            ) from exc
        self.loss.drop_unused_inputs = True
        logger.info(
            "DistillationCallback: remove_unused_columns set to False so that teacher_* columns reach the "
            "distillation loss; inputs the student's forward does not take are dropped at the student instead"
        )

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
            for ckpt in resume_checkpoint_dirs(args, state):
                if self.loss.load_projections(ckpt):
                    self.loaded_from = ckpt
                    break

    def on_step_begin(self, args, state, control, **kwargs):
        # The staged schedule (intermediate_fraction) reads the progress; global_step is restored on resume.
        self.loss.set_progress(state.global_step, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # A plain Trainer logs no distillation parts; record at least the stage in the log history.
        # (DistillationTrainer.log puts it, with the loss parts, into the logs itself.)
        if not self.loss.config.staged or not logs or "loss" not in logs or "distill_stage" in logs:
            return
        if state.log_history and state.log_history[-1].get("step") == state.global_step and "loss" in state.log_history[-1]:
            state.log_history[-1]["distill_stage"] = self.loss.stage

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
            self.loss.save_projections(step_checkpoint_dir(args, state))


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
