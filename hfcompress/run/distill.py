"""A distillation run: what `scripts/distill.py` calls, and what the other scripts extend with their methods
(pruning, LoRA, low rank) without copying it. `run_distillation` picks the task adapter (`run/skeleton.py`) from the
teacher and the data and runs the one skeleton; this module also holds the text-classification adapter."""

from __future__ import annotations

import logging
import os

from ..data import set_input_length
from ..distill import DistillationDataCollator
from ..metrics import compute_classification_metrics
from ..report.record import RunRecord
from . import steps
from .arguments import DataArguments, ModelArguments
from .data import attach_teacher_cache, tokenize_for_distillation
from .report import ReportArguments, measure_against_teacher
from .skeleton import Run, TaskAdapter, register_task, run_task, task_for

logger = logging.getLogger(__name__)


def run_distillation(
    model_args: ModelArguments, data_args: DataArguments, args, callbacks=(), task: str = "distill", methods=(),
    report: ReportArguments | None = None, push=None, speech=None,
) -> RunRecord:
    """Distil a teacher into a student; returns the run record (also written to `<output_dir>/<task>_summary.json`
    by the main process).

    `args` is a `DistillationArguments` (the script's subclass). `methods` are `RunMethod`s (pruning, ...): their
    callbacks join the trainer, their checks run before anything slow, they save their own model format and add
    themselves to the record. Plain `callbacks` are added to the trainer as they are. With `report` (the scripts'
    `ReportArguments`), the saved model is then measured against the teacher, gets its model card and plots, and is
    pushed to the Hub if `args` asks (`--push_to_hub`), or written as a dry run if `push` (`hub.PushArguments`) does;
    without it (benchmarks), none of that.

    The task comes from the teacher and the data (`skeleton.task_for`): text classification; a Whisper teacher makes
    it sequence-to-sequence (`run/speech.py`, options in `speech`, a `SpeechArguments`): same trainer and loss, on the
    decoder's logits, evaluated by generation (WER); a speech teacher on labelled audio (the keyword set, or
    `--speech_task audio-classification`) audio classification, a wav2vec2/HuBERT CTC teacher CTC (`run/audio.py`).
    """
    adapter = task_for(model_args, data_args, speech)
    if speech is not None:
        from .speech import refuse_student_window

        refuse_student_window(adapter.name, speech)
    return run_task(adapter, model_args, data_args, args, speech=speech, callbacks=callbacks, task=task,
                    methods=methods, report=report, push=push)


class TextClassification(TaskAdapter):
    """Sequence classification of single texts: each model tokenizes the raw text with its own tokenizer, the
    teacher's outputs are cached on the training split (logits, and the hidden states and q/k/v the loss maps)."""

    name = "text-classification"
    priority = 1000  # the fallback: asked last

    def select(self, model_args, data_args, speech):
        return self

    def load_data(self, run: Run):
        return steps.load_data(run.data_args), run.data_args.dataset

    def load_teacher(self, run: Run):
        return steps.load_teacher(run.model_args, run.data_args, run.dataset, run.args, run.state)

    def build_student(self, run: Run):
        student, tokenizer = steps.build_student(run.model_args, run.data_args, run.dataset, run.teacher,
                                                 run.teacher_processor)
        return student, set_input_length(tokenizer, run.data_args.max_length)

    def prepare(self, run: Run) -> None:
        data_args = run.data_args
        tokenized, separate = tokenize_for_distillation(
            run.dataset, run.processor, run.teacher_processor, data_args.text_column, data_args.label_column,
            data_args.max_length, data_args.truncation_side, data_args.text_pair_column, data_args.pair_truncation,
        )
        run.collator = collator = DistillationDataCollator(run.processor, run.teacher_processor if separate else None)
        run.data, run.trainer_kwargs = attach_teacher_cache(run, tokenized, collator, separate,
                                                            self.teacher_cache_dir(run))

    def compute_metrics(self, run: Run):
        return compute_classification_metrics

    def data_entry(self, run: Run, trainer) -> dict:
        return {**super().data_entry(run, trainer), "label_names": trainer.model.config.id2label}

    def teacher_metrics(self, run: Run) -> dict:
        return steps.evaluate_on_texts(run.teacher, run.teacher_processor, run.dataset, run.data_args,
                                       device=run.args.device)

    def measure(self, run: Run, record, trainer, model_dir: str, report) -> None:
        if not os.path.exists(os.path.join(model_dir, "config.json")):
            return
        schedule = (record.methods.get("pruning") or {}).get("schedule")  # every mask update, not the logging steps
        measure_against_teacher(self, run, record, model_dir, report, log_history=schedule or None)


register_task(TextClassification())
