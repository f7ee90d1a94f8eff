#!/usr/bin/env python
"""BERT's other tasks, compressed and measured: writes benchmarks/results/tasks.json and tasks.md (issue 28's keys:
``tasks`` -> task -> ``base`` and ``variants``, each with metric, metric_name, size_mb, latency_ms, speedup, params).

    python scripts/benchmark_tasks.py --task ner                      # MiniLM-L6 tagger on WNUT-16
    python scripts/benchmark_tasks.py --task ner --base mpnet-base --base_epochs 10 --base_lr 5e-5 --base_head_lr 1e-3 \
        --epochs 5 --lr 5e-5                                          # the head at its own rate (see README)
    python scripts/benchmark_tasks.py --task boolq --base mpnet-base --base_epochs 3 --base_lr 3e-5 --base_head_lr 1e-3 \
        --epochs 3 --lr 5e-5 --bf16                                   # sentence pairs (bf16: ~2x on AVX512-BF16)
    python scripts/benchmark_tasks.py --task disflqa --base mpnet-base

Everything goes through the library's own runs, as a user's would:

  base                  `--base` fine-tuned on the task (`--base_epochs`) by the task adapter the data calls for
                        (a tagger, a pair classifier, a QA reader), cached under `--cache_dir` by a key of its settings
  distilled             recipe stage ``distill``: a `--student_layers`-block student cut from the base, KD from it
  distilled_onnx_int8   recipe stage ``quantize`` after it: ONNX Runtime dynamic int8
  structured50          recipe stage ``prune``: `--structured_sparsity` of the heads and FFN neurons removed, KD
  structured50_onnx_int8

The two recipes (``<cache_dir>/<task>-<base>-<key>/{distil,structured}``) measure every stage from disk against the
base with the adapter's own metric (entity F1 for NER, accuracy for pairs, SQuAD F1 for QA) on the test split; a
killed benchmark resumes where its recipes were (finished stages are kept). Then all five checkpoints are loaded
fresh and timed here in one session (`saved_models_latency`: batch 32 x 128 for NER and pairs, 32 x 384 windows
for QA, `--threads` threads, `--rounds` interleaved rounds; speedup = base / variant within this session).

Floors (the issue's; recorded, not tuned for): NER one variant >= 2.5x faster within 2.0 entity-F1 points; BoolQ
>= 2.5x within 1.5 accuracy points; QA >= 2x within 2.0 F1 points. A floor is not judged (``floor_judged``
false) when the base scores no better on the test split than a model that learned nothing (``learned_nothing``:
the majority class, always "no answer", nothing tagged): every row would then be within the points for free.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import yaml

from hfcompress.cli import parse_args, setup_logging
from hfcompress.costs import checkpoint_size_mb, parameter_counts
from hfcompress.files import write_text_atomic
from hfcompress.hardware import bf16_training_args
from hfcompress.loading import load_model
from hfcompress.report.bench import cache_key, write_json
from hfcompress.report.measure import saved_models_latency
from hfcompress.report.record import environment, main_metric

logger = logging.getLogger("hfcompress.benchmark")

# task -> (recipe data section, latency sequence length, floor: (speedup, points), metric's name)
TASKS = {
    "ner": ({"dataset": "wnut16-ner", "max_length": 128}, 128, (2.5, 2.0), "entity F1"),
    "boolq": ({"dataset": "boolq", "text_column": "question", "text_pair_column": "passage", "label_column": "answer",
               "max_length": 256}, 128, (2.5, 1.5), "accuracy"),
    "disflqa": ({"dataset": "disfl-qa", "max_length": 384, "doc_stride": 128}, 384, (2.0, 2.0), "SQuAD F1"),
}


@dataclass
class TasksBenchmarkArguments:
    task: str = field(default="ner", metadata={"help": f"One of {', '.join(TASKS)}."})
    base: str = field(default="minilm-l6", metadata={"help": "The encoder to fine-tune as the base (an asset name "
                                                             "or a folder; one with a trained task head is used as is)."})
    base_epochs: float = field(default=10.0, metadata={"help": "Epochs of fine-tuning the base."})
    base_lr: float = field(default=1e-4, metadata={"help": "Learning rate of fine-tuning the base."})
    base_head_lr: float | None = field(default=None, metadata={"help": "Learning rate of the base's new task head "
                                       "(default: --base_lr)."})
    group_by_length: bool = field(default=True, metadata={"help": "Batch the base's training examples by length "
                                  "(less padding: NER tweets 54 -> 32 padded tokens per example, BoolQ 251 -> 132)."})
    bf16: bool = field(default=False, metadata={"help": "Train the base and the rows with bf16 autocast (about 2x "
                       "faster on a CPU with AVX512-BF16: MPNet-base at 32 x 132 tokens 16 -> 8 s a step)."})
    epochs: float = field(default=10.0, metadata={"help": "Epochs of each compressed row (distillation, pruning)."})
    lr: float = field(default=1e-4, metadata={"help": "Learning rate of the compressed rows."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    student_layers: int = field(default=3, metadata={"help": "Blocks of the distilled student."})
    structured_sparsity: float = field(default=0.5, metadata={"help": "Share of heads and FFN neurons removed."})
    seed: int = field(default=42, metadata={"help": "Seed of the base and every row."})
    cache_dir: str = field(default="benchmarks/cache/tasks", metadata={"help": "Where the base and recipes are kept."})
    output: str = field(default="benchmarks/results/tasks.json", metadata={"help": "Result JSON (other tasks' "
                                                                                   "entries in it are kept)."})
    threads: int = field(default=2, metadata={"help": "CPU threads for latency."})
    rounds: int = field(default=3, metadata={"help": "Interleaved latency rounds."})

    def __post_init__(self):
        if self.task not in TASKS:
            raise SystemExit(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")


def fine_tuned_base(args, data: dict):
    """``(folder, dataset)``: the base fine-tuned on the task by its adapter (cached: `load_teacher` reuses a
    fine-tune of the same key), and the task's splits as the adapter loaded them."""
    from accelerate import PartialState

    from hfcompress.run import DataArguments, ModelArguments
    from hfcompress.run.skeleton import Run, task_for

    later = {"head_lr": args.base_head_lr} if args.base_head_lr is not None else {}  # keys of earlier bases kept
    if args.group_by_length:
        later["group_by_length"] = True
    if args.bf16:
        later["bf16"] = True
    key = cache_key({"base": args.base, "epochs": args.base_epochs, "lr": args.base_lr, **later, "seed": args.seed,
                     **data})
    model_args = ModelArguments(teacher_model=args.base, teacher_finetune_epochs=args.base_epochs,
                                teacher_learning_rate=args.base_lr, teacher_head_learning_rate=args.base_head_lr,
                                teacher_dir=os.path.join(args.cache_dir, f"base-{args.task}-{key}"))
    data_args = DataArguments(**data)
    adapter = task_for(model_args, data_args, None)
    sampling = "group_by_length" if args.group_by_length else "random"
    run = Run(model_args, data_args, SimpleNamespace(seed=args.seed, bf16=args.bf16, train_sampling_strategy=sampling),
              state=PartialState())
    run.dataset, _ = adapter.load_data(run)
    _, _, base_dir = adapter.load_teacher(run)
    return base_dir, run.dataset


