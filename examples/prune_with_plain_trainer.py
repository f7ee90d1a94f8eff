#!/usr/bin/env python
"""Pruning added to an ordinary fine-tuning script that uses a plain `transformers.Trainer`.

Everything here is a standard "fine-tune a text classifier" script; the three lines marked `# PRUNE` are what
pruning adds: import, pass `PruningCallback(...)` to the Trainer, save the compact checkpoint.

    python examples/prune_with_plain_trainer.py                                     # MiniLM-L6, Rotten Tomatoes
    python examples/prune_with_plain_trainer.py --model minilm-l6 --dataset reviews.csv --target_sparsity 0.8 \\
        --num_train_epochs 2 --output_dir out/plain-prune

Every `TrainingArguments` flag works as well. The sparsity values (`sparsity_target`, `sparsity`) appear in the
Trainer's logs next to the loss; `trainer.save_model` still writes the dense checkpoint (zeros stored).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

# hfcompress before transformers' Trainer (which imports bitsandbytes): see distill_with_plain_trainer.py
import hfcompress  # noqa: F401

# isort: split
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)

from hfcompress import PruningCallback, save_sparse  # PRUNE
from hfcompress.assets import resolve_model_path
from hfcompress.data import label_names, load_text_classification, num_labels, tokenize
from hfcompress.errors import UserInputError
from hfcompress.metrics import compute_classification_metrics


@dataclass
class ScriptArguments:
    model: str = field(default="minilm-l6", metadata={"help": "checkpoint to fine-tune and prune: folder, asset name or Hub id"})
    dataset: str = field(default="rotten-tomatoes", metadata={"help": "asset name, CSV/JSON file or folder, Hub id"})
    text_column: str = field(default="text", metadata={"help": "column with the text"})
    label_column: str = field(default="label", metadata={"help": "column with the class (names or integers)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N training rows"})
    max_length: int = field(default=128, metadata={"help": "tokens kept per text"})
    method: str = field(default="magnitude", metadata={"help": "magnitude, movement or soft_movement (movement needs long runs)"})
    target_sparsity: float = field(default=0.9, metadata={"help": "fraction of encoder Linear weights removed"})


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ScriptArguments, TrainingArguments))
    parser.set_defaults(output_dir="out/prune_with_plain_trainer", report_to="none", save_strategy="no")
    script, training_args = parser.parse_args_into_dataclasses(args=argv)

    data = load_text_classification(script.dataset, script.text_column, script.label_column, seed=training_args.seed)
    if script.label_column != "label":
        data = data.rename_column(script.label_column, "label")
    train = data["train"]
    if script.max_train_samples is not None:
        train = train.select(range(min(script.max_train_samples, len(train))))
    path = resolve_model_path(script.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    names = label_names(data["train"], "label")
    labels = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}} if names else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels(data["train"], "label"), **labels)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenize(train, tokenizer, script.text_column, script.max_length),
        eval_dataset=tokenize(data["validation"], tokenizer, script.text_column, script.max_length),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_classification_metrics,
        callbacks=[PruningCallback(method=script.method, target_sparsity=script.target_sparsity)],  # PRUNE
    )
    trainer.train()
    metrics = trainer.evaluate()
    save_sparse(trainer.model, os.path.join(training_args.output_dir, "model"), tokenizer)  # PRUNE
    trainer.log_metrics("eval", metrics)
    return metrics


if __name__ == "__main__":
    try:
        main()
    except UserInputError as exc:
        sys.exit(f"error: {exc}")
