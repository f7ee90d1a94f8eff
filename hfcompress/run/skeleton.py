"""One run skeleton for every task, and the task adapters that hold only what differs.

Every distillation run (and every method composed into one: pruning, LoRA, low rank) takes the same steps: set up
the run folder and processes, seed, check every input before anything slow, load the data, resolve a resume and the
Hub settings, check the methods, load the teacher, build the student, prepare it through the methods, prepare the
data (tokenization or features, targets, caches), build the `DistillationTrainer`, train, evaluate and save, write
the run record, measure, card, push. `run_task` is those steps, once. A `TaskAdapter` says what differs between tasks:
how data is loaded and collated, which teacher and student classes, how a student is cut, the metric, what the record
and the measurement hold.

The built-in adapters: text classification (`run/distill.py`), audio classification and CTC (`run/audio.py`),
sequence-to-sequence speech recognition (`run/speech.py`), token classification (`run/token.py`), extractive QA
(`run/qa.py`). `task_for` picks the first registered adapter whose `select` accepts the run's models and data, in the
order of their `priority` (text classification last: it takes whatever no other takes). A user adds an adapter of
their own with `register_task(adapter)` (priority 50: before the text fallback, after the speech, token and QA tasks;
any number to choose); a later issue adds sentence embeddings the same way.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from accelerate import PartialState
from transformers import set_seed

from ..checkpoints import with_faithful_resume
from ..distill import DistillationTrainer
from ..report.record import RunRecord
from . import steps
from .report import hub_settings_of, publish

logger = logging.getLogger(__name__)

# The built-in adapters' modules, imported (and so registered) the first time a task is chosen, in this order.
BUILTIN_TASKS = ("hfcompress.run.audio", "hfcompress.run.speech", "hfcompress.run.token", "hfcompress.run.qa",
                 "hfcompress.run.distill")


@dataclass
class Run:
    """What a run knows, filled in step by step by `run_task` and read by the task adapter's hooks."""

    model_args: Any
    data_args: Any
    args: Any
    speech: Any = None
    methods: tuple = ()
    task: str = "distill"
    run_dir: str = ""
    state: Any = None
    cfg: Any = None
    dataset: Any = None
    dataset_name: str | None = None
    resume: str | None = None
    teacher: Any = None
    teacher_processor: Any = None
    teacher_path: str | None = None
    student: Any = None
    processor: Any = None
    data: Any = None
    collator: Any = None
    trainer_kwargs: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # whatever an adapter keeps between its hooks (cache metadata, ...)