def learned_nothing(test, data: dict) -> dict:
    """What a model that learned nothing scores on the test split, beside which the rows are read: entity F1 0
    (nothing tagged), the majority class's accuracy (pairs), or always answering "no answer" (QA: SQuAD v2 F1 is
    then the unanswerable share)."""
    from collections import Counter

    from hfcompress.metrics import qa_metrics

    if "answers" in test.column_names:  # scored by the rows' own SQuAD module (its answer normalisation included)
        refs = [a["text"] for a in test["answers"]]
        return {"name": "always 'no answer'", "metric": qa_metrics([""] * len(refs), refs)["f1"]}
    label = data.get("label_column")
    if label and label in test.column_names:
        return {"name": "majority class", "metric": max(Counter(test[label]).values()) / len(test)}
    return {"name": "nothing tagged", "metric": 0.0}


def run_recipe_file(name: str, base_dir: str, data: dict, stages: list, args, folder: str) -> dict:
    from hfcompress.run.recipe import run_recipe

    recipe = {"name": name, "base_model": base_dir, "seed": args.seed, "data": data, "stages": stages,
              "measure": {"latency_rounds": 1, "measure_memory": False}}
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "recipe.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(recipe, fh, sort_keys=False)
    run_recipe(path, os.path.join(folder, "run"))
    with open(os.path.join(folder, "run", "recipe_summary.json")) as fh:
        return json.load(fh)


