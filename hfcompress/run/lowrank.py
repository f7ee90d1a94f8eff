"""Low-rank factorization as a method of a training run (`scripts/lowrank.py`): the student (by default a full copy
of the teacher) has its projections replaced by truncated-SVD pairs before the trainer is built, then trains with
distillation from the unfactorized teacher to win back what the truncation lost; saved with its modeling code, so it
reloads with hfcompress (`load_lowrank`) or without (``trust_remote_code=True``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from accelerate import PartialState

from ..distill.arguments import DistillationArguments
from ..lowrank import LowRankConfig, factorize, plan_ranks, save_lowrank
from ..report.measure import count_parameters, folder_size_mb
from . import steps
from .methods import RunMethod

logger = logging.getLogger(__name__)

METHOD_DIR = "lowrank"


@dataclass
class LowRankArguments(DistillationArguments, LowRankConfig):
    """`TrainingArguments` + distillation fields + low-rank fields, for one `HfArgumentParser` (defined in the run
    layer because it composes two methods). Without --rank / --energy / --parameter_budget, half the projections'
    parameters are kept (``parameter_budget=0.5``)."""

    def __post_init__(self):
        if self.rank is None and self.energy is None and self.parameter_budget is None:
            self.parameter_budget = 0.5
        LowRankConfig.__post_init__(self)
        DistillationArguments.__post_init__(self)

    def lowrank_config(self) -> LowRankConfig:
        return LowRankConfig.from_any(self)


def run_lowrank(model_args, data_args, args: LowRankArguments, task: str = "lowrank", report=None, push=None):
    """Factorize and train back with distillation, as `scripts/lowrank.py` does; returns the `RunRecord`."""
    from .distill import run_distillation

    return run_distillation(model_args, data_args, args, methods=[LowRankMethod(args.lowrank_config())], task=task,
                            report=report, push=push)


class LowRankMethod(RunMethod):
    name = "lowrank"

    def __init__(self, config: LowRankConfig):
        self.config = config
        self.summary: dict = {}
        self.sizes: dict = {}

    def check(self, model_args, data_args, args, train_rows: int) -> None:
        if self.config.mode != "rank":
            return  # energy and budget need the real weights: checked in check_model
        plan_ranks(self.probe_model(model_args), self.config, show_progress=False)  # names matching nothing, ranks a matrix cannot have

    def check_model(self, model) -> None:
        plan_ranks(model, self.config, show_progress=False)

    def prepare_model(self, model, run_dir: str, tokenizer=None):
        self.summary = factorize(model, self.config)
        return model

    def save(self, trainer, tokenizer, run_dir: str) -> dict:
        model_dir = os.path.join(run_dir, steps.MODEL_DIR)
        method_dir = os.path.join(run_dir, METHOD_DIR)
        if trainer.is_world_process_zero():
            save_lowrank(trainer.model, model_dir, tokenizer)
            self.config.save_pretrained(method_dir)
            self.sizes = {"model_mb": folder_size_mb(model_dir), "parameters": count_parameters(trainer.model)}
        PartialState().wait_for_everyone()
        return {"model": model_dir, "lowrank": method_dir}

    def record(self) -> dict:
        return {**self.config.to_dict(), **self.summary, "saved": self.sizes,
                "loading": "model/: hfcompress.lowrank.load_lowrank(path), or without hfcompress "
                           "the task's AutoModelFor... (sequence or token classification, question answering)"
                           ".from_pretrained(path, trust_remote_code=True)"}
