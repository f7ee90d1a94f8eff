#!/usr/bin/env python
"""Measure a finished token-classification distillation run against its teacher, both reloaded from disk, and write
benchmarks/results/tasks.json and tasks.md (issue 28's keys: ``tasks`` -> task -> ``base`` and ``variants``, each with
metric, metric_name, size_mb, latency_ms, speedup, params).

    python scripts/benchmark_tasks.py --run_dir RUN --command "the command that made RUN" [--onnx_int8]

RUN is the ``--output_dir`` of an ``hfcompress distill`` run on token-tagged data: its record gives the teacher folder
and the test entity F1 of teacher and student (the run's own evaluation, per type); this script adds, each model
loaded fresh from disk by `hfcompress.loading.load_model`:

  size_mb     every file of the checkpoint folder (weights, config, tokenizer)
  latency_ms  one forward of 32 x 128 random token ids, median of 7 runs after 2 warm-ups on `--threads` threads, the
              models measured in `--rounds` interleaved rounds in this process; speedup = median over rounds of that
              round's base / variant
  params      parameters of the loaded model

With ``--onnx_int8`` the student is also exported to ONNX and quantized (dynamic int8) and its test entity F1 measured
on the same split (`run.token.evaluate_tagger`). The figures are what they are: the issue's floors are recorded next to
them, met or not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys

import torch

from hfcompress.costs import checkpoint_size_mb, parameter_counts
from hfcompress.files import write_text_atomic
from hfcompress.loading import load_model
from hfcompress.report.bench import write_json
from hfcompress.report.measure import saved_models_latency

logger = logging.getLogger("benchmark_tasks")

FLOORS = {"ner": "one variant >= 2.5x faster on CPU within 2.0 entity-F1 points of its base"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run_dir", required=True, help="The finished distill run (its distill_summary.json).")
    p.add_argument("--command", required=True, help="The command that produced --run_dir (recorded).")
    p.add_argument("--task_name", default="ner", help="Key of the task in the results.")
    p.add_argument("--onnx_int8", action="store_true", help="Also measure the student exported to ONNX int8.")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of the latency measurement.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved latency rounds.")
    p.add_argument("--output", default="benchmarks/results/tasks.json", help="Where the JSON goes (.md beside it).")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    with open(os.path.join(args.run_dir, "distill_summary.json")) as fh:
        record = json.load(fh)
    data = record["data"]
    teacher_dir, student_dir = record["models"]["teacher"]["path"], record["artifacts"]["model"]
    metric = data.get("metric", "f1")
    paths = {"base": teacher_dir, "distilled": student_dir}
    metrics = {"base": record["metrics"]["teacher"]["test"],
               "distilled": {k[len("test_"):]: v for k, v in record["metrics"]["student"]["test"].items()}}
    if args.onnx_int8:
        from datasets import DatasetDict
        from transformers import AutoTokenizer

        from hfcompress.quantize import export_onnx, quantize_onnx
        from hfcompress.run.token import evaluate_tagger
        from hfcompress.tagging import load_token_classification, tag_names

        onnx32, onnx8 = (os.path.join(args.run_dir, f"model_onnx_{k}") for k in ("fp32", "int8"))
        tokenizer = AutoTokenizer.from_pretrained(student_dir)
        export_onnx(load_model(student_dir), onnx32, tokenizer)
        quantize_onnx(onnx32, onnx8)
        settings = record["settings"]["data"]
        dataset = load_token_classification(settings["dataset"], settings["tokens_column"], settings["tags_column"],
                                            seed=settings["split_seed"])
        metrics["distilled_onnx_int8"] = evaluate_tagger(load_model(onnx8), tokenizer, DatasetDict(dataset)["test"],
                                                         tag_names(dataset), settings["max_length"])
        paths["distilled_onnx_int8"] = onnx8
    latency = saved_models_latency(paths, threads=args.threads, rounds=args.rounds)
    rows = {}
    for name, path in paths.items():
        rows[name] = {"metric": metrics[name].get(metric), "metric_name": data.get("metric_name", metric),
                      "metric_per_type": {k: v for k, v in metrics[name].items() if k.endswith("_f1") and k != "f1"},
                      "size_mb": checkpoint_size_mb(path), "latency_ms": latency[name]["median_ms"],
                      "speedup": latency[name].get("speedup"), "params": parameter_counts(load_model(path))["parameters"],
                      "path": path}
    base = rows.pop("base")
    for row in rows.values():
        row["metric_delta_points"] = 100 * (row["metric"] - base["metric"])
    met = [n for n, r in rows.items() if (r["speedup"] or 0) >= 2.5 and r["metric_delta_points"] >= -2.0]
    result = {
        "tasks": {args.task_name: {
            "base": base, "variants": rows, "dataset": data.get("dataset"), "splits": data.get("splits"),
            "pipeline_tag": data.get("pipeline_tag"), "floor": FLOORS.get(args.task_name),
            "floor_met_by": met,
            "training": {"student": record["models"]["student"].get("source"),
                         "distillation": {k: record["methods"]["distillation"].get(k) for k in
                                          ("alpha", "temperature", "hidden_weight", "relation_weight")},
                         "steps": record["training"].get("steps"), "runtime_s": record["training"].get(
                             "runtime_s_this_invocation")},
        }},
        "latency": {"threads": args.threads, "rounds": args.rounds, "batch": "32 x 128 random ids", "runs": 7},
        "command": args.command,
        "measured_with": "python scripts/benchmark_tasks.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor(),
                        "note": "2-core CPU box shared with other jobs while measured: ratios from one interleaved "
                                "session are meaningful, absolute milliseconds less so"},
    }
    write_json(args.output, result)
    lines = [f"# Tasks beyond single-text classification ({args.task_name})", "",
             f"Data: {data.get('dataset')} {data.get('splits')}; command: `{args.command}`", "",
             "| model | entity F1 | size MB | latency ms (32x128, %d threads) | speedup | params |" % args.threads,
             "|---|---|---|---|---|---|"]
    for name, r in {"base (teacher)": base, **rows}.items():
        lines.append(f"| {name} | {100 * r['metric']:.1f} | {r['size_mb']:.1f} | {r['latency_ms']:.0f} | "
                     f"{(r['speedup'] or 1.0):.2f}x | {r['params'] / 1e6:.1f}M |")
    lines += ["", f"Floor: {FLOORS.get(args.task_name)}; met by: {', '.join(met) if met else 'none'}.", ""]
    write_text_atomic(os.path.splitext(args.output)[0] + ".md", "\n".join(lines))
    logger.info("wrote %s", args.output)
    return result


if __name__ == "__main__":
    main()
