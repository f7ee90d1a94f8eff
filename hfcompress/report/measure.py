from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import torch
from tqdm.auto import tqdm

from ..costs import (  # noqa: F401  (the primitives, also importable from here)
    checkpoint_size_mb,
    count_parameters,
    folder_size_mb,
    interleaved_latency,
    measure_latency,
    measure_peak_memory,
    model_device,
    model_size_mb,
    parameter_counts,
)
from ..metrics import compute_classification_metrics

logger = logging.getLogger(__name__)


@torch.inference_mode()
def evaluate_classifier(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    labels: list[int],
    batch_size: int = 64,
    max_length: int = 128,
    desc: str = "Evaluating",
    text_pairs: list[str] | None = None,
    pair_truncation: str = "only_second",
) -> dict:
    """Accuracy/F1 of a sequence classifier on raw texts, tokenized with its own tokenizer (with `text_pairs`, each
    text and its pair together, cut as `pair_truncation` says)."""
    from transformers import EvalPrediction

    model.eval()
    device = model_device(model)
    logits = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False):
        pairs = (text_pairs[start : start + batch_size],) if text_pairs is not None else ()
        enc = tokenizer(texts[start : start + batch_size], *pairs, truncation=pair_truncation if pairs else True,
                        max_length=max_length, padding=True, return_tensors="pt")
        logits.append(model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu().numpy())
    return compute_classification_metrics(EvalPrediction(predictions=np.concatenate(logits), label_ids=np.asarray(labels)))


def saved_models_latency(paths: dict[str, str], threads: int = 2, rounds: int = 3, batch_size: int = 32,
                         seq_len: int = 128, runs: int = 7, warmup: int = 2) -> dict[str, dict]:
    """`interleaved_latency` of saved checkpoints, each loaded fresh with `hfcompress.loading.load_model`, on
    `threads` threads (the first path is the reference of the ratios): batch `batch_size` x `seq_len` tokens (fewer
    when a model's position table is shorter, as in tiny test models: the same batch shape for all)."""
    from ..loading import load_model

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = {name: load_model(path, num_threads=threads) for name, path in paths.items()}
        # every model takes the batch: the shortest position table bounds it (less 2 for the families whose
        # positions start after the padding index, RoBERTa and MPNet)
        seq_len = min([seq_len] + [int(getattr(m.config, "max_position_embeddings", seq_len + 2)) - 2
                                   for m in models.values()])
        out = interleaved_latency(models, rounds, batch_size=batch_size, seq_len=seq_len, runs=runs, warmup=warmup)
    finally:
        torch.set_num_threads(previous)
    for row in out.values():
        row["threads"] = threads
    return out


def change(before: float | None, after: float | None) -> dict | None:
    """``{"base", "model", "delta", "relative"}``: the absolute and relative change of one measurement."""
    if before is None or after is None:
        return None
    return {"base": before, "model": after, "delta": after - before,
            "relative": (after - before) / before if before else None}


@dataclasses.dataclass
class MeasureConfig:
    """How `compare_checkpoints` measures (recorded with the figures)."""

    threads: int = dataclasses.field(default=2, metadata={"help": "CPU threads of the latency measurement."})
    rounds: int = dataclasses.field(default=3, metadata={"help": "Interleaved latency rounds (base, model, base, ...)."})
    runs: int = dataclasses.field(default=7, metadata={"help": "Timed forward passes per round (the median is kept)."})
    warmup: int = dataclasses.field(default=2, metadata={"help": "Untimed forward passes before each round's runs."})
    batch_size: int = dataclasses.field(default=32, metadata={"help": "Latency batch size."})
    seq_len: int = dataclasses.field(default=128, metadata={"help": "Latency sequence length in tokens."})
    memory: bool = dataclasses.field(default=True, metadata={"help": "Measure peak memory in fresh processes."})


