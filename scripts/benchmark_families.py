#!/usr/bin/env python
"""Speed of structured pruning and ONNX int8 on ModernBERT-base and DeBERTa-v3-base shapes: adds `families` to
benchmarks/results/families.json (and writes benchmarks/results/families.md).

    python scripts/benchmark_families.py                      # both families, about 8 minutes on 2 cores
    python scripts/benchmark_families.py --families modernbert-base --rounds 2

No pretrained weights of either family install offline, and speed does not depend on the weights' values: each model
is built from its published configuration (written below, as in ``answerdotai/ModernBERT-base`` and
``microsoft/deberta-v3-base`` config.json) with random weights, as a 2-label sequence classifier. **Accuracy is not
measured.** Rows per family:
  dense       the model as built, saved with save_pretrained;
  pruned      half the attention heads of every block and half its FFN neurons removed (local scope, magnitude
              scores of the random weights: which ones go does not change the speed), cut out with
              StructuredPruner.fold and saved with save_structured (reloaded with load_structured; the
              trust_remote_code load is checked to give the same logits);
  pruned+onnx-int8  that model exported to ONNX (opset 17) and quantized with ONNX Runtime dynamic int8.
Latency: every checkpoint reloaded from disk (hfcompress.loading.load_model), one forward of a batch of 32 x 128
random token ids, 2 threads (torch and ONNX Runtime), under torch.inference_mode, `warmup` untimed passes per model, then `rounds` rounds of one
timed forward of each model in turn (interleaved pass by pass: on a shared box the load moves within seconds);
speedup = median over rounds of the round's dense / row ratio (and, beside it, fastest dense / fastest row).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hfcompress.cli import parse_args, setup_logging  # noqa: E402
from hfcompress.loading import load_model  # noqa: E402
from hfcompress.prune import PruningConfig, StructuredPruner, load_structured, save_structured  # noqa: E402
from hfcompress.quantize import export_onnx, quantize_onnx  # noqa: E402
from hfcompress.quantize.onnx import onnx_size_mb  # noqa: E402
from hfcompress.report import count_parameters  # noqa: E402
from hfcompress.report.bench import write_json  # noqa: E402
from hfcompress.report.measure import folder_size_mb, interleaved_latency, measure_latency  # noqa: E402
from hfcompress.report.record import environment  # noqa: E402

logger = logging.getLogger("hfcompress.benchmark")

# The published configurations (config.json of the Hub repositories), minus bookkeeping keys.
CONFIGS = {
    "modernbert-base": {  # answerdotai/ModernBERT-base
        "model_type": "modernbert", "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 50281,
        "classifier_activation": "gelu", "classifier_bias": False, "classifier_dropout": 0.0,
        "classifier_pooling": "mean", "cls_token_id": 50281, "decoder_bias": True, "deterministic_flash_attn": False,
        "embedding_dropout": 0.0, "eos_token_id": 50282, "global_attn_every_n_layers": 3,
        "global_rope_theta": 160000.0, "hidden_activation": "gelu", "hidden_size": 768,
        "initializer_cutoff_factor": 2.0, "initializer_range": 0.02, "intermediate_size": 1152,
        "local_attention": 128, "local_rope_theta": 10000.0, "max_position_embeddings": 8192, "mlp_bias": False,
        "mlp_dropout": 0.0, "norm_bias": False, "norm_eps": 1e-05, "num_attention_heads": 12,
        "num_hidden_layers": 22, "pad_token_id": 50283, "sep_token_id": 50282, "tie_word_embeddings": True,
        "vocab_size": 50368,
    },
    "deberta-v3-base": {  # microsoft/deberta-v3-base
        "model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 512, "relative_attention": True, "position_buckets": 256,
        "norm_rel_ebd": "layer_norm", "share_att_key": True, "pos_att_type": "p2c|c2p", "layer_norm_eps": 1e-7,
        "max_relative_positions": -1, "position_biased_input": False, "num_attention_heads": 12,
        "num_hidden_layers": 12, "type_vocab_size": 0, "vocab_size": 128100,
    },
}


@dataclass
class FamiliesBenchmarkArguments:
    families: str = field(default="modernbert-base,deberta-v3-base", metadata={"help": "Comma list of: " + ", ".join(CONFIGS)})
    fraction: float = field(default=0.5, metadata={"help": "Fraction of heads and of FFN neurons removed in every block."})
    work_dir: str = field(default="/tmp/hfcompress-families", metadata={"help": "Where the checkpoints are written (removed at the end)."})
    output: str = field(default="benchmarks/results/families.json", metadata={"help": "Result JSON (the `families` key is replaced)."})
    markdown: str = field(default="benchmarks/results/families.md", metadata={"help": "Markdown table."})
    threads: int = field(default=2, metadata={"help": "torch and ONNX Runtime threads."})
    rounds: int = field(default=9, metadata={"help": "Interleaved latency rounds (one timed forward of each model per round)."})
    runs: int = field(default=1, metadata={"help": "Timed forwards per model and round (median)."})
    warmup: int = field(default=1, metadata={"help": "Untimed forwards per model before the rounds."})
    floor: float = field(default=1.8, metadata={"help": "Speedup the pruned model must reach over dense (reported)."})


def build(name: str):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = dict(CONFIGS[name])
    config = AutoConfig.for_model(cfg.pop("model_type"), num_labels=2, **cfg)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config).eval()


def run_family(name: str, args: FamiliesBenchmarkArguments) -> dict:
    from transformers import AutoModelForSequenceClassification

    root = os.path.join(args.work_dir, name)
    shutil.rmtree(root, ignore_errors=True)
    model = build(name)
    dense_params = count_parameters(model)
    model.save_pretrained(os.path.join(root, "dense"))
    pruner = StructuredPruner(model, PruningConfig(granularity="structured", method="magnitude", scope="local",
                                                   target_sparsity=args.fraction))
    pruner.update_masks(1.0)
    summary = pruner.fold()
    save_structured(model, os.path.join(root, "pruned"))
    ours = load_structured(os.path.join(root, "pruned"))
    remote = AutoModelForSequenceClassification.from_pretrained(os.path.join(root, "pruned"),
                                                                trust_remote_code=True).eval()
    ids = torch.randint(5, 1000, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        reload_equal = bool(torch.equal(ours(input_ids=ids).logits, ref)
                            and torch.equal(remote(input_ids=ids).logits, ref))
    del ours, remote
    fp32 = export_onnx(model, os.path.join(root, "onnx-fp32"))
    int8 = quantize_onnx(fp32, os.path.join(root, "onnx-int8"))
    del model
    paths = {"dense": os.path.join(root, "dense"), "pruned": os.path.join(root, "pruned"), "pruned+onnx-int8": int8}
    logger.info("%s: measuring %s", name, ", ".join(paths))
    models = {row: load_model(path, num_threads=args.threads) for row, path in paths.items()}
    load_before = os.getloadavg()[0]
    with torch.inference_mode():  # no autograd graph, as in serving
        for m in models.values():  # untimed passes first, then single passes interleaved round by round
            measure_latency(m, runs=1, warmup=args.warmup)
        lat = interleaved_latency(models, args.rounds, runs=args.runs, warmup=0)
    del models
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # 1-minute load average (other users of the box)
    sizes = {"dense": folder_size_mb(paths["dense"]), "pruned": folder_size_mb(paths["pruned"]),
             "pruned+onnx-int8": onnx_size_mb(int8)}
    params = {"dense": dense_params, "pruned": summary["parameters_after"], "pruned+onnx-int8": summary["parameters_after"]}
    rows = []
    for row, l in lat.items():
        rows.append({"model": name, "row": row, "parameters": params[row], "size_mb": round(sizes[row], 1),
                     "latency_ms": round(l["median_ms"], 1), "rounds_ms": [round(x, 1) for x in l["rounds_ms"]],
                     "speedup": round(l["speedup"], 3), "speedup_rounds": [round(x, 3) for x in l["speedup_rounds"]],
                     "speedup_of_fastest": round(min(lat["dense"]["rounds_ms"]) / min(l["rounds_ms"]), 3),
                     "batch": [l["batch_size"], l["seq_len"]], "threads": args.threads})
    shutil.rmtree(root, ignore_errors=True)
    return {"model": name, "config": CONFIGS[name], "fraction": args.fraction,
            "heads_per_layer": summary["heads_per_layer"], "ffn_per_layer": summary["ffn_per_layer"],
            "reload_identical": reload_equal, "rows": rows, "load_average_before_after": load,
            "floor": {"speedup": args.floor, "met": rows[1]["speedup"] >= args.floor}}


def markdown(families: list[dict]) -> str:
    protocols = list(dict.fromkeys(f"{f['measured']['environment_line']}. {f['measured']['protocol']}"
                                   for f in families if "measured" in f))
    lines = [
        "# ModernBERT and DeBERTa-v3: structured pruning and ONNX int8 speed (random weights)",
        "",
        "`python scripts/benchmark_families.py`. Models built from the published configurations of "
        "`answerdotai/ModernBERT-base` and `microsoft/deberta-v3-base` with **random weights** (none install offline; "
        "speed does not depend on the values), 2-label sequence classifiers. **Accuracy is not measured.** "
        + " ".join(protocols),
        "",
        "| model | row | params | MB | ms (median of rounds) | per round ms | speedup vs dense: median of rounds' ratios "
        "(rounds) | fastest / fastest |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fam in families:
        for r in fam["rows"]:
            lines.append(f"| {r['model']} | {r['row']} | {r['parameters'] / 1e6:.1f}M | {r['size_mb']:.1f} | "
                         f"{r['latency_ms']:.0f} | {', '.join(f'{x:.0f}' for x in r['rounds_ms'])} | "
                         f"**{r['speedup']:.2f}x** ({', '.join(f'{x:.2f}' for x in r['speedup_rounds'])}) | "
                         f"{r['speedup_of_fastest']:.2f}x |")
    lines += ["", "Floor (half the heads and neurons removed >= "
              f"{families[0]['floor']['speedup']}x faster than dense): " + "; ".join(
                  f"{f['model']} {'met' if f['floor']['met'] else 'NOT met'} ({f['rows'][1]['speedup']:.2f}x)"
                  for f in families) + ". Pruned checkpoints reload identically (load_structured and "
              "trust_remote_code): " + ", ".join(f"{f['model']} {f['reload_identical']}" for f in families) + ".",
              "", "Earlier runs of the same script (speedup of the pruned row; dense ms; 1-minute load average of this "
              "2-core box before/after, other agents' jobs included): " + "; ".join(
                  f"{f['model']} " + ", ".join(f"{e['speedups'].get('pruned')}x ({e['dense_ms']:.0f} ms; load "
                                               f"{e.get('load_average_before_after')})" for e in f.get("earlier_runs", []))
                  for f in families) + ". This run's load: " + "; ".join(
                  f"{f['model']} {f.get('load_average_before_after')}" for f in families) + ".",
              "", "Heads / FFN neurons kept per block: " + "; ".join(
                  f"{f['model']} {sorted(set(f['heads_per_layer']))} heads, {sorted(set(f['ffn_per_layer']))} neurons"
                  for f in families) + ".", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    (args,) = parse_args((FamiliesBenchmarkArguments,), argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {', '.join(CONFIGS)}")
    env = environment()
    meta = {
        "arguments": asdict(args),
        "environment": env,
        "environment_line": f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {args.threads} threads",
        "protocol": (f"Pruned: {args.fraction:g} of the heads and FFN neurons of every block removed (local scope). "
                     f"Latency: checkpoints reloaded from disk (hfcompress.loading.load_model), batch 32 x 128 random "
                     f"ids, {args.threads} threads (torch and ONNX Runtime), torch.inference_mode, {args.warmup} "
                     "untimed pass(es) per "
                     f"model, then {args.rounds} rounds of {args.runs} timed forward(s) of each model in turn "
                     "(interleaved pass by pass: this 2-core box is shared, and its load moves within seconds); "
                     "speedup = median over rounds of the round's dense / row ratio; also the fastest round of "
                     "dense over the fastest round of the row."),
    }
    previous = {}
    if os.path.exists(args.output):
        with open(args.output) as fh:
            previous = json.load(fh)
    # a run of some families replaces their entries and keeps the others (each entry says how it was measured)
    merged = {f["model"]: f for f in previous.get("families", [])}
    for name in families:
        entry = {**run_family(name, args), "measured": meta}
        if name in merged:  # earlier runs stay on record: on a shared box the ratio moves from run to run
            old = merged[name]
            entry["earlier_runs"] = old.pop("earlier_runs", []) + [
                {"speedups": {r["row"]: r["speedup"] for r in old["rows"]},
                 "dense_ms": old["rows"][0]["latency_ms"], "load_average_before_after": old.get("load_average_before_after"),
                 "protocol": (old.get("measured") or {}).get("protocol", "3 rounds of median-of-3 passes, no inference_mode")}]
        merged[name] = entry
        previous["families"] = [merged[n] for n in CONFIGS if n in merged]
        write_json(args.output, previous)  # after each family: a later one cut short loses nothing
    text = markdown(previous["families"])
    with open(args.markdown, "w") as fh:
        fh.write(text)
    print(text)
    return previous


if __name__ == "__main__":
    main()