def main(argv=None) -> dict:
    (args,) = parse_args((TasksBenchmarkArguments,), argv, description=__doc__.split("\n\n")[0])
    setup_logging()
    data, seq_len, (floor_speed, floor_points), metric_label = TASKS[args.task]
    base_dir, dataset = fine_tuned_base(args, data)
    train = {"num_train_epochs": args.epochs, "learning_rate": args.lr, "per_device_train_batch_size": args.batch_size,
             "eval_strategy": "no", "save_strategy": "epoch", "save_total_limit": 1, "logging_steps": 20,
             **({"train_sampling_strategy": "group_by_length"} if args.group_by_length else {}),
             **(bf16_training_args(True) if args.bf16 else {})}  # nothing when off: earlier recipe keys kept
    int8 = {"method": "quantize", "args": {"quantization": "onnx_int8"}}
    key = cache_key({"base": base_dir, "train": train, "layers": args.student_layers,
                     "sparsity": args.structured_sparsity, "seed": args.seed, **data})
    root = os.path.join(args.cache_dir, f"{args.task}-{os.path.basename(os.path.normpath(args.base))}-{key}")
    distil = run_recipe_file(f"{args.task}-distil", base_dir, data, [
        {"name": "distilled", "method": "distill", "args": {"student_num_layers": args.student_layers, **train}},
        {"name": "distilled_onnx_int8", **int8}], args, os.path.join(root, "distil"))
    pruned = run_recipe_file(f"{args.task}-structured", base_dir, data, [
        {"name": "structured50", "method": "prune", "args": {"granularity": "structured",
                                                             "target_sparsity": args.structured_sparsity, **train}},
        {"name": "structured50_onnx_int8", **int8}], args, os.path.join(root, "structured"))

    metric = main_metric(distil["data"])  # a pair classifier's record names none: accuracy
    paths, metrics = {"base": base_dir}, {"base": distil["comparison"]["base"]["metrics"]}
    for summary in (distil, pruned):
        c = summary["comparison"]
        for stage in summary["stages"]:
            paths[stage["name"]] = stage["model"]
            measured = c["variants"].get(stage["name"]) or c["model"]
            metrics[stage["name"]] = measured["metrics"]
    latency = saved_models_latency(paths, threads=args.threads, rounds=args.rounds, seq_len=seq_len)
    rows = {}
    for name, path in paths.items():
        rows[name] = {"metric": metrics[name].get(metric), "metric_name": metric,
                      "metrics": {k: v for k, v in metrics[name].items() if isinstance(v, (int, float))},
                      "size_mb": checkpoint_size_mb(path), "latency_ms": latency[name]["median_ms"],
                      "speedup": latency[name].get("speedup") or 1.0,
                      "params": parameter_counts(load_model(path))["parameters"], "path": path}
    base = rows.pop("base")
    for row in rows.values():
        row["metric_delta_points"] = 100 * (row["metric"] - base["metric"])
        row["size_ratio"] = base["size_mb"] / row["size_mb"]
    nothing = learned_nothing(dataset["test"], data)
    # a base no better than a model that learned nothing makes every row "within the floor's points" for free
    judged = base["metric"] > nothing["metric"]
    met = [n for n, r in rows.items()
           if judged and r["speedup"] >= floor_speed and r["metric_delta_points"] >= -floor_points]
    entry = {
        "base": base, "variants": rows, "base_model": args.base, "data": data, "splits": distil["data"].get("splits"),
        "pipeline_tag": distil["data"].get("pipeline_tag"), "metric_label": metric_label,
        "floor": f"one variant >= {floor_speed}x faster on CPU within {floor_points} {metric_label} points",
        "floor_met_by": met, "floor_judged": judged, "learned_nothing": nothing,
        "latency": {"threads": args.threads, "rounds": args.rounds, "batch_size": 32, "seq_len": seq_len, "runs": 7},
        "settings": asdict(args), "recipes": [os.path.join(root, "distil", "recipe.yaml"),
                                              os.path.join(root, "structured", "recipe.yaml")],
        "command": "python scripts/benchmark_tasks.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": {**environment(), "gpu_used": False},
    }
    result = {"tasks": {}}
    if os.path.exists(args.output):
        with open(args.output) as fh:
            result = json.load(fh)
        # entries of this script's own layout only (the first version measured a single distill run)
        result = {"tasks": {k: v for k, v in result.get("tasks", {}).items() if "settings" in v}}
    result["tasks"][f"{args.task}-{os.path.basename(os.path.normpath(args.base))}"] = entry
    write_json(args.output, result)
    write_text_atomic(os.path.splitext(args.output)[0] + ".md", markdown(result))
    logger.info("Wrote %s", args.output)
    return result


