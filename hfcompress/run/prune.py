"""A pruning run: the distillation pipeline (teacher, cache, student, trainer) plus the `PruningCallback`.

The pruned model starts as a copy of the teacher (all its blocks) unless `--student_model` / `--student_layers`
say otherwise, and learns from the teacher's cached outputs while its weights are pruned (Sanh et al.'s recipe).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from ..distill.arguments import DistillationArguments
from ..prune import PruningCallback, PruningConfig, save_dense, save_sparse, save_structured
from ..prune.pruner import check_resume_config
from ..prune.structured import StructuredPruner
from ..prune.targets import find_targets
from ..report.measure import count_parameters, folder_size_mb
from . import steps
from .distill import run_distillation
from .methods import RunMethod

logger = logging.getLogger(__name__)

DENSE_DIR = "model_dense"
METHOD_DIR = "pruning"


@dataclass
class PruningArguments(DistillationArguments, PruningConfig):
    """`TrainingArguments` + distillation fields + pruning fields: one `HfArgumentParser` reads a pruning run that may
    also distil (set `alpha`, `hidden_weight`, ... as in `scripts/distill.py`). Defined here, in the run layer,
    because it composes two methods; neither method imports the other."""

    def __post_init__(self):
        PruningConfig.__post_init__(self)
        DistillationArguments.__post_init__(self)

    def pruning_config(self) -> PruningConfig:
        return PruningConfig.from_any(self)


def estimated_steps(args, train_rows: int) -> int:
    """Optimizer steps of the run, counted as the Trainer counts them (for checks before training)."""
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    world = max(1, int(getattr(args, "world_size", 1) or 1))
    batches = math.ceil(math.ceil(train_rows / world) / args.per_device_train_batch_size)
    steps_per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
    return int(math.ceil(args.num_train_epochs * steps_per_epoch))


class PruningMethod(RunMethod):
    name = "pruning"

    def __init__(self, config: PruningConfig):
        self.config = config
        self._callback = PruningCallback(config)
        self.dense_before: dict | None = None
        self.sizes: dict = {}

    def callback(self):
        return self._callback

    def check(self, model_args, data_args, args, train_rows: int) -> None:
        self.config.steps(estimated_steps(args, train_rows))  # schedule fits the run
        # Targets on an empty (meta-device) copy of the model to prune: a pattern that matches nothing or an
        # unsupported architecture is reported before a teacher fine-tune or cache starts.
        probe = self.probe_model(model_args)
        if self.config.structured:
            # heads/neurons per block, targets that leave a block (or the model) empty, a parameter budget that
            # cannot be met; a latency budget is measured on the real weights at train begin
            pruner = StructuredPruner(probe, self.config)
            if self.config.target_parameters is not None:
                pruner.resolve_budget()
        else:
            find_targets(probe, self.config)

    def modules_changed(self, model_args) -> list[str]:
        """The layers (unstructured) or blocks (structured) this run prunes, named on the probe model."""
        probe = self.probe_model(model_args)
        if not self.config.structured:
            return list(find_targets(probe, self.config))
        blocks = {id(block) for block in StructuredPruner(probe, self.config).blocks.values()}
        return [name for name, module in probe.named_modules() if id(module) in blocks]

    def check_model(self, model) -> None:
        self.dense_before = {"parameters": count_parameters(model), "nonzero_parameters": count_parameters(model, nonzero=True)}

    def check_resume(self, checkpoint: str) -> None:
        # The check the callback makes when it restores the state, made before the trainer is built.
        check_resume_config(self.config, checkpoint)

    def save(self, trainer, tokenizer, run_dir: str) -> dict:
        model = trainer.model
        model_dir = os.path.join(run_dir, steps.MODEL_DIR)
        dense_dir = os.path.join(run_dir, DENSE_DIR)
        method_dir = os.path.join(run_dir, METHOD_DIR)
        if self.config.structured:
            if trainer.is_world_process_zero():
                save_structured(model, model_dir, tokenizer)
                self.config.save_pretrained(method_dir)
                self.sizes = {"model_mb": folder_size_mb(model_dir)}
            return {"model": model_dir, "pruning": method_dir}
        if trainer.is_world_process_zero():
            save_sparse(model, model_dir, tokenizer)
            save_dense(model, dense_dir, tokenizer)
            self.config.save_pretrained(method_dir)
            self.sizes = {"model_mb": folder_size_mb(model_dir), "model_dense_mb": folder_size_mb(dense_dir)}
        return {"model": model_dir, "model_dense": dense_dir, "pruning": method_dir}

    @property
    def auto_class_name(self) -> str:
        return getattr(self.auto_class, "__name__", "AutoModelForSequenceClassification")

    def record(self) -> dict:
        summary = dict(self._callback.summary or {})
        if self.config.structured:
            return {**self.config.to_dict(), **summary, "before": self.dense_before, "saved_mb": self.sizes,
                    "loading": "model/: hfcompress.load_structured(path), or without hfcompress "
                               f"{self.auto_class_name}.from_pretrained(path, trust_remote_code=True)"}
        layers = summary.pop("layer_sparsity", {})
        return {
            **self.config.to_dict(),
            **summary,
            "layer_sparsity_min": min(layers.values()) if layers else None,
            "layer_sparsity_max": max(layers.values()) if layers else None,
            "before": self.dense_before,
            "saved_mb": self.sizes,
            "loading": "model/: hfcompress.load_sparse(path) (compact); model_dense/: "
                       f"{self.auto_class_name}.from_pretrained(path) (plain transformers)",
        }


def run_pruning(model_args, data_args, args, task: str = "prune", report=None, push=None, speech=None):
    """Prune (and distil) as `scripts/prune.py` does; returns the `RunRecord` (written to
    `<output_dir>/prune_summary.json`). `speech` (`SpeechArguments`): the audio options of an audio classifier."""
    return run_distillation(model_args, data_args, args, methods=[PruningMethod(args.pruning_config())], task=task,
                            report=report, push=push, speech=speech)
