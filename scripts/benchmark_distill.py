#!/usr/bin/env python
"""Distillation benchmark on the real offline assets; writes benchmarks/results/distill.json.

    python scripts/benchmark_distill.py                       # everything (about 1.5 h on 2 CPU cores)
    python scripts/benchmark_distill.py --stages finetune     # only the no-KD baselines (no teacher needed)

Rows, all on Rotten Tomatoes (stratified 10,202 / 1,275 / 1,275 split, seed 42), accuracy on the test split:
  teacher   MPNet-base (all-mpnet-base-v2) fine-tuned here;
  student6  MiniLM-L6 (all-MiniLM-L6-v2) fine-tuned without KD, and distilled from the teacher (cached logits);
  student3  3 blocks (1, 3, 5) of MiniLM-L6, fine-tuned without KD, and distilled from the teacher.
Latency: CPU forward, batch 32 x 128 tokens, median of 7 runs after 2 warm-up passes, same thread count for all.
Step-time ratios: median training-step time over the same steps, KD (cached / online teacher) / plain fine-tune.

Trained models are cached under benchmarks/cache/ by a key of everything that affects them; a later invocation
re-measures everything (accuracy, latency, step times) from the cached weights and says which were reused.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback, set_seed

from hfcompress.assets import resolve_model_path
from hfcompress.cli import parse_args, setup_logging
from hfcompress.data import ROTTEN_TOMATOES_LABELS, load_rotten_tomatoes
from hfcompress.distill import (
    DistillationArguments,
    DistillationDataCollator,
    DistillationTrainer,
    FinetuneConfig,
    finetune_classifier,
    init_student_from_teacher,
)
from hfcompress.distill.pipeline import cache_teacher_on_train, tokenize_for_distillation
from hfcompress.report import count_parameters, evaluate_classifier, measure_latency, model_size_mb

logger = logging.getLogger("hfcompress.benchmark")
LABELS = {"id2label": dict(enumerate(ROTTEN_TOMATOES_LABELS)), "label2id": {n: i for i, n in enumerate(ROTTEN_TOMATOES_LABELS)}}


@dataclass
class BenchmarkArguments:
    stages: str = field(default="all", metadata={"help": "'all', or a comma list of: finetune, teacher, kd, timing, latency."})
    cache_dir: str = field(default="benchmarks/cache", metadata={"help": "Where trained models and the teacher cache are kept."})
    output: str = field(default="benchmarks/results/distill.json", metadata={"help": "Result JSON path."})
    teacher: str = field(default="mpnet-base", metadata={"help": "Teacher model (asset name, folder or Hub id)."})
    student: str = field(default="minilm-l6", metadata={"help": "Student base model."})
    student3_layers: str = field(default="1,3,5", metadata={"help": "Blocks of the student base kept in the 3-layer student."})
    teacher_epochs: float = field(default=1.0, metadata={"help": "Teacher fine-tuning epochs (MPNet is ~6x slower per step)."})
    teacher_lr: float = field(default=3e-5, metadata={"help": "Teacher fine-tuning learning rate."})
    student_epochs: float = field(default=2.0, metadata={"help": "Epochs of every student run (with and without KD)."})
    student_lr: float = field(default=5e-5, metadata={"help": "Learning rate of every student run."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size of every run."})
    temperature: float = field(default=2.0, metadata={"help": "KD temperature."})
    alpha: float = field(default=0.5, metadata={"help": "KD weight (hard-label weight is 1 - alpha)."})
    timing_steps: int = field(default=24, metadata={"help": "Training steps timed per variant for the step-time ratios."})
    seed: int = field(default=42, metadata={"help": "Seed of every run."})


def student_base(args, num_layers: int):
    """MiniLM with a new 2-way head (seeded), full or cut to `args.student3_layers`."""
    set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(args.student), num_labels=2, **LABELS)
    if num_layers == 6:
        return model
    return init_student_from_teacher(model, layers=[int(x) for x in args.student3_layers.split(",")])


def ft_config(args) -> FinetuneConfig:
    return FinetuneConfig(num_train_epochs=args.student_epochs, learning_rate=args.student_lr,
                          per_device_train_batch_size=args.batch_size, seed=args.seed)


def run_finetune(args, data, name: str, num_layers: int) -> dict:
    out = os.path.join(args.cache_dir, name)
    model = None if num_layers == 6 else student_base(args, num_layers)
    set_seed(args.seed)
    summary = finetune_classifier(args.student, data, out, ft_config(args), model=model, report_split="validation")
    summary["path"] = out
    return summary


def kd_training_args(args, out: str, max_steps: int = -1) -> DistillationArguments:
    return DistillationArguments(
        output_dir=os.path.join(out, "trainer"), num_train_epochs=args.student_epochs, max_steps=max_steps,
        learning_rate=args.student_lr, per_device_train_batch_size=args.batch_size, weight_decay=0.01,
        warmup_steps=0.06, seed=args.seed, eval_strategy="no", save_strategy="no", logging_steps=50,
        report_to="none", temperature=args.temperature, alpha=args.alpha,
    )


def run_kd(args, data_kd, collator, teacher_config, name: str, num_layers: int, teacher_name: str) -> dict:
    out = os.path.join(args.cache_dir, name)
    key = json.dumps({"teacher": teacher_name, "layers": num_layers, "args": asdict(args) | {"stages": None, "output": None}}, sort_keys=True)
    summary_path = os.path.join(out, "kd_summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as fh:
            prev = json.load(fh)
        if prev.get("key") == key:
            return {**prev, "reused": True, "path": out}
    student = student_base(args, num_layers)
    trainer = DistillationTrainer(
        model=student, args=kd_training_args(args, out), train_dataset=data_kd["train"], data_collator=collator,
        teacher_config=teacher_config,
    )
    res = trainer.train()
    trainer.save_model(out)
    summary = {"key": key, "train_runtime_s": res.metrics["train_runtime"], "train_loss": res.training_loss, "reused": False}
    with open(summary_path, "w") as fh:
        json.dump(summary, fh, indent=2)
    return {**summary, "path": out}


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def median_step_time(trainer, warmup: int = 4) -> float:
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return statistics.median(timer.times[warmup:])


def time_steps(args, data_kd, data_online, collator, teacher, out) -> dict:
    """Median step time of plain fine-tuning vs KD (cached teacher) vs KD (teacher run each step), same steps."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    n = args.timing_steps
    tok = collator.tokenizer
    plain_args = TrainingArguments(output_dir=os.path.join(out, "t-plain"), max_steps=n, per_device_train_batch_size=args.batch_size,
                                   learning_rate=args.student_lr, seed=args.seed, save_strategy="no", report_to="none",
                                   logging_steps=1000, average_tokens_across_devices=False)
    plain_train = data_kd["train"].remove_columns([c for c in data_kd["train"].column_names if c.startswith("teacher_")])
    res = {}
    t = Trainer(model=student_base(args, 6), args=plain_args, train_dataset=plain_train, data_collator=DataCollatorWithPadding(tok))
    res["plain_s"] = median_step_time(t)
    t = DistillationTrainer(model=student_base(args, 6), args=kd_training_args(args, os.path.join(out, "t-cached"), n),
                            train_dataset=data_kd["train"], data_collator=collator, teacher_config=teacher.config)
    res["kd_cached_s"] = median_step_time(t)
    t = DistillationTrainer(model=student_base(args, 6), args=kd_training_args(args, os.path.join(out, "t-online"), n),
                            train_dataset=data_online["train"], data_collator=collator, teacher_model=teacher)
    res["kd_online_s"] = median_step_time(t)
    res["steps_timed"] = n - 4
    return res