class TaskAdapter:
    """What one task does differently; the defaults are the text classifiers'. Hooks get the `Run` so far."""

    name = "task"
    priority = 50  # `task_for` asks the adapters from the lowest priority up
    pipeline_tag = "text-classification"
    metric = "accuracy"  # the main metric's key (``test_<metric>`` in the evaluation)
    auto_class = None  # the transformers auto class of the task's models (None: sequence classification)

    def select(self, model_args, data_args, speech):
        """This adapter (or a variant of it) if it handles a run with these arguments, else None. May raise
        `UserInputError` for arguments no adapter can take (a speech option without a speech teacher)."""
        return None

    # ---- checks before anything slow
    def check_settings(self, run: Run) -> None:
        """Settings of the task, before the distillation config is resolved (a term the task cannot use)."""

    def check_inputs(self, run: Run) -> None:
        """Settings checked once the distillation config is resolved, before the data is loaded."""

    def load_data(self, run: Run):
        """``(dataset, name)``: the run's `DatasetDict` and what the record calls it."""
        raise NotImplementedError

    def check_layers(self, run: Run) -> None:
        steps.check_distillation_layers(run.cfg, run.model_args)

    def before_teacher(self, run: Run) -> None:
        """Last checks or notes before the teacher is loaded."""

    # ---- models
    def load_teacher(self, run: Run):
        """``(teacher, its processor or tokenizer, path)``."""
        raise NotImplementedError

    def build_student(self, run: Run):
        """``(student, its processor or tokenizer)``."""
        raise NotImplementedError

    # ---- data and trainer
    def prepare(self, run: Run) -> None:
        """Set `run.data` (the splits the trainer reads), `run.collator` and `run.trainer_kwargs` (teacher, cache)."""
        raise NotImplementedError

    def processing_class(self, run: Run):
        return run.processor

    def compute_metrics(self, run: Run):
        raise NotImplementedError

    # ---- the record and the measurement
    def settings(self, run: Run) -> dict:
        """Extra argument groups for the record (``{"speech": ...}``)."""
        return {}

    def distillation_entry(self, run: Run, trainer) -> dict:
        """The record's ``methods["distillation"]``: the resolved settings, and where the teacher's outputs came from
        (``run.extras["cache_meta"]``: the cache `run.data.attach_teacher_cache` made, None when it ran online)."""
        method_dir, resolved = steps.save_distillation_config(trainer, run.cfg, run.run_dir)
        run.extras["distillation_dir"] = method_dir
        meta = run.extras.get("cache_meta")
        outputs = "online" if meta is None else (
            f"logits cached, {' and '.join(online)} online" if (online := meta.get("online_terms")) else "cached")
        return {**resolved, "teacher": run.teacher_path, "teacher_outputs": outputs,
                "teacher_cache": {k: v for k, v in (meta or {}).items() if k != "teacher_config"} or None}

    @staticmethod
    def teacher_cache_dir(run: Run) -> str:
        """Where this run's teacher outputs are cached: ``--teacher_cache_dir``, else ``<output_dir>/teacher_cache``."""
        return run.data_args.teacher_cache_dir or os.path.join(run.run_dir, steps.TEACHER_CACHE_DIR)

    def data_entry(self, run: Run, trainer) -> dict:
        return {"dataset": run.dataset_name, "splits": {s: len(d) for s, d in run.dataset.items()},
                **self.record_data(run)}

    def student_entry(self, run: Run, trainer) -> dict:
        from ..costs import count_parameters

        return {"source": run.model_args.student_model or f"blocks "
                f"{getattr(run.student.config, 'hfcompress_student_layers', None)} of the teacher",
                **steps.measure_model(trainer.model), "nonzero_parameters": count_parameters(trainer.model, nonzero=True)}

    def teacher_entry(self, run: Run) -> dict:
        return steps.measure_model(run.teacher)

    def teacher_metrics(self, run: Run) -> dict:
        """The teacher's test metrics (``--evaluate_teacher``)."""
        raise NotImplementedError

    def artifacts(self, run: Run) -> dict:
        out = {"teacher_cache": self.teacher_cache_dir(run)} if run.extras.get("cache_meta") is not None else {}
        if run.extras.get("distillation_dir"):
            out["distillation"] = run.extras["distillation_dir"]
        return out

    def measure(self, run: Run, record, trainer, model_dir: str, report) -> None:
        """Measure the saved model against its base, card it (``--measure``)."""

    # ---- what post-training runs (`hfcompress quantize`) ask of a task
    def evaluation(self, dataset, data_args, batch_size: int = 32):
        """``evaluate(model, tokenizer, split) -> metrics`` of any saved model of this task (as `load_model` gives
        it) on `dataset`'s split, for `report.measure.compare_checkpoints`; None: a text classifier's evaluation."""
        return None

    def texts(self, dataset, split: str, data_args) -> list[str]:
        """The raw texts of a split (what vocabulary trimming counts tokens in): the text column, and the pair
        column of sentence pairs."""
        columns = [data_args.text_column] + ([data_args.text_pair_column] if data_args.text_pair_column else [])
        return [t for c in columns for t in dataset[split][c]]

    def record_data(self, run: Run) -> dict:
        """What the record's ``data`` says of the task besides the dataset and splits (pipeline tag, metric...)."""
        return {"pipeline_tag": self.pipeline_tag}

    def log_result(self, run: Run, record, metrics: dict, model_dir: str) -> None:
        key = self.metric
        logger.info("Student test %s %.4f (teacher %s); model in %s", key,
                    metrics.get("test", {}).get(f"test_{key}", float("nan")),
                    record.metrics.get("teacher", {}).get("test", {}).get(key), model_dir)


_TASKS: list[TaskAdapter] = []
_loaded = False


def register_task(adapter: TaskAdapter) -> TaskAdapter:
    """Add a task adapter (asked in the order of `adapter.priority`; text classification, the fallback, is last)."""
    _TASKS.append(adapter)
    return adapter


