#!/usr/bin/env python
"""Run every recipe in hfcompress/recipes/ (each one cached in its own output folder: a finished recipe is not run again, an
interrupted one resumes) and measure all of them against their base in ONE session: the base (MiniLM-L6 fine-tuned
on Rotten Tomatoes, as the recipes' base_model gives it) and every recipe's final model loaded from disk, evaluated on
the same test split, their checkpoint folders measured, their CPU latency (batch 32 x 128) interleaved in rounds.

    python scripts/benchmark_recipes.py                 # run what is not cached, then measure
    python scripts/benchmark_recipes.py --measure_only  # re-measure the cached recipe outputs

Writes benchmarks/results/recipes.json (`base`: accuracy, size_mb, latency_ms; `recipes`: name -> accuracy,
size_mb, size_ratio, latency_ms, speedup, card, and the floor check), benchmarks/results/recipes.md, and copies each
recipe's card and plots to model_cards/<recipe name>/ (README.md, compression.png, sparsity_schedule.png).

size_ratio = base size / recipe size (whole checkpoint folders, card and plots left out); speedup = base latency /
recipe latency, per round, median of the rounds. The floor (issue 14): the best recipe >= 8x smaller and >= 3x
faster within 2.0 accuracy points of the base.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field

from hfcompress.cli import parse_args, run_script, setup_logging
from hfcompress.report.bench import write_json
from hfcompress.report.measure import MeasureConfig, compare_checkpoints
from hfcompress.report.plot import SCHEDULE_PNG, TRADEOFF_PNG, tradeoff_plot
from hfcompress.run.arguments import DataArguments
from hfcompress.run.recipe import SUMMARY, load_recipe, run_recipe
from hfcompress.run.steps import load_data

logger = logging.getLogger("benchmark_recipes")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOR = {"size_ratio": 8.0, "speedup": 3.0, "accuracy_drop_points": 2.0}


@dataclass
class BenchmarkArguments:
    recipes: str = field(default="hfcompress/recipes", metadata={"help": "Folder of recipe YAML files (every *.yaml is run)."})
    cache_dir: str = field(default="benchmarks/cache/recipes", metadata={"help": "Each recipe's output folder lives here."})
    results: str = field(default="benchmarks/results/recipes.json", metadata={"help": "Where the results go."})
    cards_dir: str = field(default="model_cards", metadata={"help": "Where each recipe's card and plots are copied."})
    measure_only: bool = field(default=False, metadata={"help": "Measure the cached outputs; run nothing."})
    latency_rounds: int = field(default=5, metadata={"help": "Interleaved latency rounds over base and recipes."})
    threads: int = field(default=2, metadata={"help": "CPU threads of the latency measurement."})


def main(argv=None):
    (args,) = parse_args((BenchmarkArguments,), argv, description=__doc__.split("\n\n")[0])
    setup_logging()
    paths = sorted(os.path.join(args.recipes, f) for f in os.listdir(args.recipes) if f.endswith(".yaml"))
    outputs, summaries = {}, {}
    for path in paths:
        recipe = load_recipe(path)
        out = os.path.join(args.cache_dir, recipe.name)
        if not args.measure_only:
            run_recipe(path, out)
        with open(os.path.join(out, SUMMARY)) as fh:
            summaries[recipe.name] = json.load(fh)
        outputs[recipe.name] = os.path.join(out, "model")
    bases = {s["artifacts"]["base"] for s in summaries.values()}
    datasets = {json.dumps(s["settings"]["recipe"]["data"], sort_keys=True) for s in summaries.values()}
    if len(bases) != 1 or len(datasets) != 1:
        raise SystemExit(f"the recipes do not share one base and one dataset ({bases}, {datasets}): not comparable")
    base_dir = bases.pop()
    data_args = DataArguments(**json.loads(datasets.pop()))
    test = load_data(data_args)["test"]

    names = list(outputs)
    first, others = names[0], {n: outputs[n] for n in names[1:]}
    c = compare_checkpoints(base_dir, outputs[first], test[data_args.text_column], test[data_args.label_column],
                            max_length=data_args.max_length, variants=others,
                            config=MeasureConfig(threads=args.threads, rounds=args.latency_rounds))
    measured = {first: {**c["model"], "size_ratio": c["size_ratio"], "speedup": c["speedup"]}, **c["variants"]}
    base = c["base"]
    result = {
        "base": {"model": summaries[first]["settings"]["recipe"]["base_model"], "path": base_dir,
                 "accuracy": base["metrics"]["accuracy"], "size_mb": base["size_mb"], "latency_ms": base["latency_ms"],
                 "parameters": base["parameters"], "peak_memory_mb": base.get("peak_memory_mb")},
        "recipes": {},
        "protocol": {**c["protocol"], "split": c["split"], "rows": c["rows"],
                     "note": "base and every recipe's final model loaded from disk and measured in this one session"},
        "environment": summaries[first].get("environment"),
    }
    os.makedirs(args.cards_dir, exist_ok=True)
    for name in names:
        m = measured[name]
        card_dir = os.path.join(args.cards_dir, name)
        os.makedirs(card_dir, exist_ok=True)
        for f in ("README.md", TRADEOFF_PNG, SCHEDULE_PNG):
            if os.path.exists(os.path.join(outputs[name], f)):
                shutil.copy2(os.path.join(outputs[name], f), os.path.join(card_dir, f))
        delta = 100 * (m["metrics"]["accuracy"] - base["metrics"]["accuracy"])
        result["recipes"][name] = {
            "accuracy": m["metrics"]["accuracy"], "accuracy_delta_points": delta, "size_mb": m["size_mb"],
            "size_ratio": m["size_ratio"], "latency_ms": m["latency_ms"], "speedup": m["speedup"],
            "speedup_rounds": m["latency"]["speedup_rounds"], "parameters": m["parameters"],
            "card": os.path.join(card_dir, "README.md"), "recipe": os.path.join(args.recipes, f"{name}.yaml"),
            "stages": [{k: s[k] for k in ("name", "method", "measured")} for s in summaries[name]["stages"]],
            "floor_met": m["size_ratio"] >= FLOOR["size_ratio"] and m["speedup"] >= FLOOR["speedup"]
            and delta >= -FLOOR["accuracy_drop_points"],
        }
    best = max(result["recipes"], key=lambda n: (result["recipes"][n]["floor_met"], result["recipes"][n]["size_ratio"]
                                                  * result["recipes"][n]["speedup"]))
    result["floor"] = {**FLOOR, "rule": "best recipe: >= 8x smaller and >= 3x faster within 2.0 accuracy points",
                       "best": best, "met": result["recipes"][best]["floor_met"]}
    tradeoff_plot([{"name": "base", "accuracy": base["metrics"]["accuracy"], "size_mb": base["size_mb"],
                    "latency_ms": base["latency_ms"], "base": True}]
                  + [{"name": n, "accuracy": measured[n]["metrics"]["accuracy"], "size_mb": measured[n]["size_mb"],
                      "latency_ms": measured[n]["latency_ms"]} for n in names],
                  os.path.join(os.path.dirname(args.results), "recipes.png"), title="recipes against their base")
    write_json(args.results, result)
    write_markdown(result, args.results.replace(".json", ".md"))
    logger.info("Wrote %s; best %s (floor met: %s)", args.results, best, result["floor"]["met"])
    return result


def write_markdown(r: dict, path: str) -> None:
    b, p = r["base"], r["protocol"]
    lines = [
        "# Recipes against their base, measured in one session",
        "",
        f"Base: {b['model']} fine-tuned on the data ({b['path']}). {p['split']} split, {p['rows']} rows; CPU latency "
        f"batch {p['batch_size']} x {p['seq_len']}, {p['threads']} threads, median of {p['runs']} after {p['warmup']} "
        f"warm-ups, {p['rounds']} interleaved rounds; speedup = median of per-round ratios; size = whole checkpoint "
        "folder (card and plots left out).",
        "",
        "| model | accuracy | delta (points) | MB | size ratio | ms | speedup | floor |",
        "|---|---|---|---|---|---|---|---|",
        f"| base | {b['accuracy']:.4f} | | {b['size_mb']:.1f} | 1.00x | {b['latency_ms']:.0f} | 1.00x | |",
    ]
    for name, v in r["recipes"].items():
        lines.append(f"| [{name}]({os.path.relpath(v['card'], os.path.dirname(path))}) | {v['accuracy']:.4f} | "
                     f"{v['accuracy_delta_points']:+.2f} | {v['size_mb']:.1f} | {v['size_ratio']:.2f}x | "
                     f"{v['latency_ms']:.0f} | {v['speedup']:.2f}x | {'met' if v['floor_met'] else 'missed'} |")
    lines += ["", f"Floor ({r['floor']['rule']}): best = {r['floor']['best']}, met = {r['floor']['met']}.", "",
              "![recipes](recipes.png)", ""]
    for name, v in r["recipes"].items():
        lines.append(f"- {name} stages: " + "; ".join(
            f"{s['name']} ({s['method']}): acc {s['measured']['accuracy']:.4f}, {s['measured']['size_mb']:.1f} MB, "
            f"{s['measured']['speedup']:.2f}x" for s in v["stages"]))
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    run_script(main)