def main(argv=None):
    (args,) = parse_args((BenchmarkArguments,), argv, description=__doc__.split("\n\n")[0])
    setup_logging()
    stages = {"finetune", "teacher", "kd", "timing", "latency"} if args.stages == "all" else set(args.stages.split(","))
    os.makedirs(args.cache_dir, exist_ok=True)
    result = {}
    if os.path.exists(args.output):
        with open(args.output) as fh:
            result = json.load(fh)
    data = load_rotten_tomatoes(seed=args.seed)
    texts, labels = data["test"]["text"], data["test"]["label"]
    student_tok = AutoTokenizer.from_pretrained(resolve_model_path(args.student))
    runs = result.setdefault("runs", {})

    def test_acc(path_or_model, tok):
        model = AutoModelForSequenceClassification.from_pretrained(path_or_model) if isinstance(path_or_model, str) else path_or_model
        return evaluate_classifier(model, tok, texts, labels, desc=f"test {path_or_model if isinstance(path_or_model, str) else ''}")

    if "finetune" in stages:
        for name, layers in (("student6_finetune", 6), ("student3_finetune", 3)):
            s = run_finetune(args, data, name, layers)
            m = test_acc(s["path"], student_tok)
            runs[name] = {"test": m, "train_runtime_s": s["train_runtime_s"], "reused_trained_weights": s["reused"],
                          "config": s["config"], "path": s["path"]}
            result[f"{name}_accuracy"] = m["accuracy"]
            _write(args.output, result)

    teacher = teacher_tok = None
    if stages & {"teacher", "kd", "timing", "latency"}:
        t_dir = os.path.join(args.cache_dir, "teacher-" + os.path.basename(args.teacher))
        set_seed(args.seed)
        s = finetune_classifier(args.teacher, data, t_dir, FinetuneConfig(num_train_epochs=args.teacher_epochs, learning_rate=args.teacher_lr,
                                per_device_train_batch_size=args.batch_size, seed=args.seed))
        teacher = AutoModelForSequenceClassification.from_pretrained(t_dir)
        teacher_tok = AutoTokenizer.from_pretrained(t_dir)
        if "teacher" in stages:
            m = test_acc(teacher, teacher_tok)
            runs["teacher"] = {"model": args.teacher, "test": m, "train_runtime_s": s["train_runtime_s"],
                               "reused_trained_weights": s["reused"], "config": s["config"], "path": t_dir}
            result["teacher_accuracy"] = m["accuracy"]
            _write(args.output, result)

    if stages & {"kd", "timing"}:
        tokenized, separate = tokenize_for_distillation(data, student_tok, teacher_tok, "text", "label", 128)
        collator = DistillationDataCollator(student_tok, teacher_tok if separate else None)
        from contextlib import nullcontext

        data_kd, meta = cache_teacher_on_train(
            tokenized, os.path.abspath(os.path.join(args.cache_dir, "teacher-" + os.path.basename(args.teacher))),
            lambda: teacher, collator, os.path.join(args.cache_dir, "teacher-outputs"), None, separate, 64,
            lambda desc=None: nullcontext(),
        )
        result["teacher_cache"] = {k: v for k, v in meta.items() if k != "teacher_config"}
    if "kd" in stages:
        for name, layers in (("student6_kd", 6), ("student3_kd", 3)):
            s = run_kd(args, data_kd, collator, teacher.config, name, layers, args.teacher)
            m = test_acc(s["path"], student_tok)
            runs[name] = {"test": m, "train_runtime_s": s["train_runtime_s"], "reused_trained_weights": s["reused"],
                          "teacher": args.teacher, "teacher_outputs": "cached logits", "temperature": args.temperature,
                          "alpha": args.alpha, "path": s["path"]}
            result[f"{name}_accuracy"] = m["accuracy"]
            result[f"{name}_teacher"] = args.teacher
            _write(args.output, result)
    if "timing" in stages:
        torch.manual_seed(args.seed)
        timing = time_steps(args, data_kd, tokenized, collator, teacher, os.path.join(args.cache_dir, "timing"))
        result["step_time_s"] = timing
        result["kd_step_time_ratio_cached"] = timing["kd_cached_s"] / timing["plain_s"]
        result["kd_step_time_ratio_online"] = timing["kd_online_s"] / timing["plain_s"]
        _write(args.output, result)
    if "latency" in stages:
        models = {"teacher": teacher}
        for name, layers in (("student6", 6), ("student3", 3)):
            path = runs.get(f"{name}_kd", {}).get("path")
            models[name] = AutoModelForSequenceClassification.from_pretrained(path) if path else student_base(args, layers)
        lat = {}
        for name, model in models.items():
            lat[name] = measure_latency(model, batch_size=32, seq_len=128, runs=7, warmup=2)
            lat[name]["parameters"] = count_parameters(model)
            lat[name]["size_mb"] = model_size_mb(model)
            result[f"latency_ms_{name}"] = lat[name]["median_ms"]
        result["latency"] = lat
        result["speedup_student6_vs_teacher"] = lat["teacher"]["median_ms"] / lat["student6"]["median_ms"]
        result["speedup_student3_vs_teacher"] = lat["teacher"]["median_ms"] / lat["student3"]["median_ms"]
        _write(args.output, result)

    floors = {}
    if all(k in result for k in ("student6_kd_accuracy", "student6_finetune_accuracy", "student3_kd_accuracy")):
        floors["student6_kd_gt_finetune"] = result["student6_kd_accuracy"] > result["student6_finetune_accuracy"]
        floors["student3_kd_ge_0.97x_student6_finetune"] = result["student3_kd_accuracy"] >= 0.97 * result["student6_finetune_accuracy"]
    if "kd_step_time_ratio_cached" in result:
        floors["kd_step_time_ratio_cached_le_1.15"] = result["kd_step_time_ratio_cached"] <= 1.15
    result["floors_met"] = floors
    result["command"] = "python scripts/benchmark_distill.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["environment"] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                             "dataset": "rotten-tomatoes (offline), test split 1,275 rows"}
    _write(args.output, result)
    with open(os.path.splitext(args.output)[0] + ".md", "w") as fh:
        fh.write(markdown_table(result))
    logger.info("Wrote %s", args.output)
    for k in sorted(result):
        if not isinstance(result[k], dict):
            logger.info("%-40s %s", k, result[k])


