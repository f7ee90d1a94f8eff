#!/usr/bin/env python
"""Distil a sequence classifier into a smaller student.

    accelerate launch scripts/distill.py --output_dir out           # embedded offline default, minutes on 2 cores
    accelerate launch scripts/distill.py --teacher_model mpnet-base --output_dir out-mpnet
    python scripts/distill.py --config recipe.yaml                   # flags and YAML/JSON config files both work

Default: Rotten Tomatoes; teacher = MiniLM-L6 fine-tuned on it (fine-tuned once here and cached, since the
checkpoint has no task head); student = 3 of the teacher's blocks; logit KD from cached teacher outputs.
Writes the student (safetensors) with its tokenizer to --output_dir, the learned distillation projections to
--output_dir/distillation/, and `distill_summary.json` with what was measured.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

from accelerate import PartialState
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hfcompress.arch import get_adapter
from hfcompress.assets import hfcompress_home, resolve_model_path
from hfcompress.cli import parse_args, setup_logging
from hfcompress.data import label_names, load_text_classification, num_labels
from hfcompress.distill import (
    DistillationArguments,
    DistillationDataCollator,
    DistillationTrainer,
    FinetuneConfig,
    init_student_from_teacher,
    prepare_teacher,
)
from hfcompress.distill.config import resolve_layer_map
from hfcompress.distill.pipeline import cache_teacher_on_train, check_teacher_labels, tokenize_for_distillation
from hfcompress.metrics import compute_classification_metrics
from hfcompress.report import count_parameters, evaluate_classifier, model_size_mb

logger = logging.getLogger("hfcompress.scripts.distill")


@dataclass
class ModelArguments:
    teacher_model: str = field(
        default="minilm-l6",
        metadata={"help": "Teacher: an offline asset name (minilm-l6, mpnet-base), a local folder or a Hub id. "
                  "Without a trained classification head it is fine-tuned first (see --finetune_teacher)."},
    )
    finetune_teacher: bool = field(
        default=True, metadata={"help": "Fine-tune (once, cached) a teacher that has no task head."}
    )
    teacher_finetune_epochs: float = field(default=1.0, metadata={"help": "Epochs of teacher fine-tuning."})
    teacher_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of teacher fine-tuning."})
    teacher_dir: str | None = field(
        default=None,
        metadata={"help": "Where the fine-tuned teacher is cached (default: $HFCOMPRESS_HOME/teachers/<name>-<dataset>)."},
    )
    student_model: str | None = field(
        default=None,
        metadata={"help": "Student checkpoint (asset name, folder or Hub id). Default: built from the teacher's "
                  "blocks (--student_layers / --student_num_layers)."},
    )
    student_layers: str | None = field(
        default=None, metadata={"help": "Teacher blocks (0-based, comma-separated) copied into the student, e.g. '0,2,4'."}
    )
    student_num_layers: int = field(
        default=3, metadata={"help": "Student depth when --student_layers is not given (evenly spaced blocks)."}
    )


@dataclass
class DataArguments:
    dataset: str = field(
        default="rotten-tomatoes",
        metadata={"help": "Dataset: 'rotten-tomatoes' (offline default), a CSV/JSON file, a saved DatasetDict folder "
                  "or a Hub id. Missing validation/test splits are carved out of train (stratified)."},
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the input text."})
    label_column: str = field(default="label", metadata={"help": "Column holding the class label."})
    max_length: int = field(default=128, metadata={"help": "Truncation length in tokens (both tokenizers)."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the stratified split when the data has none."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many validation/test rows."})
    cache_teacher: bool = field(
        default=True,
        metadata={"help": "Compute the teacher's outputs on the training set once and train from the cache. "
                  "Attention distillation still runs the teacher (attention maps are not cached)."},
    )
    teacher_cache_dir: str | None = field(
        default=None, metadata={"help": "Where the teacher cache lives (default: <output_dir>/teacher_cache)."}
    )
    teacher_batch_size: int = field(default=64, metadata={"help": "Batch size when computing the teacher cache."})
    evaluate_teacher: bool = field(
        default=True, metadata={"help": "Also measure the teacher on the test split for the summary."}
    )


@dataclass
class DistillScriptArguments(DistillationArguments):
    """Training defaults sized for the offline default on a 2-core CPU."""

    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs of distillation."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per process."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: 'no', 'steps' or 'epoch'."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to checkpoint: 'no', 'steps' or 'epoch'."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    logging_steps: float = field(default=25, metadata={"help": "Log every N steps."})


def main(argv=None):
    model_args, data_args, args = parse_args(
        (ModelArguments, DataArguments, DistillScriptArguments), argv, description=__doc__.split("\n\n")[0]
    )
    if not args.output_dir:
        raise ValueError("--output_dir is required")
    setup_logging(args)
    state = PartialState()
    set_seed(args.seed)

    # --- everything that can be wrong with the input is checked before any training -----------------------
    dataset = load_text_classification(
        data_args.dataset, data_args.text_column, data_args.label_column, seed=data_args.split_seed
    )
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples), ("test", data_args.max_eval_samples)):
        if limit is not None:
            dataset[split] = dataset[split].select(range(min(limit, len(dataset[split]))))
    names = label_names(dataset, data_args.label_column)
    teacher_dir = model_args.teacher_dir or os.path.join(
        hfcompress_home(), "teachers",
        f"{os.path.basename(os.path.normpath(model_args.teacher_model))}-{os.path.basename(os.path.normpath(data_args.dataset))}",
    )
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "latest"):
        resume = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if resume is None:
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no checkpoint in {args.output_dir}")
    elif resume and not os.path.isdir(resume):
        raise ValueError(f"--resume_from_checkpoint {resume!r} is not a checkpoint folder")

    cfg = args.distillation_config()
    if cfg.uses_hidden or cfg.uses_attention:  # layer map vs depths, before a teacher fine-tune can start
        t_cfg = AutoConfig.from_pretrained(resolve_model_path(model_args.teacher_model))
        nt = get_adapter(t_cfg).num_layers(t_cfg)
        if model_args.student_model:
            s_cfg = AutoConfig.from_pretrained(resolve_model_path(model_args.student_model))
            ns = get_adapter(s_cfg).num_layers(s_cfg)
        else:
            ns = len(model_args.student_layers.split(",")) if model_args.student_layers else model_args.student_num_layers
        resolve_layer_map(cfg.pairs, ns, nt)

    # --- teacher --------------------------------------------------------------------------------------------
    ft_cfg = FinetuneConfig(
        num_train_epochs=model_args.teacher_finetune_epochs,
        learning_rate=model_args.teacher_learning_rate,
        max_length=data_args.max_length,
        seed=args.seed,
    )
    teacher_path = prepare_teacher(
        model_args.teacher_model, dataset, teacher_dir, ft_cfg, data_args.text_column, data_args.label_column,
        finetune=model_args.finetune_teacher,
    )
    state.wait_for_everyone()
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path)
    check_teacher_labels(teacher.config, dataset, data_args.label_column)
    teacher_tok = AutoTokenizer.from_pretrained(teacher_path)

    # --- student --------------------------------------------------------------------------------------------
    if model_args.student_model:
        s_path = resolve_model_path(model_args.student_model)
        extra = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}} if names else {}
        student = AutoModelForSequenceClassification.from_pretrained(s_path, num_labels=num_labels(dataset, data_args.label_column), **extra)
        student_tok = AutoTokenizer.from_pretrained(s_path)
    else:
        layers = [int(x) for x in model_args.student_layers.split(",")] if model_args.student_layers else None
        student = init_student_from_teacher(teacher, layers=layers, num_layers=model_args.student_num_layers)
        student_tok = teacher_tok

    # --- data and teacher cache -----------------------------------------------------------------------------
    tokenized, separate = tokenize_for_distillation(
        dataset, student_tok, teacher_tok, data_args.text_column, data_args.label_column, data_args.max_length
    )
    collator = DistillationDataCollator(student_tok, teacher_tok if separate else None)
    trainer_kwargs = {"teacher_model": teacher}
    cache_meta = None
    if data_args.cache_teacher:
        from hfcompress.distill import DistillationLoss

        probe = DistillationLoss(cfg, student.config, teacher_config=teacher.config)  # validates the layer map
        hidden_layers = probe.teacher_hidden_layers
        tokenized, cache_meta = cache_teacher_on_train(
            tokenized, teacher_path, lambda: teacher, collator,
            data_args.teacher_cache_dir or os.path.join(args.output_dir, "teacher_cache"),
            hidden_layers, separate, data_args.teacher_batch_size, args.main_process_first,
        )
        trainer_kwargs = {
            "teacher_model": teacher if cfg.uses_attention else None,
            "teacher_config": teacher.config,
            "cached_hidden_layers": cache_meta["hidden_layers"],
        }
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"] if args.eval_strategy != "no" else None,
        data_collator=collator,
        processing_class=student_tok,
        compute_metrics=compute_classification_metrics,
        **trainer_kwargs,
    )
    train_out = trainer.train(resume_from_checkpoint=resume)
    val_metrics = trainer.evaluate(tokenized["validation"], metric_key_prefix="validation")
    test_metrics = trainer.evaluate(tokenized["test"], metric_key_prefix="test")
    trainer.save_model(args.output_dir)
    if state.is_main_process:
        os.makedirs(os.path.join(args.output_dir, "distillation"), exist_ok=True)
        trainer.distillation_loss.save_projections(os.path.join(args.output_dir, "distillation"))
        with open(os.path.join(args.output_dir, "distillation", "distillation_config.json"), "w") as fh:
            json.dump({**cfg.to_dict(), "layer_map_resolved": trainer.distillation_loss.layer_map}, fh, indent=2)
        summary = {
            "teacher": teacher_path,
            "teacher_model_arg": model_args.teacher_model,
            "student_layers": getattr(student.config, "hfcompress_student_layers", None),
            "student_model": model_args.student_model,
            "dataset": data_args.dataset,
            "num_processes": state.num_processes,
            "distillation": cfg.to_dict(),
            "teacher_cache": {k: v for k, v in (cache_meta or {}).items() if k != "teacher_config"} or None,
            "resumed_from": resume,
            "train_runtime_s": train_out.metrics.get("train_runtime"),
            "train_loss": train_out.training_loss,
            "validation": val_metrics,
            "test": test_metrics,
            "student_parameters": count_parameters(trainer.model),
            "teacher_parameters": count_parameters(teacher),
            "student_size_mb": model_size_mb(trainer.model),
            "teacher_size_mb": model_size_mb(teacher),
        }
        if data_args.evaluate_teacher:
            summary["teacher_test"] = evaluate_classifier(
                teacher.to(args.device), teacher_tok, dataset["test"][data_args.text_column],
                dataset["test"][data_args.label_column], max_length=data_args.max_length, desc="Teacher on test",
            )
        with open(os.path.join(args.output_dir, "distill_summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2, default=str)
        logger.info("Student test accuracy %.4f (teacher %s); saved to %s", test_metrics.get("test_accuracy", float("nan")),
                    summary.get("teacher_test", {}).get("accuracy"), args.output_dir)
    state.wait_for_everyone()
    return trainer


if __name__ == "__main__":
    main()
