"""`PruningCallback`: pruning inside any `Trainer` (a plain one, `DistillationTrainer`, a user's subclass).

    trainer = Trainer(..., callbacks=[PruningCallback(PruningConfig(method="movement", target_sparsity=0.9))])
    trainer.train()
    save_sparse(trainer.model, "out/model")            # compact checkpoint; trainer.save_model writes the dense one
"""

from __future__ import annotations

import gc
import json
import logging
import os

from transformers import TrainerCallback

from ..checkpoints import resume_checkpoint_dirs, step_checkpoint_dir
from ..errors import UserInputError
from ..files import write_json_atomic
from .config import PruningConfig
from .pruner import STATE_NAME, Pruner
from .structured import StructuredPruner, make_pruner

logger = logging.getLogger(__name__)


SCHEDULE_NAME = "pruning_schedule.json"


def read_schedule(directory: str, step: int) -> list[dict]:
    """The schedule recorded up to `step` beside a checkpoint (empty if that checkpoint has none)."""
    path = os.path.join(directory, SCHEDULE_NAME)
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        return [e for e in json.load(fh) if e.get("step", 0) <= step]


def lr_ratio(optimizer, initial: float) -> float:
    """The optimizer's learning rate for the coming step over its initial one (1 without an optimizer): the factor
    the Trainer's schedule (warm-up, decay) applies, which the movement scores follow."""
    if optimizer is None or not getattr(optimizer, "param_groups", None):
        return 1.0
    group = optimizer.param_groups[0]
    base = group.get("initial_lr", initial)
    return float(group["lr"]) / float(base) if base else 1.0


class PruningCallback(TrainerCallback):
    """Drives a `Pruner` from the training loop.

    * `on_init_end`: the targeted layers get masks (so the pruning is in place before any forward);
    * `on_train_begin`: the schedule from the run's `max_steps` (bad settings are an error before the first step);
      on a resume, the pruning state of the checkpoint (refused if its configuration differs);
    * before every optimizer step (after clipping): an AdamW step on the movement scores from that step's gradients
      (all processes averaged), at `score_learning_rate` times the ratio of the optimizer's current learning rate to
      its initial one (the scores follow the Trainer's schedule) with the Trainer's betas and epsilon;
    * after every optimizer step: masks for the new scheduled sparsity;
    * on every log: `sparsity_target` and `sparsity` (reached) join the Trainer's logs, so they reach TensorBoard,
      W&B and `state.log_history` like the loss;
    * on every checkpoint: the pruning state beside the model weights;
    * `on_train_end`: the masks are folded into the weights (`fold_at_end`), leaving a plain model.

    With ``granularity="structured"`` the same hooks drive a `StructuredPruner`: heads and neurons are masked while
    training and cut out of the model at the end (save it with `save_structured`); a parameter or latency budget is
    turned into fractions at train begin.
    """

    def __init__(self, config: PruningConfig | None = None, fold_at_end: bool = True, **kwargs):
        if config is None:
            config = PruningConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a PruningConfig or its fields as keyword arguments, not both")
        self.config = config
        self.fold_at_end = fold_at_end
        self.pruner: Pruner | StructuredPruner | None = None
        self.loaded_from: str | None = None
        self.summary: dict | None = None
        # the schedule as it ran: target and reached sparsity at every mask update (the record's ``schedule``, drawn
        # as the card's sparsity plot), kept beside each checkpoint so a resumed run has the whole of it
        self.schedule: list[dict] = []

    def attach(self, model) -> Pruner:
        if self.pruner is None:
            self.pruner = make_pruner(model, self.config)
        return self.pruner

    def _move_before_reporters(self) -> None:
        """Reporting callbacks (TensorBoard, W&B, ...) are added before user callbacks and write `logs` in their own
        `on_log`; move this callback just after the Trainer's flow callback so they see the sparsity values."""
        for holder in gc.get_referrers(self):
            # The CallbackHandler's list (and Trainer.__init__'s local copy of it): it starts with DefaultFlowCallback.
            if (isinstance(holder, list) and holder and type(holder[0]).__name__ == "DefaultFlowCallback"
                    and any(c is self for c in holder)):
                holder.remove(self)
                holder.insert(1, self)

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.attach(model)
        self._move_before_reporters()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        pruner = self.attach(model)
        if state.max_steps <= 0:
            raise UserInputError("pruning needs a known number of training steps (set num_train_epochs or max_steps)")
        schedule = pruner.set_total_steps(state.max_steps)
        pruner.adam.betas = (args.adam_beta1, args.adam_beta2)
        pruner.adam.eps = args.adam_epsilon
        pruner.loss_scaled = bool(args.fp16)
        if state.global_step > 0:
            candidates = resume_checkpoint_dirs(args, state)
            for c in candidates:
                if os.path.isdir(c) and pruner.load(c):
                    self.loaded_from = c
                    self.schedule = read_schedule(c, state.global_step)
                    break
            else:
                raise UserInputError(f"resumed at step {state.global_step} but no {STATE_NAME} was found in "
                                     f"{' or '.join(candidates)}: the masks of that run cannot be restored")
        elif isinstance(pruner, StructuredPruner):
            pruner.resolve_budget()  # a parameter or latency budget -> fractions (measured before the first step)
        if isinstance(pruner, StructuredPruner):
            logger.info("Pruning schedule: warm-up to step %d, cubic ramp to %.3f of heads / %.3f of neurons removed at "
                        "step %d, held to step %d", schedule.start, pruner.head_fraction, pruner.ffn_fraction,
                        schedule.end, state.max_steps)
        else:
            logger.info("Pruning schedule: warm-up to step %d, cubic ramp to sparsity %.3f at step %d, held to step %d",
                        schedule.start, schedule.final, schedule.end, state.max_steps)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.pruner.before_optimizer_step(lr_scale=lr_ratio(optimizer, args.learning_rate))

    def on_step_end(self, args, state, control, **kwargs):
        if self.pruner.step(state.global_step) and state.is_world_process_zero:
            self.schedule.append({"step": state.global_step, **self.pruner.log_values()})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.pruner is None or self.pruner.folded or logs is None or "loss" not in logs:
            return
        values = self.pruner.log_values()
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.pruner is not None and not self.pruner.folded:
            self.pruner.save(step_checkpoint_dir(args, state))
            write_json_atomic(os.path.join(step_checkpoint_dir(args, state), SCHEDULE_NAME), self.schedule)

    def on_train_end(self, args, state, control, **kwargs):
        if self.pruner is None or not self.fold_at_end or self.pruner.folded:
            return
        best = state.best_model_checkpoint if getattr(args, "load_best_model_at_end", False) else None
        if best and os.path.isdir(best):
            self.pruner.load(best)  # the Trainer reloaded that checkpoint's weights: use its masks too
        self.summary = self.pruner.fold()
        self.summary["schedule"] = list(self.schedule)
        if not isinstance(self.pruner, StructuredPruner):  # (the structured pruner logs its own summary)
            logger.info("Pruning done: sparsity %.4f of %s targeted weights (masks folded into the weights)",
                        self.summary["reached_sparsity"], f"{self.summary['pruned_weights_total']:,}")
