#!/usr/bin/env python
"""Distillation benchmark on the real offline assets; writes benchmarks/results/distill.{json,md}.

    python scripts/benchmark_distill.py                        # everything (cached rows are re-measured, not retrained)
    python scripts/benchmark_distill.py --stages finetune      # only the no-KD baselines

Rows, all on Rotten Tomatoes (stratified 10,202 / 1,275 / 1,275 split, seed 42), accuracy on the test split:
  teacher            MPNet-base (all-mpnet-base-v2) fine-tuned here (1 seed);
  student6_finetune  MiniLM-L6 fine-tuned without KD (3 seeds);
  student6_kd        MiniLM-L6 distilled from the MPNet teacher, cached logits (3 seeds);
  student3_*         3 blocks (1, 3, 5) of MiniLM-L6: cut from the pretrained or from the fine-tuned MiniLM (the
                     fine-tune of the same seed), no KD, logit KD, and the full recipes (hidden states through a
                     learned 384->768 projection + MiniLM-v2 attention relations, together or staged), MPNet or
                     MiniLM-L6 teacher. The candidate with the best *validation* accuracy is rerun on 3 seeds.
Every training row runs through the same steps as scripts/distill.py (`hfcompress.run`), under bf16 autocast on
this CPU. Latency: CPU fp32 forward, batch 32 x 128 tokens, median of 7 after 2 warm-ups. Step-time ratios: median
training-step time over the same steps, KD (cached / online teacher) / plain fine-tune.

Trained models are cached under benchmarks/cache/ by a key of everything that affects them; a rerun re-measures
(accuracy, latency, step times) and says which weights it reused.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

from hfcompress.cli import parse_args, setup_logging
from hfcompress.data import load_rotten_tomatoes
from hfcompress.distill import DistillationArguments
from hfcompress.report import count_parameters, evaluate_classifier, measure_latency, model_size_mb
from hfcompress.report.bench import cache_key, mean_std, training_kwargs, write_json
from hfcompress.report.record import environment
from hfcompress.run import DataArguments, FinetuneConfig, ModelArguments, finetune_classifier, run_distillation

logger = logging.getLogger("hfcompress.benchmark")

RECIPES = {
    # name: (distillation settings, what it is)
    "logits": ({}, "logit KD (T=2, alpha=0.5)"),
    "full": (
        {"hidden_weight": 1.0, "relation_weight": 1.0},
        "logit KD + hidden states (MSE, uniform layer map: student block i <- teacher block i*T/3, through learned "
        "384->768 projections for MPNet) + MiniLM-v2 q/k/v relations of the last block, all together",
    ),
    "staged": (
        {"hidden_weight": 1.0, "relation_weight": 1.0, "intermediate_fraction": 0.3},
        "TinyBERT-style staged: hidden states + relations for the first 30% of steps, then logit KD + labels",
    ),
}


@dataclass
class BenchmarkArguments:
    stages: str = field(default="all", metadata={"help": "'all', or a comma list of: finetune, teacher, kd, student3, best, timing, latency."})
    cache_dir: str = field(default="benchmarks/cache", metadata={"help": "Where trained models and teacher caches are kept."})
    output: str = field(default="benchmarks/results/distill.json", metadata={"help": "Result JSON path."})
    teacher: str = field(default="mpnet-base", metadata={"help": "Teacher model (asset name, folder or Hub id)."})
    student: str = field(default="minilm-l6", metadata={"help": "Student base model."})
    student3_layers: str = field(default="1,3,5", metadata={"help": "Blocks of the student base kept in the 3-block student."})
    teacher_epochs: float = field(default=1.0, metadata={"help": "Teacher fine-tuning epochs (MPNet is ~6x slower per step)."})
    teacher_lr: float = field(default=3e-5, metadata={"help": "Teacher fine-tuning learning rate."})
    student_epochs: float = field(default=2.0, metadata={"help": "Epochs of every student run (with and without KD)."})
    student_lr: float = field(default=5e-5, metadata={"help": "Learning rate of every student run."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size of every run."})
    temperature: float = field(default=2.0, metadata={"help": "KD temperature."})
    alpha: float = field(default=0.5, metadata={"help": "KD weight (hard-label weight is 1 - alpha)."})
    seeds: str = field(default="42,43,44", metadata={"help": "Seeds of the deciding rows (first = seed of single-seed rows)."})
    bf16: bool = field(default=True, metadata={"help": "Train under bf16 autocast (CPU with AVX512-BF16: ~1.4-1.9x faster)."})
    timing_steps: int = field(default=24, metadata={"help": "Training steps timed per variant for the step-time ratios."})


def _seeds(args) -> list[int]:
    return [int(s) for s in args.seeds.split(",")]


def ft_config(args, seed: int, teacher: bool = False) -> FinetuneConfig:
    if teacher:
        return FinetuneConfig(num_train_epochs=args.teacher_epochs, learning_rate=args.teacher_lr,
                              per_device_train_batch_size=args.batch_size, seed=seed, bf16=args.bf16)
    return FinetuneConfig(num_train_epochs=args.student_epochs, learning_rate=args.student_lr,
                          per_device_train_batch_size=args.batch_size, seed=seed, bf16=args.bf16)


def teacher_dir(args) -> str:
    return os.path.join(args.cache_dir, "teacher-" + os.path.basename(args.teacher))


def finetune_dir(args, seed: int) -> str:
    return os.path.join(args.cache_dir, f"student6_finetune-s{seed}")


def kd_args(args, out: str, seed: int, recipe: str, max_steps: int = -1) -> DistillationArguments:
    return DistillationArguments(
        **training_kwargs(out, seed, args.student_epochs, args.student_lr, args.batch_size, args.bf16,
                          max_steps=max_steps),
        temperature=args.temperature, alpha=args.alpha, **RECIPES[recipe][0],
    )


def run_kd(args, name: str, seed: int, teacher: str, student: str, layers: str | None, recipe: str) -> dict:
    """One distillation row through `run_distillation` (the steps of scripts/distill.py), cached by its settings."""
    out = os.path.join(args.cache_dir, f"{name}-s{seed}")
    settings = {"teacher": teacher, "student": student, "layers": layers, "recipe": RECIPES[recipe][0], "seed": seed,
                "epochs": args.student_epochs, "lr": args.student_lr, "batch": args.batch_size, "T": args.temperature,
                "alpha": args.alpha, "bf16": args.bf16}
    key, key_path = cache_key(settings), os.path.join(out, "bench_key.json")
    summary_path = os.path.join(out, "distill_summary.json")
    if os.path.exists(key_path) and os.path.exists(summary_path) and json.load(open(key_path)).get("key") == key:
        record = json.load(open(summary_path))
        reused = True
    else:
        model_args = ModelArguments(teacher_model=teacher, student_model=student, student_layers=layers, finetune_teacher=False)
        data_args = DataArguments(evaluate_teacher=False, teacher_cache_dir=teacher_cache_dir(args, teacher, recipe))
        record = run_distillation(model_args, data_args, kd_args(args, out, seed, recipe)).to_dict()
        with open(key_path, "w") as fh:
            json.dump({"key": key, "settings": settings}, fh, indent=2)
        reused = False
    return {"path": os.path.join(out, "model"), "reused_trained_weights": reused, "recipe": recipe,
            "recipe_description": RECIPES[recipe][1], "teacher": teacher, "student_source": student, "layers": layers,
            "seed": seed, "validation_accuracy": record["metrics"]["student"]["validation"]["validation_accuracy"],
            "train_runtime_s": record["training"]["runtime_s_this_invocation"]}


def run_finetune(args, data, name: str, seed: int, layers: str | None) -> dict:
    from hfcompress.distill import init_student_from_teacher

    out = finetune_dir(args, seed) if layers is None else os.path.join(args.cache_dir, f"{name}-s{seed}")
    model = None
    if layers is not None:
        from transformers import set_seed

        set_seed(seed)
        base = AutoModelForSequenceClassification.from_pretrained(
            _path(args.student), num_labels=2, id2label={0: "rotten", 1: "fresh"}, label2id={"rotten": 0, "fresh": 1})
        model = init_student_from_teacher(base, layers=[int(x) for x in layers.split(",")])
    s = finetune_classifier(args.student, data, out, ft_config(args, seed), model=model)
    return {"path": out, "reused_trained_weights": s["reused"], "seed": seed, "layers": layers,
            "validation_accuracy": s.get("validation_metrics", {}).get("eval_accuracy"),
            "train_runtime_s": s["train_runtime_s"]}


def _path(name):
    from hfcompress.assets import resolve_model_path

    return resolve_model_path(name)


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


def time_steps(args, seed: int) -> dict:
    """Median step time of plain fine-tuning vs KD from cached logits and with the teacher run every step (MiniLM-L6),
    and of plain fine-tuning vs the intermediate stage from cached hidden states and relations (the 3-block student of
    the full recipes, same cache). Same steps and batch size within each pair; runs are fresh (never reused)."""
    import shutil

    from hfcompress.distill import DistillationTrainer, init_student_from_teacher

    timers = []
    orig_init = DistillationTrainer.__init__

    def timed_init(self, *a, **kw):  # attach a step timer to the trainer that run_distillation builds
        orig_init(self, *a, **kw)
        timers.append(StepTimer())
        self.add_callback(timers[-1])

    n, base, L = args.timing_steps, os.path.join(args.cache_dir, "timing"), args.student3_layers
    shutil.rmtree(base, ignore_errors=True)
    data, res = load_rotten_tomatoes(), {}
    ft = FinetuneConfig(max_steps=n, per_device_train_batch_size=args.batch_size, seed=seed, bf16=args.bf16,
                        learning_rate=args.student_lr)
    for label, layers in (("plain_s", None), ("plain_student3_s", L)):
        model = None
        if layers:
            model = init_student_from_teacher(AutoModelForSequenceClassification.from_pretrained(_path(args.student), num_labels=2),
                                              layers=[int(x) for x in layers.split(",")])
            model.config.hfcompress_student_layers = None  # not cacheable: always a fresh, timed run
        finetune_classifier(args.student, data, os.path.join(base, label), ft, model=model, callbacks=[t := StepTimer()])
        res[label] = statistics.median(t.times[4:])
    DistillationTrainer.__init__ = timed_init
    try:
        for label, recipe, cache, layers in (("kd_cached_s", "logits", True, None),
                                              ("kd_online_s", "logits", False, None),
                                              ("kd_cached_stage1_student3_s", "staged", True, L)):
            a = kd_args(args, os.path.join(base, label), seed, recipe, max_steps=n)
            if recipe == "staged":
                a.intermediate_fraction = 0.99  # every timed step is in the intermediate stage
            data_args = DataArguments(evaluate_teacher=False, cache_teacher=cache,
                                      teacher_cache_dir=teacher_cache_dir(args, teacher_dir(args), recipe))
            run_distillation(ModelArguments(teacher_model=teacher_dir(args), student_model=args.student,
                                            student_layers=layers, finetune_teacher=False), data_args, a)
            res[label] = statistics.median(timers[-1].times[4:])
    finally:
        DistillationTrainer.__init__ = orig_init
    res["steps_timed"] = n - 4
    res["batch_size"] = args.batch_size
    return res


def teacher_cache_dir(args, teacher: str, recipe: str) -> str:
    """One teacher-output cache per teacher and per set of cached outputs (all students share MiniLM's tokenizer)."""
    need = {k: v for k, v in RECIPES[recipe][0].items() if k in ("hidden_weight", "layer_map", "relation_weight")}
    return os.path.join(args.cache_dir, "teacher-outputs", cache_key({"teacher": os.path.abspath(teacher), "need": need}))


def main(argv=None):
    (args,) = parse_args((BenchmarkArguments,), argv, description=__doc__.split("\n\n")[0])
    setup_logging()
    all_stages = {"finetune", "teacher", "kd", "student3", "best", "timing", "latency"}
    stages = all_stages if args.stages == "all" else set(args.stages.split(","))
    os.makedirs(args.cache_dir, exist_ok=True)
    result = json.load(open(args.output)) if os.path.exists(args.output) else {}
    runs = result.setdefault("runs", {})
    seeds = _seeds(args)
    data = load_rotten_tomatoes(seed=42)
    texts, labels = data["test"]["text"], data["test"]["label"]
    tok = AutoTokenizer.from_pretrained(_path(args.student))

    def test_acc(path):
        model = AutoModelForSequenceClassification.from_pretrained(path)
        return evaluate_classifier(model, AutoTokenizer.from_pretrained(path) if os.path.exists(os.path.join(path, "tokenizer.json")) else tok,
                                   texts, labels, desc=f"test {os.path.basename(os.path.dirname(path)) or path}")

    def record(name: str, rows: list[dict]) -> None:
        for r in rows:
            r["test"] = test_acc(r["path"])
        runs[name] = rows
        mean, std = mean_std([r["test"]["accuracy"] for r in rows])
        result[f"{name}_accuracy"], result[f"{name}_accuracy_std"] = mean, std
        result[f"{name}_seeds"] = [r["seed"] for r in rows]
        write_json(args.output, result)

    t_dir = teacher_dir(args)
    if stages & {"teacher", "kd", "student3", "best", "timing", "latency"}:
        s = finetune_classifier(args.teacher, data, t_dir, ft_config(args, seeds[0], teacher=True))
        if "teacher" in stages:
            record("teacher", [{"path": t_dir, "seed": seeds[0], "reused_trained_weights": s["reused"],
                                "train_runtime_s": s["train_runtime_s"], "model": args.teacher}])
    if stages & {"finetune", "student3", "best"}:
        record("student6_finetune", [run_finetune(args, data, "student6_finetune", s, None) for s in seeds])
    if "kd" in stages:
        record("student6_kd", [run_kd(args, "student6_kd", s, t_dir, args.student, None, "logits") for s in seeds])
        result["student6_kd_teacher"] = args.teacher
    if "student3" in stages:
        s0, L = seeds[0], args.student3_layers
        record("student3_finetune", [run_finetune(args, data, "student3_finetune", s0, L)])
        record("student3_kd", [run_kd(args, "student3_kd", s0, t_dir, args.student, L, "logits")])
        result["student3_kd_teacher"] = args.teacher
        candidates = {
            "student3_ftcut_kd_logits": (t_dir, "logits"),
            "student3_ftcut_kd_full": (t_dir, "full"),
            "student3_ftcut_kd_staged": (t_dir, "staged"),
            "student3_ftcut_kd_minilm_teacher": (finetune_dir(args, s0), "full"),
        }
        for name, (teacher, recipe) in candidates.items():
            record(name, [run_kd(args, name, s0, teacher, finetune_dir(args, s0), L, recipe)])
        # The best candidate is chosen on the validation split, never on the test split.
        result["student3_candidates_validation_accuracy"] = {n: runs[n][0]["validation_accuracy"] for n in candidates}
        result["student3_best_candidate"] = max(candidates, key=lambda n: runs[n][0]["validation_accuracy"])
        write_json(args.output, result)
    if "best" in stages and "student3_best_candidate" in result:
        name = result["student3_best_candidate"]
        first = runs[name][0]
        teacher = first["teacher"]
        rows = [run_kd(args, name, s, teacher if teacher == t_dir else finetune_dir(args, s), finetune_dir(args, s),
                       args.student3_layers, first["recipe"]) for s in seeds]
        record(name, rows)
        result["student3_best_kd_accuracy"] = result[f"{name}_accuracy"]
        result["student3_best_kd_accuracy_std"] = result[f"{name}_accuracy_std"]
        result["student3_best_recipe"] = (f"{name}: 3 blocks ({args.student3_layers}) cut from MiniLM-L6 fine-tuned "
                                          f"(same seed), teacher {'MPNet-base' if teacher == t_dir else 'MiniLM-L6 fine-tuned'}, "
                                          f"{first['recipe_description']}")
        write_json(args.output, result)
    if "timing" in stages:
        timing = time_steps(args, seeds[0])
        result["step_time_s"] = timing
        result["kd_step_time_ratio_cached"] = timing["kd_cached_s"] / timing["plain_s"]
        result["kd_step_time_ratio_cached_intermediate"] = timing["kd_cached_stage1_student3_s"] / timing["plain_student3_s"]
        result["kd_step_time_ratio_online"] = timing["kd_online_s"] / timing["plain_s"]
        write_json(args.output, result)
    if "latency" in stages:
        lat = {}
        paths = {"teacher": t_dir, "student6": runs["student6_finetune"][0]["path"]}
        if runs.get("student3_finetune"):
            paths["student3"] = runs["student3_finetune"][0]["path"]
        for name, path in paths.items():
            model = AutoModelForSequenceClassification.from_pretrained(path)
            lat[name] = measure_latency(model, batch_size=32, seq_len=128, runs=7, warmup=2)
            lat[name].update(parameters=count_parameters(model), size_mb=model_size_mb(model))
            result[f"latency_ms_{name}"] = lat[name]["median_ms"]
        result["latency"] = lat
        for name in ("student6", "student3"):
            if name in lat:
                result[f"speedup_{name}_vs_teacher"] = lat["teacher"]["median_ms"] / lat[name]["median_ms"]
        write_json(args.output, result)

    floors = {}
    if "student6_finetune_accuracy" in result:
        ft, ft_std = result["student6_finetune_accuracy"], result["student6_finetune_accuracy_std"]
        if "student3_best_kd_accuracy" in result:
            floors["student3_best_kd_ge_0.97x_student6_finetune"] = result["student3_best_kd_accuracy"] >= 0.97 * ft
        if "student6_kd_accuracy" in result:
            floors["student6_kd_minus_finetune_gt_finetune_std"] = result["student6_kd_accuracy"] - ft > ft_std
    for key in ("kd_step_time_ratio_cached", "kd_step_time_ratio_cached_intermediate"):
        if key in result:
            floors[f"{key}_le_1.15"] = result[key] <= 1.15
    result["floors_met"] = floors
    result["settings"] = asdict(args)
    result["command"] = "python scripts/benchmark_distill.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["environment"] = {**environment(), "dataset": "rotten-tomatoes (offline), test split 1,275 rows",
                             "training_device": "cpu (bf16 autocast)" if args.bf16 else "cpu (fp32)",
                             "latency_device": "cpu (fp32)"}
    write_json(args.output, result)
    with open(os.path.splitext(args.output)[0] + ".md", "w") as fh:
        fh.write(markdown_table(result))
    logger.info("Wrote %s", args.output)


