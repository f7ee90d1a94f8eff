"""Fine-tuning a classifier with a plain `Trainer` (a teacher, a no-KD baseline, a recovery run), and getting a
teacher with a task head: detect one, or fine-tune (and cache) one.

A sentence-embedding checkpoint such as all-mpnet-base-v2 has no classifier: `from_pretrained` initialises one
at random, and distilling from a random head teaches nothing. `prepare_teacher` tells the two cases apart from
the loading report, and fine-tunes the headless one once, caching the result under a key made of everything that
affects it, so a second run (or a resumed one) reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field

import torch
from datasets import DatasetDict
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from ..assets import resolve_model_path
from ..checkpoints import latest_complete_checkpoint, remove_checkpoints, save_trainer_model, with_faithful_resume
from ..data import label_names, num_labels, tokenize
from ..errors import UserInputError
from ..files import write_text_atomic
from ..fingerprint import content_fingerprint
from ..hardware import bf16_training_args
from ..metrics import compute_classification_metrics
from .arguments import _has_accelerator

logger = logging.getLogger(__name__)

FINETUNE_SUMMARY = "finetune_summary.json"


@dataclass
class FinetuneConfig:
    """How a headless model is fine-tuned into a classifier (teacher, or a no-KD baseline)."""

    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs of fine-tuning."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (linear decay, 6% warm-up)."})
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate of the new task head (every weight outside the encoder), on the same "
                  "schedule; default: --learning_rate. A sentence-embedding encoder's outputs can be small "
                  "(all-mpnet-base-v2's last layer: per-dimension std 0.09, MiniLM-L6's 0.38), so a head at the "
                  "encoder's rate moves its logits slowly and a short fine-tune ends near the prior."},
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Fraction of steps of linear warm-up."})
    max_length: int = field(default=128, metadata={"help": "Truncation length in tokens."})
    group_by_length: bool = field(
        default=False,
        metadata={"help": "Batch examples of similar length (the Trainer's train_sampling_strategy "
                  "'group_by_length'): batches are padded to their longest example, so this cuts padding, e.g. "
                  "BoolQ question+passage at 256 tokens from 251 padded tokens per example to 132 (mean 130)."},
    )
    seed: int = field(default=42, metadata={"help": "Random seed of the fine-tuning run."})
    max_steps: int = field(default=-1, metadata={"help": "If > 0, stop after this many steps (for smoke runs)."})
    bf16: bool = field(
        default=False,
        metadata={"help": "Train under bfloat16 autocast (about 1.4-1.9x faster on CPUs with AVX512-BF16/AMX; "
                  "weights stay float32)."},
    )
    truncation_side: str = field(
        default="right",
        metadata={"help": "Which end of a text longer than max_length is cut: 'right' keeps the head, 'left' the tail."},
    )

    def __post_init__(self):
        # Normalised so that 1 and 1.0 epochs give the same cache key.
        for name in ("num_train_epochs", "learning_rate", "weight_decay", "warmup_ratio"):
            setattr(self, name, float(getattr(self, name)))
        if self.head_learning_rate is not None:
            self.head_learning_rate = float(self.head_learning_rate)
            if self.head_learning_rate <= 0:
                raise ValueError(f"head_learning_rate must be > 0, got {self.head_learning_rate}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "max_length", "seed", "max_steps"):
            setattr(self, name, int(getattr(self, name)))
        self.bf16 = bool(self.bf16)
        self.group_by_length = bool(self.group_by_length)
        if self.truncation_side not in ("right", "left"):
            raise ValueError(f"truncation_side must be 'right' or 'left', got {self.truncation_side!r}")


def has_task_head(model_name_or_path: str, auto_class=None) -> bool:
    """True if the checkpoint carries trained sequence-classification weights (none are newly initialised).

    The head is judged as saved, with its own label count: a head for other labels is still a head, and is
    rejected by the label checks rather than silently replaced.
    """
    import transformers

    path = resolve_model_path(model_name_or_path)
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # a probe: the loading report is printed when the model is really used
    try:
        _, info = (auto_class or AutoModelForSequenceClassification).from_pretrained(path, output_loading_info=True)
    finally:
        transformers.logging.set_verbosity(level)
    return not info["missing_keys"]


# settings added after cache keys were first made, with the value that leaves a fine-tune as it was before them
_NEUTRAL = {"head_learning_rate": None, "group_by_length": False}


def config_for_key(cfg: FinetuneConfig) -> dict:
    """`cfg` as it enters a cache key: a later setting left at its neutral value is left out, so keys made before
    the setting existed still match."""
    return {k: v for k, v in asdict(cfg).items() if not (k in _NEUTRAL and v == _NEUTRAL[k])}


class HeadRateTrainer(Trainer):
    """A `Trainer` whose optimizer gives the task head (every parameter outside ``model.base_model_prefix``) its
    own peak learning rate; weight decay split as the Trainer splits it, the scheduler scales every group alike."""

    def __init__(self, *args, head_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_learning_rate = head_learning_rate

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.head_learning_rate is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        prefix = f"{opt_model.base_model_prefix}."
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in opt_model.named_parameters():
            if p.requires_grad:
                groups.setdefault((not name.startswith(prefix), name in decay), []).append(p)
        if not any(head for head, _ in groups):
            raise ValueError(f"head_learning_rate: no parameter outside {prefix!r} to give it to")
        cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = cls(
            [{"params": ps, "weight_decay": self.args.weight_decay if dec else 0.0,
              **({"lr": self.head_learning_rate} if head else {})} for (head, dec), ps in groups.items()],
            **kwargs,
        )
        return self.optimizer


def _cache_key(
    model_path: str, dataset: DatasetDict, cfg: FinetuneConfig, text_column: str, label_column: str,
    layers: list[int] | None = None, text_pair: tuple | None = None,
) -> str:
    blob = json.dumps(
        {
            "model": os.path.abspath(model_path) if os.path.exists(model_path) else model_path,
            "layers": layers,
            "data": content_fingerprint(dataset["train"]),
            "cfg": config_for_key(cfg),
            "columns": [text_column, label_column] + (list(text_pair) if text_pair else []),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finetune_classifier(
    model_name_or_path: str,
    dataset: DatasetDict,
    output_dir: str,
    config: FinetuneConfig | None = None,
    text_column: str = "text",
    label_column: str = "label",
    model=None,
    report_split: str = "validation",
    callbacks: list | None = None,
    text_pair_column: str | None = None,
    pair_truncation: str = "only_second",
) -> dict:
    """Fine-tune a sequence classifier with a plain `Trainer` and save it (safetensors) with its tokenizer.

    `text_pair_column`: sentence pairs, each row's two texts tokenized together (cut as `pair_truncation` says).

    `callbacks` join the Trainer (a compression method's callback recovers accuracy with the same loop).
    `model` may be given to fine-tune an already-built model (e.g. a student initialised from layers of another);
    otherwise it is loaded from `model_name_or_path`. Returns the summary also written to `finetune_summary.json`.
    The result is cached: an `output_dir` whose summary has the same key is reused without training.
    """
    cfg = config or FinetuneConfig()
    path = resolve_model_path(model_name_or_path)
    # A model passed in is cacheable when it says how it was built (a student cut from `path`'s blocks).
    layers = getattr(model.config, "hfcompress_student_layers", None) if model is not None else None
    pair = (text_pair_column, pair_truncation) if text_pair_column else None
    key = _cache_key(path, dataset, cfg, text_column, label_column, layers, pair) if model is None or layers else None
    cached = cached_finetune(output_dir, key, model_name_or_path)
    if cached is not None:
        return cached
    logger.info("Fine-tuning %s for %s epochs (result cached in %s)", model_name_or_path, cfg.num_train_epochs, output_dir)
    names = label_names(dataset, label_column)
    n = num_labels(dataset, label_column)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if model is None:
        set_seed(cfg.seed)  # the new head's initialisation is part of what the cache key promises
        extra = {"id2label": dict(enumerate(names)), "label2id": {v: i for i, v in enumerate(names)}} if names else {}
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=n, **extra)
    tokenized = tokenize(dataset, tokenizer, text_column, cfg.max_length, truncation_side=cfg.truncation_side,
                         text_pair_column=text_pair_column, pair_truncation=pair_truncation)
    if label_column != "labels":
        tokenized = tokenized.rename_column(label_column, "labels")
    return finetune_and_save(model, tokenizer, tokenized, DataCollatorWithPadding(tokenizer), cfg, output_dir,
                          {"model": model_name_or_path, "cache_key": key}, report_split, callbacks)


def cached_finetune(output_dir: str, key: str | None, name: str) -> dict | None:
    """The summary of a fine-tune already in `output_dir` under the same `key` (marked ``reused``), else None."""
    summary_path = os.path.join(output_dir, FINETUNE_SUMMARY)
    if not key or not os.path.exists(summary_path):
        return None
    with open(summary_path) as fh:
        summary = json.load(fh)
    if summary.get("cache_key") != key:
        return None
    logger.info("Reusing the fine-tuned %s cached in %s (key %s)", name, output_dir, key)
    summary["reused"] = True
    return summary


_KEY_FILE = "finetune_key.txt"


def _resumable_checkpoint(trainer_dir: str, key: str | None) -> str | None:
    """The newest complete checkpoint in `trainer_dir` written by a fine-tune of the same `key` (None without a key:
    nothing to tell a stale checkpoint from a resumable one). Checkpoints of another key are removed; the key is
    written for the run about to start."""
    found = None
    if key and os.path.exists(os.path.join(trainer_dir, _KEY_FILE)):
        with open(os.path.join(trainer_dir, _KEY_FILE)) as fh:
            if fh.read().strip() == key:
                found = latest_complete_checkpoint(trainer_dir)
    if found is None and os.path.isdir(trainer_dir):
        remove_checkpoints(trainer_dir)  # another fine-tune's (or an unkeyed one's): not this run's to resume
    if key:
        os.makedirs(trainer_dir, exist_ok=True)
        write_text_atomic(os.path.join(trainer_dir, _KEY_FILE), key + "\n")
    return found


def finetune_and_save(model, processing_class, data: DatasetDict, collator, cfg: FinetuneConfig, output_dir: str,
                   summary: dict, report_split: str = "validation", callbacks: list | None = None,
                   keep_columns: bool = False, compute_metrics=None) -> dict:
    """Train `model` on ``data["train"]`` with a plain `Trainer` (labels in ``labels``), evaluate on `report_split`,
    save it with `processing_class` into `output_dir` and write `finetune_summary.json` (`summary` plus what the run
    measured). `keep_columns`: pass every column to `collator` (one that featurizes raw audio itself, or makes the
    model's label arguments from a column its forward does not name, as the QA reader's start/end positions).
    `compute_metrics`: the evaluation's metrics (default: the classifiers' accuracy and F1).

    Resumable: a checkpoint is written at every epoch end into ``<output_dir>/trainer`` (the newest two kept), tagged
    with ``summary["cache_key"]``; a fine-tune killed from outside and started again with the same key resumes from
    the newest complete one and ends with the model the uninterrupted run would have saved. Checkpoints of another
    key are removed first; all are removed once the model is saved. Without a key (a model passed in that says
    nothing of how it was built) nothing is checkpointed."""
    trainer_dir = os.path.join(output_dir, "trainer")
    key = summary.get("cache_key")
    resume = _resumable_checkpoint(trainer_dir, key)
    args = TrainingArguments(
        output_dir=trainer_dir,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,
        seed=cfg.seed,
        eval_strategy="no",
        save_strategy="epoch" if key else "no",  # unkeyed: no later run could tell them from another's
        # two: the Trainer rotates before a new checkpoint is marked complete, so the one before must stay
        save_total_limit=2,
        save_only_model=False,
        logging_steps=50,
        report_to=[],
        dataloader_pin_memory=_has_accelerator(),
        # BERT's own loss ignores num_items_in_batch; averaging across devices would double it on 2 ranks.
        average_tokens_across_devices=False,
        disable_tqdm=False,
        **bf16_training_args(cfg.bf16),
        remove_unused_columns=not keep_columns,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
    )
    trainer = HeadRateTrainer(
        model=model,
        args=args,
        head_learning_rate=cfg.head_learning_rate,
        train_dataset=data["train"],
        eval_dataset=data[report_split] if report_split in data else None,
        data_collator=collator,
        processing_class=processing_class,
        compute_metrics=compute_metrics or compute_classification_metrics,
        callbacks=with_faithful_resume(callbacks or []),
    )
    if resume:
        logger.info("Resuming the fine-tune from %s", resume)
    train_out = trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate() if trainer.eval_dataset is not None else {}
    save_trainer_model(trainer, output_dir)
    if trainer.is_world_process_zero():  # the model is saved: the checkpoints (weights + optimizer) are not needed
        remove_checkpoints(trainer_dir)
    summary = {
        **summary,
        "config": asdict(cfg),
        "resumed_from": os.path.basename(resume) if resume else None,
        "train_runtime_s": train_out.metrics.get("train_runtime"),
        "train_loss": train_out.training_loss,
        f"{report_split}_metrics": metrics,
        "reused": False,
    }
    if trainer.is_world_process_zero():
        with open(os.path.join(output_dir, FINETUNE_SUMMARY), "w") as fh:
            json.dump(summary, fh, indent=2)
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return summary


def prepare_teacher(
    model_name_or_path: str,
    dataset: DatasetDict | None,
    cache_dir: str,
    config: FinetuneConfig | None = None,
    text_column: str = "text",
    label_column: str = "label",
    finetune: bool = True,
    text_pair_column: str | None = None,
    pair_truncation: str = "only_second",
) -> str:
    """Return a path to a teacher with a trained task head: the given one, or a cached fine-tune of it.

    Raises a clear error when the teacher has no head and fine-tuning is not possible (disabled, or no labelled
    training data).
    """
    if has_task_head(model_name_or_path):
        return resolve_model_path(model_name_or_path)
    if not finetune:
        raise UserInputError(
            f"teacher {model_name_or_path!r} has no trained classification head (its classifier weights would be "
            "initialised at random) and teacher fine-tuning is disabled; pass a fine-tuned teacher or enable "
            "--finetune_teacher"
        )
    if dataset is None or "train" not in dataset or label_column not in dataset["train"].column_names:
        raise UserInputError(
            f"teacher {model_name_or_path!r} has no trained classification head and there is no labelled 'train' "
            f"split (column {label_column!r}) to fine-tune it on; pass a fine-tuned teacher"
        )
    logger.info("Teacher %s has no trained task head: it gets one by fine-tuning, done once and cached", model_name_or_path)
    finetune_classifier(model_name_or_path, dataset, cache_dir, config, text_column, label_column,
                        text_pair_column=text_pair_column, pair_truncation=pair_truncation)
    return cache_dir