def markdown(result: dict) -> str:
    out = ["# BERT's other tasks, compressed (scripts/benchmark_tasks.py)", ""]
    for name, t in result["tasks"].items():
        s, lat = t.get("settings", {}), t.get("latency", {})
        out += [f"## {name}", "",
                f"Data {t['data']['dataset']} {t.get('splits')}; base {t.get('base_model')} fine-tuned "
                f"{s.get('base_epochs')} epochs; rows {s.get('epochs')} epochs, lr {s.get('lr')}, seed {s.get('seed')}"
                f"{', bf16 training' if s.get('bf16') else ''}. "
                f"Latency: batch {lat.get('batch_size')} x {lat.get('seq_len')}, {lat.get('threads')} threads, "
                f"{lat.get('rounds')} interleaved rounds. Command: `{t.get('command')}`", "",
                f"| model | {t.get('metric_label', t['base']['metric_name'])} | Δ points | size MB | size ratio | latency ms | speedup | params |",
                "|---|---|---|---|---|---|---|---|",
                f"| base | {100 * t['base']['metric']:.1f} | | {t['base']['size_mb']:.1f} | 1.00x | "
                f"{t['base']['latency_ms']:.0f} | 1.00x | {t['base']['params'] / 1e6:.1f}M |"]
        for v, r in t["variants"].items():
            out.append(f"| {v} | {100 * r['metric']:.1f} | {r['metric_delta_points']:+.1f} | {r['size_mb']:.1f} | "
                       f"{r['size_ratio']:.2f}x | {r['latency_ms']:.0f} | {r['speedup']:.2f}x | {r['params'] / 1e6:.1f}M |")
        met = ", ".join(t["floor_met_by"]) or "none"
        if t.get("floor_judged") is False:
            met = "not judged: the base scores no better than a model that learned nothing"
        out += ["", f"Floor: {t['floor']}; met by: {met}."]
        if t.get("learned_nothing"):
            out.append(f"A model that learned nothing ({t['learned_nothing']['name']}) scores "
                       f"{100 * t['learned_nothing']['metric']:.1f} on this test split.")
        if "has_answer_f1" in t["base"].get("metrics", {}):
            out.append("F1 on the answerable / unanswerable questions: " + "; ".join(
                f"{n} {100 * r['metrics']['has_answer_f1']:.1f} / {100 * r['metrics']['no_answer_f1']:.1f}"
                for n, r in [("base", t["base"]), *t["variants"].items()]
                if r["metrics"].get("has_answer_f1") is not None and r["metrics"].get("no_answer_f1") is not None))
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
