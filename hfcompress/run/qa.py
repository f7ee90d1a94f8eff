"""Extractive question answering through the one run skeleton: the task adapter, the teacher's one-time fine-tune,
and evaluation by exact match and F1 of the post-processed answers.

Chosen (`QuestionAnswering.select`) when the teacher is a ``...ForQuestionAnswering`` checkpoint or the data is
SQuAD-style (`hfcompress.qa.looks_like_qa`). transformers 5 removed ``pipeline("question-answering")``: a saved reader
answers raw questions through `answer_questions` (the evaluation's windows and post-processing). What differs from
text classification:

    data    = questions over contexts, cut into overlapping windows (--max_length, --doc_stride); each window labelled
              with the answer's start and end token, or the CLS token where the answer is not in it
    teacher = a ...ForQuestionAnswering with a trained head, or a headless encoder fine-tuned once (cached)
    student = blocks of the teacher (--student_layers / --student_num_layers), or --student_model with a new head
    loss    = the one `DistillationLoss` on start and end logits stacked as two items per window (`loss.logits_of`):
              T^2 * KL and cross-entropy over positions, DistilBERT's SQuAD recipe, normalised by the items of the
              whole accumulated batch; hidden-state and relation terms as for classifiers
    metric  = exact match and F1 (SQuAD v1.1 / v2.0) of the answers `qa.postprocess` picks from all windows of a
              question (--n_best_size, --max_answer_length, --null_score_threshold), through the local ``squad``
              evaluate module

With ``--cache_teacher`` (the default) the teacher's start and end logits of every training window are computed
once and cached (`attach_teacher_cache`, per position, as token classifiers cache theirs), with the hidden states
its loss maps; the teacher reads the student's windows, so the two must share a tokenizer (a student cut from the
teacher does), else the windows would not align.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from datasets import DatasetDict
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, set_seed

from ..assets import resolve_model_path
from ..data import check_first_texts_fit, set_input_length
from ..distill import SpanDistillationCollator, init_student_from_teacher
from ..errors import UserInputError
from ..metrics import qa_metrics
from ..qa import has_unanswerable, load_qa, looks_like_qa, postprocess, prepare_features
from . import steps
from .data import attach_teacher_cache, tokenizers_align
from .finetune import FinetuneConfig, _cache_key, cached_finetune, finetune_and_save, has_task_head
from .skeleton import Run, TaskAdapter, register_task
from .token import _architectures, is_sequence_classifier

logger = logging.getLogger(__name__)

POST = ("example_id", "offset_mapping")


def is_qa_model(architectures) -> bool:
    return any(a.endswith("ForQuestionAnswering") for a in architectures)


def windows(dataset: DatasetDict, tokenizer, data_args, labels: bool = True) -> DatasetDict:
    """Every split's questions as windows (`qa.prepare_features`), the raw columns dropped. A question that leaves no
    room for its context within --max_length is refused first (`data.check_first_texts_fit`)."""
    for s, ds in dataset.items():
        check_first_texts_fit(tokenizer, [q.lstrip() for q in ds["question"]], ds["context"], data_args.max_length,
                              data_args.doc_stride, where=f"{s} split, ", second="context")
    return DatasetDict({
        s: ds.map(lambda b: prepare_features(b, tokenizer, data_args.max_length, data_args.doc_stride, labels),
                  batched=True, remove_columns=ds.column_names, desc=f"Windows of {s}")
        for s, ds in dataset.items()})


class AnswerScorer:
    """`compute_metrics` for the Trainer: post-processes the windows' logits of the split being evaluated (told apart
    by its labels: the Trainer does not say which split it evaluates) into answers and scores them."""

    def __init__(self, dataset: DatasetDict, features: DatasetDict, data_args):
        self.dataset, self.features, self.data_args = dataset, features, data_args
        self.allow_no_answer = has_unanswerable(dataset)

    def split_of(self, label_ids) -> str:
        labels = np.asarray(label_ids)
        for split in ("validation", "test"):
            mine = np.asarray(self.features[split]["labels"])
            if mine.shape == labels.shape and (mine == labels).all():
                return split
        raise ValueError("the evaluated windows are neither the validation nor the test split's")

    def score(self, split: str, start_logits, end_logits) -> dict:
        d = self.data_args
        answers = postprocess(self.dataset[split], self.features[split], start_logits, end_logits, d.n_best_size,
                              d.max_answer_length, d.null_score_threshold, self.allow_no_answer)
        ex = self.dataset[split]
        return qa_metrics([answers[i] for i in ex["id"]], [a["text"] for a in ex["answers"]])

    def __call__(self, eval_pred) -> dict:
        start, end = eval_pred.predictions[:2]
        return self.score(self.split_of(eval_pred.label_ids), start, end)


@torch.no_grad()
def window_logits(model, features, tokenizer, batch_size: int = 32, device=None):
    """Start and end logits of every window (rows padded to the longest window), of any reader `load_model` gives
    (PyTorch, torch int8, ONNX Runtime)."""
    model = model.eval() if device is None else model.to(device).eval()
    device = model.device  # a transformers model's, or an ONNX Runtime model's (the CPU)
    collator = SpanDistillationCollator(tokenizer)
    starts, ends = [], []
    for i in range(0, len(features), batch_size):
        batch = collator([features[j] for j in range(i, min(i + batch_size, len(features)))])
        batch.pop("labels", None)
        out = model(**{k: v.to(device) for k, v in batch.items()})
        starts += list(out.start_logits.float().cpu().numpy())
        ends += list(out.end_logits.float().cpu().numpy())
    width = max(len(s) for s in starts)
    pad = lambda rows: np.stack([np.pad(r, (0, width - len(r)), constant_values=-1e4) for r in rows])  # noqa: E731
    return pad(starts), pad(ends)


def evaluate_reader(model, tokenizer, examples, data_args, allow_no_answer: bool, batch_size: int = 32,
                    device=None) -> dict:
    """Exact match and F1 of any reader (`load_model`'s: PyTorch, torch int8, ONNX Runtime) on a split of questions,
    cut into windows by its own tokenizer and post-processed as the run's evaluation is."""
    from datasets import Dataset

    features = Dataset.from_dict(prepare_features(examples[:], tokenizer, data_args.max_length, data_args.doc_stride,
                                                  labels=False))
    start, end = window_logits(model, features, tokenizer, batch_size, device=device)
    d = data_args
    answers = postprocess(examples, features, start, end, d.n_best_size, d.max_answer_length, d.null_score_threshold,
                          allow_no_answer)
    return qa_metrics([answers[i] for i in examples["id"]], [a["text"] for a in examples["answers"]])


def answer_questions(model, tokenizer, questions: list[str], contexts: list[str], max_length: int = 384,
                     doc_stride: int = 128, n_best: int = 20, max_answer_length: int = 30,
                     null_threshold: float | None = None) -> list[str]:
    """Answers of a saved reader to raw questions over raw contexts, through the same windows and post-processing as
    the run's evaluation (transformers 5 removed ``pipeline("question-answering")``). `null_threshold`: allow "no
    answer" (SQuAD v2) with this margin; None never answers nothing."""
    from datasets import Dataset

    check_first_texts_fit(tokenizer, [q.lstrip() for q in questions], contexts, max_length, doc_stride,
                          second="context", argument="max_length")
    examples = Dataset.from_dict({"id": [str(i) for i in range(len(questions))], "question": list(questions),
                                  "context": list(contexts), "answers": [{"text": [], "answer_start": []}] * len(questions)})
    features = Dataset.from_dict(prepare_features(examples[:], tokenizer, max_length, doc_stride, labels=False))
    start, end = window_logits(model, features, tokenizer)
    found = postprocess(examples, features, start, end, n_best, max_answer_length, null_threshold or 0.0,
                        allow_no_answer=null_threshold is not None)
    return [found[str(i)] for i in range(len(questions))]


def finetune_reader(model_name_or_path: str, dataset: DatasetDict, output_dir: str, cfg: FinetuneConfig,
                    data_args) -> dict:
    """Fine-tune a QA reader (the model's own start/end loss) with a plain `Trainer` and save it, cached under a key
    of the model, the data and the settings."""
    path = resolve_model_path(model_name_or_path)
    key = _cache_key(path, dataset, cfg, "question+context", f"answers:qa:{data_args.doc_stride}")
    cached = cached_finetune(output_dir, key, model_name_or_path)
    if cached is not None:
        return cached
    logger.info("Fine-tuning %s as a QA reader for %s epochs (cached in %s)", model_name_or_path,
                cfg.num_train_epochs, output_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    set_seed(cfg.seed)
    model = AutoModelForQuestionAnswering.from_pretrained(path)
    data = windows(DatasetDict(train=dataset["train"], validation=dataset["validation"]), tokenizer, data_args)
    # keep_columns: the windows' answers travel in `labels`, which a QA model's forward does not take (it takes
    # start/end positions, made by the collator), so the Trainer's column pruning would drop them
    return finetune_and_save(model, tokenizer, data, SpanDistillationCollator(tokenizer, positions=True), cfg,
                             output_dir, {"model": model_name_or_path, "cache_key": key, "task": "question-answering"},
                             keep_columns=True, compute_metrics=lambda _: {})


class QuestionAnswering(TaskAdapter):
    """Extractive question answering (see the module docstring)."""

    name = "question-answering"
    priority = 25  # after token classification, before sentence-level text classification
    pipeline_tag = "question-answering"
    metric = "f1"  # SQuAD token F1 (``test_f1``); ``test_exact_match`` beside it
    metric_name = "SQuAD F1 (token overlap of normalised answers)"
    metric_module = "squad"
    auto_class = AutoModelForQuestionAnswering

    def select(self, model_args, data_args, speech):
        if data_args.text_pair_column:  # sentence-pair classification over question/passage data (BoolQ)
            return None
        if is_qa_model(_architectures(model_args.teacher_model)) or looks_like_qa(data_args.dataset):
            return self
        return None

    def check_inputs(self, run: Run) -> None:
        model_args, d = run.model_args, run.data_args
        if d.text_pair_column:
            raise UserInputError("--text_pair_column is for sentence-pair classification; extractive QA reads the "
                                 "question and context columns of SQuAD-style data")
        if not 0 < d.doc_stride < d.max_length // 2:
            raise UserInputError(f"--doc_stride {d.doc_stride} must be between 1 and half of --max_length "
                                 f"{d.max_length} (the question shares each window; e.g. --max_length 384 "
                                 "--doc_stride 128)")
        for what, name in (("--teacher_model", model_args.teacher_model), ("--student_model", model_args.student_model)):
            arch = _architectures(name) if name else []
            if is_sequence_classifier(arch):
                raise UserInputError(f"{what} {name!r} is a sequence classifier ({arch[0]}) but the data is extractive "
                                     "QA: pass a ...ForQuestionAnswering model or a headless encoder")

    def load_data(self, run: Run):
        dataset = load_qa(run.data_args.dataset, seed=run.data_args.split_seed)
        return steps.limit_splits(dataset, run.data_args), run.data_args.dataset

    def load_teacher(self, run: Run):
        model_args, d = run.model_args, run.data_args
        path = resolve_model_path(model_args.teacher_model)
        if not has_task_head(model_args.teacher_model, AutoModelForQuestionAnswering):
            if not model_args.finetune_teacher:
                raise UserInputError(f"teacher {model_args.teacher_model!r} has no trained QA head and teacher "
                                     "fine-tuning is disabled; pass a fine-tuned teacher or enable --finetune_teacher")
            cfg = steps.teacher_finetune_config(model_args, run.args, max_length=d.max_length)
            path = model_args.teacher_dir or steps.default_teacher_dir(model_args, d) + "-qa"
            if run.state is None or run.state.is_main_process:
                finetune_reader(model_args.teacher_model, run.dataset, path, cfg, d)
            if run.state is not None:
                run.state.wait_for_everyone()
        return AutoModelForQuestionAnswering.from_pretrained(path), AutoTokenizer.from_pretrained(path), path

    def build_student(self, run: Run):
        model_args = run.model_args
        if model_args.student_model:
            path = resolve_model_path(model_args.student_model)
            student = AutoModelForQuestionAnswering.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
            if model_args.student_layers:
                student = init_student_from_teacher(student, layers=model_args.student_layer_list())
            return student.train(), set_input_length(tokenizer, run.data_args.max_length)
        student, tokenizer = steps.build_student(model_args, run.data_args, run.dataset, run.teacher,
                                                 run.teacher_processor)
        return student, set_input_length(tokenizer, run.data_args.max_length)  # the saved tokenizer's window length

    def prepare(self, run: Run) -> None:
        if not tokenizers_align(run.processor, run.teacher_processor):
            raise UserInputError("extractive QA distillation compares the teacher's and the student's logits window by "
                                 "window and position by position: the student must use the teacher's tokenizer (a "
                                 "student cut from the teacher does)")
        features = windows(run.dataset, run.processor, run.data_args)
        run.extras["features"] = features
        run.extras["scorer"] = AnswerScorer(run.dataset, features, run.data_args)
        run.collator = SpanDistillationCollator(run.processor)
        # the teacher's start/end logits of every training window, cached once (and the hidden states the loss maps)
        run.data, run.trainer_kwargs = attach_teacher_cache(run, features.remove_columns(list(POST)), run.collator,
                                                            False, self.teacher_cache_dir(run), per_token=True)
        if not run.args.label_names:  # a QA model's own label names are start/end_positions: the loss reads `labels`
            run.args.label_names = ["labels"]

    def compute_metrics(self, run: Run):
        return run.extras["scorer"]

    def record_data(self, run: Run) -> dict:
        features = run.extras.get("features")
        return {"task": self.name, "pipeline_tag": self.pipeline_tag, "metric": self.metric,
                "metric_name": self.metric_name,
                **({"windows": {s: len(f) for s, f in features.items()}} if features is not None else {}),
                "unanswerable_questions": {s: sum(not a["text"] for a in d["answers"]) for s, d in run.dataset.items()},
                "doc_stride": run.data_args.doc_stride, "max_length": run.data_args.max_length}

    def teacher_metrics(self, run: Run) -> dict:
        features = run.extras["features"]["test"]
        start, end = window_logits(run.teacher, features, run.teacher_processor, run.args.per_device_eval_batch_size,
                                   device=run.args.device)
        return run.extras["scorer"].score("test", start, end)

    def measure(self, run: Run, record, trainer, model_dir: str, report) -> None:
        """The saved reader against its teacher, both from disk: exact match and F1 (`evaluate_reader`, each with its
        own tokenizer's windows), size, latency, memory; then the card."""
        from .report import measure_against_teacher

        measure_against_teacher(self, run, record, model_dir, report)

    def evaluation(self, dataset, data_args, batch_size: int = 32):
        allow = has_unanswerable(dataset)

        def evaluate(model, tokenizer, split):
            return evaluate_reader(model, tokenizer, dataset[split], data_args, allow, batch_size)

        return evaluate

    def texts(self, dataset, split: str, data_args) -> list[str]:
        return list(dataset[split]["question"]) + list(dataset[split]["context"])


register_task(QuestionAnswering())