def compare_checkpoints(base_dir: str, model_dir: str, texts: list[str] | None, labels: list[int] | None,
                        split: str = "test", max_length: int = 128, config: MeasureConfig | None = None,
                        variants: dict[str, str] | None = None, text_pairs: list[str] | None = None,
                        pair_truncation: str = "only_second", evaluate=None, rows: int | None = None) -> dict:
    """The base model and its compressed version, both as saved on disk and loaded fresh, measured side by side on
    the same evaluation rows: parameters (total and non-zero), size on disk of the whole checkpoint folder, peak
    memory, CPU latency (interleaved), task metrics, and every change (absolute and relative). This is the one
    measurement every script, benchmark, recipe and card reads; nothing in a card comes from elsewhere.

    `variants` (name -> checkpoint folder, e.g. a recipe's intermediate stages) are measured in the same session
    (metrics, size, parameters, latency interleaved with the two others; not memory) under ``"variants"``.

    `evaluate(model, tokenizer, role) -> metrics` replaces the classifier evaluation on `texts`/`labels` for other
    tasks (a token classifier's entity scores); `rows` then says how many evaluation rows it read."""
    from transformers import AutoTokenizer

    from ..loading import checkpoint_format, load_model

    config = config or MeasureConfig()
    variants = dict(variants or {})
    if {"base", "model"} & set(variants):
        raise ValueError("a variant cannot be called 'base' or 'model'")
    sides = {}
    for role, path in (("base", base_dir), ("model", model_dir), *variants.items()):
        model = load_model(path, num_threads=config.threads)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if evaluate is not None:
            metrics = evaluate(model, tokenizer, role)
        else:
            metrics = evaluate_classifier(model, tokenizer, texts, labels, max_length=max_length,
                                          desc=f"{split} ({role})", text_pairs=text_pairs,
                                          pair_truncation=pair_truncation)
        sides[role] = {"path": os.path.abspath(path), "format": checkpoint_format(path), **parameter_counts(model),
                       "size_mb": checkpoint_size_mb(path), "metrics": metrics}
        del model
    latency = saved_models_latency({"base": base_dir, "model": model_dir, **variants}, config.threads, config.rounds,
                                   config.batch_size, config.seq_len, config.runs, config.warmup)
    for role in sides:
        sides[role]["latency"] = latency[role]
        sides[role]["latency_ms"] = latency[role]["median_ms"]
        if role in variants:
            sides[role]["size_ratio"] = sides["base"]["size_mb"] / sides[role]["size_mb"]
            sides[role]["speedup"] = latency[role]["speedup"]
        elif config.memory:
            mem = measure_peak_memory(sides[role]["path"], batch_size=config.batch_size, threads=config.threads)
            sides[role]["peak_memory_mb"] = mem["peak_memory_mb"]
            sides[role]["model_memory_mb"] = mem["model_memory_mb"]
    base, model = sides.pop("base"), sides.pop("model")
    changes = {f"metric_{k}": change(v, model["metrics"].get(k)) for k, v in base["metrics"].items()
               if isinstance(v, (int, float))}
    for key in ("size_mb", "latency_ms", "parameters", "nonzero_parameters", "peak_memory_mb"):
        changes[key] = change(base.get(key), model.get(key))
    accuracy = changes.get("metric_accuracy")
    return {
        "split": split,
        "rows": rows if rows is not None else len(texts),
        "base": base,
        "model": model,
        "changes": {k: v for k, v in changes.items() if v is not None},
        "size_ratio": base["size_mb"] / model["size_mb"],
        "speedup": latency["model"]["speedup"],
        "accuracy_delta_points": 100 * accuracy["delta"] if accuracy else None,
        "variants": sides,
        "protocol": {**dataclasses.asdict(config), "seq_len": latency["model"]["seq_len"],
                     "device": latency["model"]["device"], "ratio": "base / model, per round, median of rounds",
                     "max_length_eval": max_length},
    }