def markdown_table(r: dict) -> str:
    """The README table, rendered from the result JSON (never typed by hand)."""
    def f(key, fmt="{:.4f}"):
        return fmt.format(r[key]) if isinstance(r.get(key), (int, float)) else "n/a"

    lat = r.get("latency", {})
    rows = [
        ("teacher: MPNet-base fine-tuned", "teacher_accuracy", "teacher", "-"),
        ("student6: MiniLM-L6 fine-tuned (no KD)", "student6_finetune_accuracy", "student6", "-"),
        ("student6: MiniLM-L6 + KD", "student6_kd_accuracy", "student6", r.get("student6_kd_teacher", "-")),
        ("student3: 3 blocks of MiniLM-L6, fine-tuned (no KD)", "student3_finetune_accuracy", "student3", "-"),
        ("student3: 3 blocks of MiniLM-L6 + KD", "student3_kd_accuracy", "student3", r.get("student3_kd_teacher", "-")),
    ]
    out = ["| model | test accuracy | params (M) | CPU latency ms (b32 x 128) | speed-up vs teacher | KD teacher |",
           "|---|---|---|---|---|---|"]
    t_ms = lat.get("teacher", {}).get("median_ms")
    for label, key, lat_key, teacher in rows:
        ms = lat.get(lat_key, {}).get("median_ms")
        params = lat.get(lat_key, {}).get("parameters")
        out.append(f"| {label} | {f(key)} | {params / 1e6:.1f} |" if params else f"| {label} | {f(key)} | n/a |")
        out[-1] += f" {ms:.0f} | {t_ms / ms:.2f}x |" if ms and t_ms else " n/a | n/a |"
        out[-1] += f" {teacher} |"
    out.append("")
    out.append(f"KD step time / plain fine-tune step time: cached teacher {f('kd_step_time_ratio_cached', '{:.3f}')}, "
               f"teacher run online {f('kd_step_time_ratio_online', '{:.3f}')}.")
    out.append(f"Floors: {json.dumps(r.get('floors_met', {}))}")
    return "\n".join(out) + "\n"


def _write(path, result):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2, default=str)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
