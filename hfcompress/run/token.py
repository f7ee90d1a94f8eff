"""Token classification (NER, chunking) through the one run skeleton: the task adapter, the teacher's one-time
fine-tune, and entity-level evaluation.

Chosen (`TokenClassification.select`) when the teacher is a ``...ForTokenClassification`` checkpoint or the data is
token-tagged (a CoNLL-style file, JSON Lines with token and tag lists, a saved dataset with both columns: see
`hfcompress.tagging`). What differs from text classification:

    data    = words and word tags; tag names become id2label (``O`` first); sub-tokens labelled by `align_labels`
              (first sub-token, or all with --label_all_subtokens for training; evaluation always scores words)
    teacher = a ...ForTokenClassification with a trained head, or a headless encoder fine-tuned once (cached)
    student = blocks of the teacher (--student_layers / --student_num_layers), or --student_model with a new head
    loss    = the one `DistillationLoss`: per-token T^2 * KL and cross-entropy over labelled sub-tokens, summed and
              divided by the labelled sub-tokens of the whole accumulated batch; hidden-state and relation terms
              as for classifiers, each sentence weighted by its labelled sub-tokens
    metric  = entity-level precision / recall / F1 (seqeval's default mode), overall and per type, through the
              local ``entity_f1`` evaluate module

The teacher's outputs on the training split are computed once and cached (`--cache_teacher`, as for classifiers):
its logits for every token (`[T_i, C]` per sentence), and the hidden states the loss maps; attention-map terms still
run it online. A teacher whose tokenizer differs from the student's reads its own token ids; the per-token terms then
need both tokenizers to put each word's first sub-token at the same position (MPNet and MiniLM do), which is checked
on every row before training.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from datasets import DatasetDict
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, set_seed

from ..assets import resolve_model_path
from ..data import set_input_length
from ..distill import TokenDistillationCollator, init_student_from_teacher
from ..errors import UserInputError
from ..metrics import entity_metrics
from ..tagging import labelled_positions, load_token_classification, looks_tagged, tag_names, tokenize_tagged
from . import steps
from .data import attach_teacher_cache, tokenizers_align
from .finetune import FinetuneConfig, _cache_key, cached_finetune, finetune_and_save, has_task_head
from .skeleton import Run, TaskAdapter, register_task

logger = logging.getLogger(__name__)

METRIC_NAME = "entity-level F1 (seqeval default mode, micro over entities)"


def _architectures(name: str) -> list[str]:
    try:
        return list(getattr(AutoConfig.from_pretrained(resolve_model_path(name)), "architectures", None) or [])
    except Exception:  # not a local model nor a reachable Hub id: the text path reports it
        return []


def is_token_classifier(architectures) -> bool:
    return any(a.endswith("ForTokenClassification") for a in architectures)


def is_sequence_classifier(architectures) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def id2label_kwargs(names: list[str]) -> dict:
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def token_metrics(names: list[str]):
    """`compute_metrics` for the Trainer: entity-level scores of the argmax tags at the labelled (word) positions."""

    def compute(eval_pred) -> dict:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        preds, labels = np.asarray(logits).argmax(-1), np.asarray(eval_pred.label_ids)
        pred_tags, ref_tags = [], []
        for p, lab in zip(preds, labels):
            keep = lab != -100
            pred_tags.append([names[i] for i in p[keep]])
            ref_tags.append([names[i] for i in lab[keep]])
        return entity_metrics(pred_tags, ref_tags)

    return compute


@torch.no_grad()
def evaluate_tagger(model, tokenizer, split, names: list[str], max_length: int, batch_size: int = 32,
                    device=None) -> dict:
    """Entity-level scores of any token classifier on a split of words and tags, tokenized by its own tokenizer
    (first sub-token of each word scored)."""
    data = tokenize_tagged(DatasetDict(test=split), tokenizer, max_length)["test"]
    collator = TokenDistillationCollator(tokenizer)
    model = model.eval() if device is None else model.to(device).eval()
    device = model.device  # a transformers model's, or an ONNX Runtime model's (the CPU)
    keep = [*tokenizer.model_input_names, "labels"]
    scorer = token_metrics(names)
    preds, refs = [], []
    for start in range(0, len(data), batch_size):
        rows = [{k: r[k] for k in keep if k in r} for r in data.select(range(start, min(start + batch_size, len(data))))]
        batch = collator(rows)
        labels = batch.pop("labels")
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
        for lg, lab in zip(logits, labels.numpy()):
            preds.append(lg)
            refs.append(lab)
    width = max(p.shape[0] for p in preds)
    logits = np.zeros((len(preds), width, len(names)), np.float32)
    labels = np.full((len(preds), width), -100)
    for i, (p, r) in enumerate(zip(preds, refs)):
        logits[i, : p.shape[0]], labels[i, : r.shape[0]] = p, r
    return scorer(type("EvalPrediction", (), {"predictions": logits, "label_ids": labels})())


def finetune_tagger(model_name_or_path: str, dataset, output_dir: str, cfg: FinetuneConfig,
                    label_all_subtokens: bool = False) -> dict:
    """Fine-tune a token classifier with a plain `Trainer` and save it (cached under a key of the model, the data
    and the settings, as `finetune_classifier` does for sequence classifiers)."""
    path = resolve_model_path(model_name_or_path)
    names = tag_names(dataset)
    key = _cache_key(path, dataset, cfg, "tokens", f"tags:{'all' if label_all_subtokens else 'first'}:token")
    cached = cached_finetune(output_dir, key, model_name_or_path)
    if cached is not None:
        return cached
    logger.info("Fine-tuning %s as a token classifier for %s epochs (cached in %s)", model_name_or_path,
                cfg.num_train_epochs, output_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    set_seed(cfg.seed)
    model = AutoModelForTokenClassification.from_pretrained(path, **id2label_kwargs(names))
    data = tokenize_tagged(dataset, tokenizer, cfg.max_length, label_all_subtokens)
    data = data.remove_columns(["tokens", "tags"])
    return finetune_and_save(model, tokenizer, data, TokenDistillationCollator(tokenizer), cfg, output_dir,
                             {"model": model_name_or_path, "cache_key": key, "task": "token-classification"},
                             compute_metrics=token_metrics(names))


def check_teacher_tags(teacher_config, names: list[str]) -> None:
    t_names = [teacher_config.id2label[i] for i in range(teacher_config.num_labels)]
    if len(t_names) != len(names):
        raise UserInputError(f"teacher predicts {len(t_names)} tags {t_names} but the data has {len(names)}: {names}")
    if not all(str(n).startswith("LABEL_") for n in t_names) and t_names != names:
        raise UserInputError(f"teacher tag names {t_names} differ from the data's {names} (same order needed: O first, "
                             "then by entity type, B before I)")


class TokenClassification(TaskAdapter):
    """Token classification (see the module docstring)."""

    name = "token-classification"
    priority = 20  # after the speech tasks, before sentence-level text classification
    pipeline_tag = "token-classification"
    metric = "f1"  # entity-level F1 (``test_f1``); per type ``test_<type>_f1``
    metric_name = METRIC_NAME
    metric_module = "entity_f1"
    auto_class = AutoModelForTokenClassification

    def select(self, model_args, data_args, speech):
        if is_token_classifier(_architectures(model_args.teacher_model)):
            return self
        if looks_tagged(data_args.dataset, data_args.tokens_column, data_args.tags_column):
            return self
        return None

    # ---- checks
    def check_inputs(self, run: Run) -> None:
        model_args, data_args = run.model_args, run.data_args
        teacher_arch = _architectures(model_args.teacher_model)
        if is_sequence_classifier(teacher_arch) and not is_token_classifier(teacher_arch):
            raise UserInputError(f"--teacher_model {model_args.teacher_model!r} is a sequence classifier "
                                 f"({teacher_arch[0]}) but the data is token-tagged: pass a ...ForTokenClassification "
                                 "teacher or a headless encoder (fine-tuned on the tags first)")
        if model_args.student_model:
            student_arch = _architectures(model_args.student_model)
            if is_sequence_classifier(student_arch) and not is_token_classifier(student_arch):
                raise UserInputError(f"--student_model {model_args.student_model!r} is a sequence classifier "
                                     f"({student_arch[0]}) but the teacher is a token classifier: a token-classification "
                                     "student is needed (pass a ...ForTokenClassification checkpoint or a headless "
                                     "encoder, or leave --student_model out to cut the student from the teacher)")
        if data_args.text_pair_column:
            raise UserInputError("--text_pair_column is for sentence-pair classification; token classification reads "
                                 "one sentence of words per row")

    def load_data(self, run: Run):
        d = run.data_args
        dataset = load_token_classification(d.dataset, d.tokens_column, d.tags_column, seed=d.split_seed)
        return steps.limit_splits(dataset, d), d.dataset

    # ---- models
    def load_teacher(self, run: Run):
        model_args, data_args = run.model_args, run.data_args
        names = tag_names(run.dataset)
        path = resolve_model_path(model_args.teacher_model)
        if not has_task_head(model_args.teacher_model, AutoModelForTokenClassification):
            if not model_args.finetune_teacher:
                raise UserInputError(f"teacher {model_args.teacher_model!r} has no trained token-classification head "
                                     "and teacher fine-tuning is disabled; pass a fine-tuned teacher or enable "
                                     "--finetune_teacher")
            cfg = steps.teacher_finetune_config(model_args, run.args, max_length=data_args.max_length)
            path = model_args.teacher_dir or steps.default_teacher_dir(model_args, data_args) + "-tokens"
            if run.state is None or run.state.is_main_process:
                finetune_tagger(model_args.teacher_model, run.dataset, path, cfg, data_args.label_all_subtokens)
            if run.state is not None:
                run.state.wait_for_everyone()
        teacher = AutoModelForTokenClassification.from_pretrained(path)
        check_teacher_tags(teacher.config, names)
        teacher.config.id2label, teacher.config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
        tokenizer = AutoTokenizer.from_pretrained(path)
        return teacher, tokenizer, path

    def build_student(self, run: Run):
        model_args = run.model_args
        names = tag_names(run.dataset)
        if model_args.student_model:
            path = resolve_model_path(model_args.student_model)
            if _is_structured(path):  # heads/neurons cut out: only its own modeling code builds it
                from ..prune.structured_io import load_structured

                student = load_structured(path, **id2label_kwargs(names))
            else:
                student = AutoModelForTokenClassification.from_pretrained(path, **id2label_kwargs(names))
            tokenizer = AutoTokenizer.from_pretrained(path)
            if model_args.student_layers:
                student = init_student_from_teacher(student, layers=model_args.student_layer_list())
            return student.train(), set_input_length(tokenizer, run.data_args.max_length)
        student, tokenizer = steps.build_student(model_args, run.data_args, run.dataset, run.teacher,
                                                 run.teacher_processor)
        return student, set_input_length(tokenizer, run.data_args.max_length)

    # ---- data and trainer
    def prepare(self, run: Run) -> None:
        d = run.data_args
        student_tok, teacher_tok = run.processor, run.teacher_processor
        separate = not tokenizers_align(student_tok, teacher_tok)
        if separate:
            logger.info("Teacher and student tokenizers differ: each tokenizes the words itself")
        parts = {}
        # Training labels as asked; evaluation scores words (first sub-tokens) whatever --label_all_subtokens says.
        for splits, every in (("train",), d.label_all_subtokens), (("validation", "test"), False):
            part = DatasetDict({s: run.dataset[s] for s in splits})
            part = tokenize_tagged(part, student_tok, d.max_length, every)
            if separate:
                part = tokenize_tagged(part, teacher_tok, d.max_length, every, prefix="teacher_")
                self.check_positions(part)
            parts.update(part)
        train = DatasetDict(parts)
        keep = {"labels", *student_tok.model_input_names}
        if separate:
            keep |= {f"teacher_{k}" for k in teacher_tok.model_input_names}
        data = train.remove_columns([c for c in train["train"].column_names if c not in keep])
        run.collator = TokenDistillationCollator(student_tok, teacher_tok if separate else None)
        # the teacher's logits for every token of the train split, cached once (and the hidden states the loss maps)
        run.data, run.trainer_kwargs = attach_teacher_cache(run, data, run.collator, separate,
                                                            self.teacher_cache_dir(run), per_token=True)

    @staticmethod
    def check_positions(data) -> None:
        """Per-token KD compares the two models position by position: each labelled sub-token must sit at the same
        position in both tokenizations (refused otherwise, naming the first sentence that differs)."""
        for split, ds in data.items():
            for i, (s, t) in enumerate(zip(ds["labels"], ds["teacher_labels"])):
                if labelled_positions(s) != labelled_positions(t) or len(s) != len(t):
                    raise UserInputError(
                        f"{split} sentence {i + 1} ({' '.join(ds[i]['tokens'][:12])}...): the teacher's and the "
                        "student's tokenizers split it into different sub-tokens, so per-token distillation cannot "
                        "pair their outputs; use a student with the teacher's tokenizer (e.g. cut from the teacher) "
                        "or a pair of tokenizers that split words alike")

    def compute_metrics(self, run: Run):
        return token_metrics(tag_names(run.dataset))

    # ---- the record
    def record_data(self, run: Run) -> dict:
        names = tag_names(run.dataset)
        return {"task": self.name, "pipeline_tag": self.pipeline_tag, "metric": self.metric,
                "metric_name": self.metric_name, "label_names": dict(enumerate(names)),
                "entity_types": sorted({n[2:] for n in names if n != "O"}),
                "label_all_subtokens": run.data_args.label_all_subtokens}

    def teacher_metrics(self, run: Run) -> dict:
        return evaluate_tagger(run.teacher, run.teacher_processor, run.dataset["test"], tag_names(run.dataset),
                               run.data_args.max_length, run.args.per_device_eval_batch_size, device=run.args.device)

    def measure(self, run: Run, record, trainer, model_dir: str, report) -> None:
        """The saved tagger against its teacher, both from disk: entity-level scores (`evaluate_tagger`), size,
        latency, memory; then the card."""
        from .report import measure_against_teacher

        measure_against_teacher(self, run, record, model_dir, report)

    def evaluation(self, dataset, data_args, batch_size: int = 32):
        names = tag_names(dataset)

        def evaluate(model, tokenizer, split):
            return evaluate_tagger(model, tokenizer, dataset[split], names, data_args.max_length, batch_size)

        return evaluate

    def texts(self, dataset, split: str, data_args) -> list[str]:
        return [" ".join(words) for words in dataset[split]["tokens"]]


def _is_structured(path: str) -> bool:
    from ..prune.structured_io import is_structured_checkpoint

    return os.path.isdir(path) and is_structured_checkpoint(path)


register_task(TokenClassification())