def markdown_table(r: dict) -> str:
    """The README table, rendered from the result JSON (never typed by hand)."""
    runs, lat = r.get("runs", {}), r.get("latency", {})
    t_ms = lat.get("teacher", {}).get("median_ms")
    out = ["| row | test accuracy (mean ± std) | seeds | params (M) | CPU ms (b32 x 128) | speed-up vs teacher | recipe |",
           "|---|---|---|---|---|---|---|"]
    for name, rows in runs.items():
        if not isinstance(rows, list) or not rows:  # a row of an older result format
            continue
        size = "student3" if name.startswith("student3") else "student6" if name.startswith("student6") else "teacher"
        acc, std = r.get(f"{name}_accuracy"), r.get(f"{name}_accuracy_std")
        ms, params = lat.get(size, {}).get("median_ms"), lat.get(size, {}).get("parameters")
        recipe = rows[0].get("recipe_description", "fine-tune, no KD" if name != "teacher" else "fine-tune")
        if rows[0].get("teacher") and "minilm" in name:
            recipe += " (MiniLM-L6 teacher)"
        out.append(f"| {name} | {acc:.4f} ± {std:.4f} | {len(rows)} | {params / 1e6:.1f} |" if params else
                   f"| {name} | {acc:.4f} ± {std:.4f} | {len(rows)} | n/a |")
        out[-1] += f" {ms:.0f} | {t_ms / ms:.2f}x | {recipe} |" if ms and t_ms else f" n/a | n/a | {recipe} |"
    out.append("")
    for key in ("kd_step_time_ratio_cached", "kd_step_time_ratio_cached_intermediate", "kd_step_time_ratio_online"):
        if key in r:
            out.append(f"- {key}: {r[key]:.3f}")
    if "student3_best_recipe" in r:
        out.append(f"- best 3-block recipe (chosen on validation): {r['student3_best_recipe']}")
    out.append(f"- floors: {json.dumps(r.get('floors_met', {}))}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
