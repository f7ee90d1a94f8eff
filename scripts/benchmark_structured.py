#!/usr/bin/env python
"""Structured pruning benchmark on the real offline assets: adds `structured` to benchmarks/results/prune.json.

    python scripts/benchmark_structured.py                         # train what is not cached, then measure
    python scripts/benchmark_structured.py --levels 0.5 --seeds 42 # one level, one seed

Rows, on Rotten Tomatoes (the split of benchmarks/results/distill.json), accuracy on the test split:
  dense       MiniLM-L6 fine-tuned 2 epochs (benchmarks/cache/student6_finetune-s<seed>, re-measured here), and the
              fine-tuned MPNet-base teacher of the distillation benchmark (benchmarks/cache/teacher-mpnet-base);
  structured  the dense model of the same seed pruned while it keeps training on Rotten Tomatoes with logit KD from
              itself unpruned (cached outputs, alpha 0.9, T 2): a fraction of its attention heads and FFN neurons
              removed, warm-up, cubic ramp, cool-down; then cut out of the matrices and saved with save_structured.
              Two scores, same schedule and budget (`--methods`): `taylor` (Michel et al. 2019) and `block_movement`
              (nn_pruning's hybrid pruning: one movement score per head / neuron, trained by AdamW). Measured from
              the checkpoint reloaded from disk (load_structured; the trust_remote_code load is checked to give the
              same logits).
Latency: one forward of a batch of 32 x 128 random token ids, median of 7 after 2 warm-up passes, fp32, torch's
thread count stated; dense and pruned measured in 3 interleaved rounds in this process: latency = median over
rounds, speedup = median over rounds of the round's dense / pruned ratio (ratios, not absolute times, are what
carries from a busy machine to an idle one). Every training row runs through
`hfcompress.run.prune.run_pruning` (the steps of scripts/prune.py), under bf16 autocast unless `--bf16 False`.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
from dataclasses import asdict, dataclass, field

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hfcompress.cli import parse_args, setup_logging
from hfcompress.data import load_rotten_tomatoes
from hfcompress.prune import load_structured
from hfcompress.prune.pruner import SCORE_RULE
from hfcompress.report import count_parameters, evaluate_classifier
from hfcompress.report.bench import cache_key, mean_std, training_kwargs, write_json
from hfcompress.report.measure import folder_size_mb, measure_latency
from hfcompress.report.record import environment
from hfcompress.run import DataArguments, ModelArguments
from hfcompress.run.prune import PruningArguments, run_pruning

logger = logging.getLogger("hfcompress.benchmark")


@dataclass
class StructuredBenchmarkArguments:
    cache_dir: str = field(default="benchmarks/cache", metadata={"help": "Where trained models and teacher caches are kept."})
    output: str = field(default="benchmarks/results/prune.json", metadata={"help": "Result JSON (the `structured` key is replaced)."})
    levels: str = field(default="0.6,0.7", metadata={"help": "Comma list: fraction of heads and FFN neurons removed (MiniLM-L6)."})
    seeds: str = field(default="42", metadata={"help": "Seeds of the MiniLM-L6 rows (each starts from the dense model of its seed)."})
    extra_seeds_level: float = field(default=0.5, metadata={"help": "The level that also runs `extra_seeds`."})
    extra_seeds: str = field(default="", metadata={"help": "More seeds for `extra_seeds_level` (a mean and spread for the floor); empty for none."})
    mpnet_levels: str = field(default="0.7", metadata={"help": "Comma list: levels of the MPNet-base rows; empty to skip them."})
    mpnet_epochs: float = field(default=1.0, metadata={"help": "Epochs of the MPNet-base row (about 5x MiniLM's cost per epoch)."})
    methods: str = field(default="taylor,movement", metadata={"help": "Comma list of structured scores, each a row per "
                         "level: taylor, movement (block movement) or magnitude."})
    scope: str = field(default="global", metadata={"help": "local (every block the same fraction) or global."})
    epochs: float = field(default=2.0, metadata={"help": "Epochs of every MiniLM-L6 pruning run."})
    lr: float = field(default=5e-5, metadata={"help": "Learning rate."})
    batch_size: int = field(default=32, metadata={"help": "Training batch size."})
    temperature: float = field(default=2.0, metadata={"help": "KD temperature."})
    alpha: float = field(default=0.9, metadata={"help": "KD weight (hard-label weight 1 - alpha)."})
    pruning_start: float = field(default=0.1, metadata={"help": "Warm-up fraction of the steps (scores accumulate)."})
    pruning_end: float = field(default=0.7, metadata={"help": "End of the cubic ramp (fraction of the steps)."})
    mask_update_every: int = field(default=10, metadata={"help": "Masks recomputed every N steps."})
    latency_runs: int = field(default=7, metadata={"help": "Timed forward passes per model and round (median)."})
    latency_rounds: int = field(default=3, metadata={"help": "Rounds of dense/pruned latency, interleaved (a drifting "
                                "machine load shows in both); the median over rounds is reported."})
    measure_only: bool = field(default=False, metadata={"help": "Do not train: measure the cached rows only."})
    bf16: bool = field(default=True, metadata={"help": "Train under bf16 autocast on CPU."})


def dense_dir(args, model: str, seed: int) -> str:
    return os.path.join(args.cache_dir, "teacher-mpnet-base" if model == "mpnet-base" else f"student6_finetune-s{seed}")


ROW_NAMES = {"taylor": "taylor", "movement": "block_movement", "magnitude": "magnitude"}


def train_row(args, model: str, method: str, level: float, seed: int) -> str:
    """Prune (cached by settings) and return the run folder."""
    epochs = args.mpnet_epochs if model == "mpnet-base" else args.epochs
    out = os.path.join(args.cache_dir, f"structured-{model}-{method}-{args.scope}-{int(round(level * 100))}-s{seed}")
    teacher = dense_dir(args, model, seed)
    settings = {k: v for k, v in asdict(args).items() if k in (
        "scope", "lr", "batch_size", "temperature", "alpha", "pruning_start", "pruning_end",
        "mask_update_every", "bf16")}
    settings.update(method=method, model=model, level=level, seed=seed, epochs=epochs, teacher=teacher)
    if method == "movement":
        settings["score_rule"] = SCORE_RULE  # rows of the raw-sum rule (before issue 26) are retrained
    key, key_path = cache_key(settings), os.path.join(out, "bench_key.json")
    if os.path.exists(key_path) and json.load(open(key_path)).get("key") == key:
        return out
    if args.measure_only:
        raise SystemExit(f"{out} is not trained with these settings (drop --measure_only)")
    if not os.path.exists(os.path.join(teacher, "model.safetensors")):
        raise SystemExit(f"{teacher} is missing: run `python scripts/benchmark_distill.py` first")
    cache_name = "prune-mpnet-dense" if model == "mpnet-base" else f"prune-dense-s{seed}"
    model_args = ModelArguments(teacher_model=teacher, finetune_teacher=False, student_model=teacher)
    data_args = DataArguments(evaluate_teacher=False, teacher_cache_dir=os.path.join(args.cache_dir, "teacher-outputs", cache_name))
    targs = PruningArguments(
        **training_kwargs(out, seed, epochs, args.lr, args.batch_size, args.bf16), temperature=args.temperature, alpha=args.alpha, granularity="structured", method=method,
        scope=args.scope, target_sparsity=level, pruning_start=args.pruning_start, pruning_end=args.pruning_end,
        mask_update_every=args.mask_update_every,
    )
    run_pruning(model_args, data_args, targs)
    with open(key_path, "w") as fh:
        json.dump({"key": key, "settings": settings}, fh, indent=2)
    return out


def main(argv=None):
    (args,) = parse_args((StructuredBenchmarkArguments,), argv, description=__doc__.split("\n\n")[0])
    setup_logging()
    data = load_rotten_tomatoes(seed=42)
    texts, labels = data["test"]["text"], data["test"]["label"]
    levels = [float(x) for x in args.levels.split(",") if x]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    extra = [int(s) for s in args.extra_seeds.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in ROW_NAMES]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; expected some of {sorted(ROW_NAMES)}")
    plan = [("minilm-l6", m, lv, s) for s in seeds for lv in levels for m in methods]
    plan += [("mpnet-base", m, float(lv), 42) for lv in args.mpnet_levels.split(",") if lv for m in methods]
    plan += [("minilm-l6", m, args.extra_seeds_level, s) for s in extra if s not in seeds for m in methods]
    # Train first (long), measure after: latency figures of one model then come from back-to-back measurements.
    runs = [(m, method, lv, s, train_row(args, m, method, lv, s)) for m, method, lv, s in plan]

    threads = torch.get_num_threads()
    lat_kwargs = {"batch_size": 32, "seq_len": 128, "runs": args.latency_runs, "warmup": 2}
    dense_cache: dict[tuple[str, int], dict] = {}

    def measure(model, path: str, tok_path: str) -> dict:
        tok = AutoTokenizer.from_pretrained(tok_path)
        test = evaluate_classifier(model, tok, texts, labels, desc=f"test {path}")
        return {"accuracy": test["accuracy"], "f1": test.get("f1"), "params": count_parameters(model),
                "size_mb": folder_size_mb(path)}

    def paired_latency(dense_model, pruned_model) -> tuple[list[float], list[float]]:
        """Dense and pruned medians, interleaved round by round."""
        d, p = [], []
        for _ in range(args.latency_rounds):
            d.append(measure_latency(dense_model, **lat_kwargs)["median_ms"])
            p.append(measure_latency(pruned_model, **lat_kwargs)["median_ms"])
        return d, p

    def dense_row(model_name: str, seed: int) -> dict:
        if (model_name, seed) not in dense_cache:
            path = dense_dir(args, model_name, seed)
            m = AutoModelForSequenceClassification.from_pretrained(path).eval()
            row = {"model": model_name, "level": 0.0, "seed": seed, "path": path, **measure(m, path, path)}
            cfg = m.config
            row["heads_per_layer"] = [cfg.num_attention_heads] * cfg.num_hidden_layers
            row["ffn_per_layer"] = [cfg.intermediate_size] * cfg.num_hidden_layers
            dense_cache[(model_name, seed)] = row
        return dense_cache[(model_name, seed)]

    structured = []
    for model_name, method, level, seed, out in runs:
        dense = dense_row(model_name, seed)
        summary = json.load(open(os.path.join(out, "prune_summary.json")))
        path = summary["artifacts"]["model"]
        model = load_structured(path)
        row = {"model": model_name, "name": ROW_NAMES[method], "level": level, "seed": seed, "path": path,
               **measure(model, path, path)}
        dense_runs, pruned_runs = paired_latency(
            AutoModelForSequenceClassification.from_pretrained(dense["path"]).eval(), model)
        dense_ms, row["latency_ms"] = statistics.median(dense_runs), statistics.median(pruned_runs)
        row["latency_ms_rounds"] = pruned_runs
        remote = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
        ids = AutoTokenizer.from_pretrained(path)(texts[:16], padding=True, return_tensors="pt")
        with torch.inference_mode():
            row["remote_code_equal"] = bool(torch.equal(model(**ids).logits, remote(**ids).logits))
        p = summary["methods"]["pruning"]
        row.update(
            # the ratio of each interleaved round, median over rounds (a round's pair shares the machine's load)
            speedup=statistics.median(d / p for d, p in zip(dense_runs, pruned_runs)),
            speedup_rounds=[d / p for d, p in zip(dense_runs, pruned_runs)], dense_latency_ms=dense_ms,
            dense_latency_ms_rounds=dense_runs,
            accuracy_delta_points=100 * (row["accuracy"] - dense["accuracy"]), dense_accuracy=dense["accuracy"],
            heads_per_layer=p["heads_per_layer"], ffn_per_layer=p["ffn_per_layer"],
            removed_blocks=p["removed_blocks"], method=p["method"], scope=p["scope"],
            validation_accuracy=summary["metrics"]["student"]["validation"]["validation_accuracy"],
            train_runtime_s=summary["training"]["runtime_s_this_invocation"],
            epochs=summary["settings"]["training"]["num_train_epochs"],
        )
        structured.append(row)
        logger.info("%s %s level %.2f seed %d: acc %.4f (dense %.4f), %.1f ms vs %.1f ms = %.2fx", model_name,
                    row["name"], level, seed, row["accuracy"], dense["accuracy"], row["latency_ms"], dense_ms,
                    row["speedup"])

    result = json.load(open(args.output)) if os.path.exists(args.output) else {}
    result["structured"] = structured
    result["structured_dense"] = list(dense_cache.values())
    groups = {}
    for r in structured:
        groups.setdefault((r["model"], r["name"], r["level"]), []).append(r)
    summary_rows = []
    for (model_name, name, level), rows in groups.items():
        acc, acc_std = mean_std([r["accuracy"] for r in rows])
        dense_acc, dense_std = mean_std([dense_cache[(model_name, r["seed"])]["accuracy"] for r in rows])
        sp, sp_std = mean_std([r["speedup"] for r in rows])
        summary_rows.append({"model": model_name, "name": name, "level": level, "seeds": [r["seed"] for r in rows],
                             "accuracy": acc, "accuracy_std": acc_std, "dense_accuracy": dense_acc,
                             "dense_accuracy_std": dense_std, "accuracy_delta_points": 100 * (acc - dense_acc),
                             "speedup": sp, "speedup_std": sp_std, "params": rows[0]["params"],
                             "size_mb": rows[0]["size_mb"]})
    result["structured_summary"] = summary_rows
    result["structured_floor"] = {
        "rule": "per model: one level >= 2.5x faster on CPU within 1.0 accuracy point of its dense model (seed means)",
        "met": {m: [f"{r['name']} {r['level']:.2f}" for r in summary_rows if r["model"] == m and r["speedup"] >= 2.5
                    and r["accuracy_delta_points"] >= -1.0] for m in sorted({r["model"] for r in summary_rows})},
    }
    result["structured_settings"] = {**asdict(args), "latency": {**lat_kwargs, "threads": threads, "dtype": "float32"}}
    result["structured_command"] = "python scripts/benchmark_structured.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result["structured_environment"] = {**environment(), "training_device": "cpu (bf16 autocast)" if args.bf16 else "cpu",
                                        "gpu_used": False}
    write_json(args.output, result)
    md = os.path.join(os.path.dirname(args.output), "prune_structured.md")
    with open(md, "w") as fh:
        fh.write(markdown(result))
    logger.info("Wrote %s and %s", args.output, md)


def markdown(r: dict) -> str:
    lat = r["structured_settings"]["latency"]
    out = ["# Structured pruning (heads + FFN neurons removed), Rotten Tomatoes test split", "",
           f"CPU latency: batch {lat['batch_size']} x {lat['seq_len']}, median of {lat['runs']}, {lat['threads']} threads, fp32.", "",
           "| model | score | removed | seeds | test accuracy | dense | delta (points) | speedup | params | MB |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["structured_summary"]:
        out.append(f"| {s['model']} | {s['name']} | {s['level']:.2f} | {len(s['seeds'])} | "
                   f"{s['accuracy']:.4f} ± {s['accuracy_std']:.4f} | "
                   f"{s['dense_accuracy']:.4f} | {s['accuracy_delta_points']:+.2f} | {s['speedup']:.2f}x | "
                   f"{s['params']:,} | {s['size_mb']:.1f} |")
    out += ["", "Per run (heads and neurons kept per block):", ""]
    for row in r["structured"]:
        out.append(f"- {row['model']} {row['name']} {row['level']:.2f} seed {row['seed']}: heads {row['heads_per_layer']}, "
                   f"FFN {row['ffn_per_layer']}, {row['latency_ms']:.0f} ms vs dense {row['dense_latency_ms']:.0f} ms")
    out.append(f"- floor: {json.dumps(r['structured_floor'])}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