def unregister_task(adapter: TaskAdapter) -> None:
    if adapter in _TASKS:
        _TASKS.remove(adapter)


def task_for(model_args, data_args, speech) -> TaskAdapter:
    """The adapter of the first registered task that takes a run with these arguments."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_TASKS:
            importlib.import_module(module)
    for adapter in sorted(_TASKS, key=lambda a: a.priority):
        chosen = adapter.select(model_args, data_args, speech)
        if chosen is not None:
            return chosen
    raise LookupError("no task adapter takes this run")  # text classification takes every run: not reached


def run_task(adapter: TaskAdapter, model_args, data_args, args, speech=None, callbacks=(), task: str = "distill",
             methods=(), report=None, push=None) -> RunRecord:
    """The run every task shares (see the module docstring); returns the run record (also written to
    `<output_dir>/<task>_summary.json` by the main process)."""
    run = Run(model_args, data_args, args, speech, tuple(methods), task)
    run.run_dir = steps.use_run_layout(args)
    steps.check_output_dir(run.run_dir, args, task)
    _ = args.device  # the Trainer's process setup (distributed backend) before anything asks who is main
    run.state = state = PartialState()
    steps.check_processes(state)
    set_seed(args.seed)

    # Everything that can be wrong with the input is checked before any training.
    adapter.check_settings(run)
    run.cfg = args.distillation_config()
    adapter.check_inputs(run)
    run.dataset, run.dataset_name = adapter.load_data(run)
    run.resume = steps.resolve_resume(args)
    hub = hub_settings_of(args, push, output_dir=run.run_dir)
    adapter.check_layers(run)
    for method in methods:
        if adapter.auto_class is not None:
            method.auto_class = adapter.auto_class
        method.check(model_args, data_args, args, len(run.dataset["train"]))
        if run.resume:
            method.check_resume(run.resume)
    adapter.before_teacher(run)

    run.teacher, run.teacher_processor, run.teacher_path = adapter.load_teacher(run)
    run.student, run.processor = adapter.build_student(run)
    for method in methods:
        method.check_model(run.student)
    for method in methods:
        run.student = method.prepare_model(run.student, run.run_dir, run.processor)

    adapter.prepare(run)
    trainer = DistillationTrainer(
        model=run.student,
        args=args,
        train_dataset=run.data["train"],
        eval_dataset=run.data["validation"] if args.eval_strategy != "no" else None,
        data_collator=run.collator,
        processing_class=adapter.processing_class(run),
        compute_metrics=adapter.compute_metrics(run),
        callbacks=with_faithful_resume([*callbacks, *(c for c in (m.callback() for m in methods) if c is not None)]),
        **run.trainer_kwargs,
    )
    training, metrics, saved, model_dir = steps.train_and_save(trainer, run.data, methods, run.processor, run.run_dir,
                                                               run.resume)

    record = RunRecord(task=task)
    if state.is_main_process:
        record.add_settings(model=model_args, data=data_args, training=args, **adapter.settings(run))
        record.methods["distillation"] = adapter.distillation_entry(run, trainer)
        record.data = adapter.data_entry(run, trainer)
        record.models["student"] = {"path": model_dir, **adapter.student_entry(run, trainer)}
        record.models["teacher"] = {"path": run.teacher_path, "argument": model_args.teacher_model,
                                    **adapter.teacher_entry(run)}
        record.training = {**training, "num_processes": state.num_processes}
        record.metrics["student"] = metrics
        if data_args.evaluate_teacher:
            record.metrics["teacher"] = {"test": adapter.teacher_metrics(run)}
        record.artifacts = {"model": model_dir, "checkpoints": args.output_dir, **adapter.artifacts(run), **saved}
        for method in methods:
            record.methods[method.name] = method.record()
        if report is not None and report.measure:
            adapter.measure(run, record, trainer, model_dir, report)
        summary = os.path.join(run.run_dir, f"{task}_summary.json")
        record.save(summary)
        publish(record, model_dir, run.run_dir, hub)
        record.save(summary)
        adapter.log_result(run, record, metrics, model_dir)
    state.wait_for_everyone()
    record.trainer = trainer  # for callers in the same process (tests, benchmarks); not serialised
    return record
