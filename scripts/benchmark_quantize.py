#!/usr/bin/env python
"""Quantization and low-rank benchmark on the real offline assets: writes benchmarks/results/quantize.json and
quantize.md.

    python scripts/benchmark_quantize.py                 # build (and train) what is not cached, then measure
    python scripts/benchmark_quantize.py --measure_only  # re-measure the cached variants

The fp32 model is MiniLM-L6 fine-tuned 2 epochs on Rotten Tomatoes (benchmarks/cache/student6_finetune-s42, the
distillation benchmark's row; the split of benchmarks/results/distill.json). Every variant is built from it with the
steps of scripts/quantize.py (`hfcompress.run.quantize.compress_to`) or, for the trained low-rank row, of
scripts/lowrank.py (`run_lowrank`: factorized to half the projections' parameters, then 2 epochs of
logit KD (alpha 0.9, T 2, lr 1e-4) from the fp32 model, bf16 autocast on this CPU: CPU time), saved, and measured from disk, loaded fresh by `hfcompress.loading.load_model`:

  accuracy        test split (1,275 reviews)
  size_mb         every file of the checkpoint folder (weights, config, tokenizer, modeling code): what a user downloads
  latency_ms      one forward of 32 x 128 random token ids, median of `latency_runs` after 2 warm-ups, `threads`
                  threads; the fp32 model and every variant measured in `latency_rounds` interleaved rounds in this
                  process: latency = median over rounds; speedup = median over rounds of that round's fp32 / variant
  peak_memory_mb  peak resident memory of a fresh process that loads the checkpoint and runs that one batch
  size_ratio      fp32 size / variant size (> 1 is smaller)
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hfcompress.cli import parse_args, setup_logging
from hfcompress.data import load_rotten_tomatoes
from hfcompress.loading import checkpoint_format, load_model, save_model
from hfcompress.quantize.config import QuantizationConfig
from hfcompress.report import evaluate_classifier
from hfcompress.report.bench import cache_key, training_kwargs, write_json
from hfcompress.report.measure import checkpoint_size_mb, interleaved_latency, measure_peak_memory
from hfcompress.report.record import environment
from hfcompress.run import DataArguments, ModelArguments
from hfcompress.run.lowrank import LowRankArguments, run_lowrank
from hfcompress.run.quantize import CompressArguments, compress_to

logger = logging.getLogger("hfcompress.benchmark")

# name -> (source, quantization settings, steps before quantization). Sources: "fp32", "svd_trained" (the trained
# low-rank model) or "structured" (MiniLM-L6 with half its heads and neurons removed, benchmarks/cache of the
# structured pruning benchmark).
VARIANTS = {
    "onnx_fp32": ("fp32", {"quantization": "onnx_fp32"}, {}),
    "onnx_int8": ("fp32", {"quantization": "onnx_int8"}, {}),
    "onnx_int8_per_tensor": ("fp32", {"quantization": "onnx_int8", "onnx_per_channel": False}, {}),
    # the one projection found most sensitive on the *validation* split (layer 0's FFN down-projection) kept float
    "onnx_int8_layer0_down_fp32": ("fp32", {"quantization": "onnx_int8", "onnx_float_modules": r"layer\.0\.output\.dense$"}, {}),
    "vocab_trim": ("fp32", {"quantization": "none"}, {"vocab_trim": True}),
    "vocab_trim_onnx_int8": ("fp32", {"quantization": "onnx_int8"}, {"vocab_trim": True}),
    "svd": ("fp32", {"quantization": "none"}, {"lowrank_budget": 0.5}),
    "svd_finetuned": ("svd_trained", {"quantization": "none"}, {}),
    "svd_finetuned_onnx_int8": ("svd_trained", {"quantization": "onnx_int8"}, {}),
    "structured50_onnx_int8": ("structured", {"quantization": "onnx_int8"}, {}),
    "torch_int8": ("fp32", {"quantization": "torch_int8"}, {}),
    "bnb_8bit": ("fp32", {"quantization": "bnb_8bit"}, {}),
    "bnb_nf4": ("fp32", {"quantization": "bnb_4bit", "bnb_4bit_quant_type": "nf4"}, {}),
    "bnb_fp4": ("fp32", {"quantization": "bnb_4bit", "bnb_4bit_quant_type": "fp4"}, {}),
}


@dataclass
class QuantizeBenchmarkArguments:
    cache_dir: str = field(default="benchmarks/cache", metadata={"help": "Where trained models and variants are kept."})
    output: str = field(default="benchmarks/results/quantize.json", metadata={"help": "Result JSON."})
    fp32_model: str = field(default="benchmarks/cache/student6_finetune-s42",
                            metadata={"help": "The fine-tuned fp32 classifier every variant starts from."})
    structured_model: str = field(
        default="benchmarks/cache/structured-minilm-l6-taylor-global-50-s42/model",
        metadata={"help": "A structurally pruned model (scripts/benchmark_structured.py) for the composition row."},
    )
    variants: str = field(default=",".join(VARIANTS), metadata={"help": "Comma list of variants to build and measure."})
    svd_budget: float = field(default=0.5, metadata={"help": "Parameter budget of the trained low-rank row."})
    svd_epochs: float = field(default=2.0, metadata={"help": "Epochs of training the low-rank factors."})
    lr: float = field(default=1e-4, metadata={"help": "Learning rate of the low-rank row."})
    seed: int = field(default=42, metadata={"help": "Seed of the trained row."})
    threads: int = field(default=2, metadata={"help": "CPU threads for latency and peak memory."})
    latency_runs: int = field(default=7, metadata={"help": "Timed forward passes per model and round (median)."})
    latency_rounds: int = field(default=3, metadata={"help": "Interleaved rounds over all models."})
    measure_only: bool = field(default=False, metadata={"help": "Do not build or train: measure cached variants."})
    bf16: bool = field(default=True, metadata={"help": "Train the low-rank row under bf16 autocast on CPU."})


def train_svd(args) -> str:
    out = os.path.join(args.cache_dir, f"lowrank-minilm-l6-budget{int(round(args.svd_budget * 100))}-s{args.seed}")
    settings = {"budget": args.svd_budget, "epochs": args.svd_epochs, "lr": args.lr, "seed": args.seed,
                "teacher": args.fp32_model, "bf16": args.bf16, "alpha": 0.9, "temperature": 2.0}
    key, key_path = cache_key(settings), os.path.join(out, "bench_key.json")
    if os.path.exists(key_path) and json.load(open(key_path)).get("key") == key:
        return os.path.join(out, "model")
    if args.measure_only:
        raise SystemExit(f"{out} is not trained with these settings (drop --measure_only)")
    model_args = ModelArguments(teacher_model=args.fp32_model, finetune_teacher=False, student_model=args.fp32_model)
    data_args = DataArguments(evaluate_teacher=False,
                              teacher_cache_dir=os.path.join(args.cache_dir, "teacher-outputs", f"prune-dense-s{args.seed}"))
    targs = LowRankArguments(**training_kwargs(out, args.seed, args.svd_epochs, args.lr, 32, args.bf16),
                             temperature=2.0, alpha=0.9, parameter_budget=args.svd_budget)
    run_lowrank(model_args, data_args, targs)
    with open(key_path, "w") as fh:
        json.dump({"key": key, "settings": settings}, fh, indent=2)
    return os.path.join(out, "model")


def build(args, name: str, sources: dict, data, data_args) -> str:
    source, qsettings, steps_settings = VARIANTS[name]
    out = os.path.join(args.cache_dir, "quantize", name)
    settings = {"source": sources[source], "quantization": qsettings, "steps": steps_settings}
    key, key_path = cache_key(settings), os.path.join(out, "bench_key.json")
    model_dir = os.path.join(out, "model")
    if os.path.exists(key_path) and json.load(open(key_path)).get("key") == key:
        return model_dir
    if args.measure_only:
        raise SystemExit(f"{out} is not built with these settings (drop --measure_only)")
    model = load_model(sources[source])
    tok = AutoTokenizer.from_pretrained(sources[source])
    if os.path.exists(model_dir):
        import shutil

        shutil.rmtree(model_dir)
    info = compress_to(model, tok, data, data_args, QuantizationConfig(**qsettings),
                       CompressArguments(output_dir=out, **steps_settings), model_dir)
    with open(key_path, "w") as fh:
        json.dump({"key": key, "settings": settings, "steps": info}, fh, indent=2, default=str)
    return model_dir


def main(argv=None):
    (args,) = parse_args((QuantizeBenchmarkArguments,), argv, description=__doc__.split("\n\n")[0])
    setup_logging()
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    data = load_rotten_tomatoes(seed=42)
    data_args = DataArguments()
    texts, labels = data["test"]["text"], data["test"]["label"]

    # The fp32 reference as a user downloads it (weights, config, tokenizer; no training leftovers).
    fp32_dir = os.path.join(args.cache_dir, "quantize", "fp32")
    if not os.path.exists(os.path.join(fp32_dir, "model.safetensors")):
        save_model(AutoModelForSequenceClassification.from_pretrained(args.fp32_model), fp32_dir,
                        AutoTokenizer.from_pretrained(args.fp32_model))
    sources = {"fp32": fp32_dir, "structured": args.structured_model}
    if any(VARIANTS[n][0] == "svd_trained" for n in names):
        sources["svd_trained"] = train_svd(args)
    paths = {"fp32": fp32_dir, **{n: build(args, n, sources, data, data_args) for n in names}}

    torch.set_num_threads(args.threads)
    rows = {}
    for name, path in paths.items():
        model = load_model(path, num_threads=args.threads)
        test = evaluate_classifier(model, AutoTokenizer.from_pretrained(path), texts, labels, desc=f"test {name}")
        rows[name] = {"accuracy": test["accuracy"], "f1": test.get("f1"), "size_mb": checkpoint_size_mb(path),
                      "format": checkpoint_format(path), "path": path,
                      "peak_memory_mb": measure_peak_memory(path, threads=args.threads)["peak_memory_mb"]}
        del model
        logger.info("%s: accuracy %.4f, %.1f MB, peak %.0f MB", name, rows[name]["accuracy"], rows[name]["size_mb"],
                    rows[name]["peak_memory_mb"])

    models = {name: load_model(path, num_threads=args.threads) for name, path in paths.items()}
    lat = {"batch_size": 32, "seq_len": 128, "runs": args.latency_runs, "warmup": 2}
    latency = interleaved_latency(models, args.latency_rounds, **lat)  # "fp32" first: the reference of the ratios
    for name, row in latency.items():
        logger.info("%s: %s ms", name, ", ".join(f"{ms:.1f}" for ms in row["rounds_ms"]))
    fp32 = rows["fp32"]
    variants = {}
    for name in names:
        row = rows[name]
        variants[name] = {
            "accuracy": row["accuracy"], "accuracy_delta_points": 100 * (row["accuracy"] - fp32["accuracy"]),
            "size_mb": row["size_mb"], "size_ratio": fp32["size_mb"] / row["size_mb"],
            "latency_ms": latency[name]["median_ms"], "latency_ms_rounds": latency[name]["rounds_ms"],
            "speedup": latency[name]["speedup"], "speedup_rounds": latency[name]["speedup_rounds"],
            "peak_memory_mb": row["peak_memory_mb"],
            "format": row["format"], "source": VARIANTS[name][0], "settings": {**VARIANTS[name][1], **VARIANTS[name][2]},
            "path": row["path"],
        }
    int8 = [v for k, v in variants.items() if k.startswith(("torch_int8", "onnx_int8"))]
    nf4 = variants.get("bnb_nf4")
    result = {
        "fp32_accuracy": fp32["accuracy"], "fp32_size_mb": fp32["size_mb"],
        "fp32_latency_ms": latency["fp32"]["median_ms"], "fp32_latency_ms_rounds": latency["fp32"]["rounds_ms"],
        "fp32_peak_memory_mb": fp32["peak_memory_mb"], "fp32_model": args.fp32_model,
        "variants": variants,
        "floors": {
            "int8_within_0.5_points_and_1.8x": any(v["accuracy_delta_points"] >= -0.5 and v["speedup"] >= 1.8 for v in int8),
            "nf4_within_1.5_points": bool(nf4 and nf4["accuracy_delta_points"] >= -1.5),
            "a_checkpoint_4x_smaller": any(v["size_ratio"] >= 4.0 for v in variants.values()),
        },
        "latency": {**lat, "threads": args.threads, "rounds": args.latency_rounds, "dtype": "fp32 input ids, CPU"},
        "settings": asdict(args),
        "command": "python scripts/benchmark_quantize.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": {**environment(), "gpu_used": False},
    }
    write_json(args.output, result)
    md = os.path.join(os.path.dirname(args.output), "quantize.md")
    with open(md, "w") as fh:
        fh.write(markdown(result))
    logger.info("Wrote %s and %s", args.output, md)


def markdown(r: dict) -> str:
    lat = r["latency"]
    out = ["# Quantization and low rank, MiniLM-L6 fine-tuned on Rotten Tomatoes (test split)", "",
           f"CPU latency: batch {lat['batch_size']} x {lat['seq_len']}, median of {lat['runs']} after {lat['warmup']} "
           f"warm-ups, {lat['threads']} threads, {lat['rounds']} interleaved rounds; size = whole checkpoint folder.", "",
           "| variant | accuracy | Δ points | size MB | size ratio | latency ms | speedup | peak MB |",
           "|---|---|---|---|---|---|---|---|",
           f"| fp32 | {r['fp32_accuracy']:.4f} | | {r['fp32_size_mb']:.1f} | 1.00x | {r['fp32_latency_ms']:.0f} | 1.00x | "
           f"{r['fp32_peak_memory_mb']:.0f} |"]
    for name, v in r["variants"].items():
        out.append(f"| {name} | {v['accuracy']:.4f} | {v['accuracy_delta_points']:+.2f} | {v['size_mb']:.1f} | "
                   f"{v['size_ratio']:.2f}x | {v['latency_ms']:.0f} | {v['speedup']:.2f}x | {v['peak_memory_mb']:.0f} |")
    out += ["", f"Floors: {json.dumps(r['floors'])}"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
