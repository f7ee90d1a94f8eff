#!/usr/bin/env python
"""Knowledge distillation added to an ordinary fine-tuning script that uses a plain `transformers.Trainer`.

Everything here is a standard "fine-tune a text classifier" script; the lines marked `# KD` are what distillation
adds to it: build the loss from a fine-tuned teacher and attach it to the student, tokenize the text a second time
for the teacher when its tokenizer differs, batch with `DistillationDataCollator`, and pass
`compute_loss_func=kd, callbacks=[DistillationCallback(kd)]` to the Trainer.

    python examples/distill_with_plain_trainer.py          # defaults: the MiniLM teacher `make distill` fine-tunes
    python examples/distill_with_plain_trainer.py --teacher path/to/fine-tuned-teacher --student minilm-l6 \\
        --dataset reviews.csv --max_train_samples 2000 --output_dir out/plain-kd --num_train_epochs 2

Every `TrainingArguments` flag works as well (`--per_device_train_batch_size`, `--learning_rate`, ...).
The teacher must already be fine-tuned on the task: a checkpoint whose classification head would be initialised at
random (a plain encoder such as `mpnet-base`) is refused before training.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

# hfcompress before transformers' Trainer: importing Trainer imports bitsandbytes (through peft), which on a CPU with
# AVX512-BF16 asks the Hub for a kernel and prints "Failed to load CPU gemm_4bit_forward ..." offline; once
# hfcompress is imported, bitsandbytes keeps to its own CPU code and says nothing.
import hfcompress  # noqa: F401

# isort: split
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

from hfcompress import DistillationCallback, DistillationConfig, DistillationDataCollator, DistillationLoss
from hfcompress.assets import hfcompress_home, resolve_model_path
from hfcompress.data import label_names, load_text_classification, num_labels, tokenize
from hfcompress.errors import UserInputError
from hfcompress.metrics import compute_classification_metrics

# Where `make distill` caches the MiniLM-L6 teacher it fine-tunes on Rotten Tomatoes.
DEFAULT_TEACHER = os.path.join(hfcompress_home(), "teachers", "minilm-l6-rotten-tomatoes")


@dataclass
class ScriptArguments:
    teacher: str = field(
        default=DEFAULT_TEACHER,
        metadata={"help": "fine-tuned teacher: a folder, offline asset name or Hub id (default: the MiniLM-L6 "
                          "teacher that `make distill` fine-tunes and caches)"},
    )
    student: str = field(default="minilm-l6", metadata={"help": "student checkpoint: folder, asset name or Hub id"})
    dataset: str = field(default="rotten-tomatoes", metadata={"help": "asset name, CSV/JSON file or folder, Hub id"})
    text_column: str = "text"
    label_column: str = "label"
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training rows"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only the first N validation rows"})
    max_length: int = 128
    temperature: float = 2.0
    alpha: float = field(default=0.5, metadata={"help": "weight of the KD term; 1 - alpha goes to the hard labels"})


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ScriptArguments, TrainingArguments))
    parser.set_defaults(output_dir="out/distill_with_plain_trainer", report_to="none", save_strategy="no")
    script, training_args = parser.parse_args_into_dataclasses(args=argv)
    if script.teacher == DEFAULT_TEACHER and not os.path.isdir(DEFAULT_TEACHER):
        raise UserInputError(
            f"--teacher: found no fine-tuned teacher at the default {DEFAULT_TEACHER}; expected a fine-tuned teacher "
            "folder: run `make distill` once (it fine-tunes and caches that teacher) or pass --teacher PATH"
        )

    # ---- data: a text-classification DatasetDict with train/validation/test ----
    data = load_text_classification(script.dataset, script.text_column, script.label_column, seed=training_args.seed)
    if script.label_column != "label":
        data = data.rename_column(script.label_column, "label")
    train, evaluation = data["train"], data["validation"]
    if script.max_train_samples is not None:
        train = train.select(range(min(script.max_train_samples, len(train))))
    if script.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(script.max_eval_samples, len(evaluation))))

    # ---- models ----
    student_path = resolve_model_path(script.student)
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    names = label_names(data["train"], "label")
    labels = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}} if names else {}
    student = AutoModelForSequenceClassification.from_pretrained(
        student_path, num_labels=num_labels(data["train"], "label"), **labels
    )
    teacher_path = resolve_model_path(script.teacher)  # KD
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path)  # KD
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_path)  # KD

    # ---- distillation loss, attached to the student (checks the teacher's head and labels now) ----
    kd = DistillationLoss(  # KD
        DistillationConfig(alpha=script.alpha, temperature=script.temperature), student.config, teacher,
        teacher_tokenizer=teacher_tokenizer, student_tokenizer=tokenizer,
    ).attach(student)

    # ---- tokenize: the student's ids, and the teacher's own ids when its tokenizer differs ----
    train = tokenize(train, tokenizer, script.text_column, script.max_length)
    if kd.teacher_needs_own_inputs:  # KD
        train = tokenize(train, teacher_tokenizer, script.text_column, script.max_length, prefix="teacher_")  # KD
    evaluation = tokenize(evaluation, tokenizer, script.text_column, script.max_length)

    trainer = Trainer(
        model=student,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DistillationDataCollator(tokenizer, teacher_tokenizer),  # KD
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
        compute_loss_func=kd,  # KD
        callbacks=[DistillationCallback(kd)],  # KD
    )
    result = trainer.train()
    metrics = {**result.metrics, **trainer.evaluate()}
    trainer.save_model(training_args.output_dir)
    trainer.log_metrics("all", metrics)
    return metrics


if __name__ == "__main__":
    try:
        main()
    except UserInputError as exc:
        sys.exit(f"error: {exc}")
