#!/usr/bin/env python
"""Why movement pruning collapses in the 2-epoch CPU budget: how good are movement scores after a short warm-up?

Takes the dense MiniLM-L6 fine-tuned on Rotten Tomatoes (benchmarks/cache/student6_finetune-s42, made by
scripts/benchmark_distill.py), trains it N more steps (batch 32, AdamW 5e-5, bf16 autocast) while a `Pruner`
accumulates hard-movement scores, then prunes every encoder Linear matrix to sparsity s by (a) the movement score,
(b) |W|, (c) a random score, without any further training, and measures accuracy on 300 validation rows. Writes
benchmarks/results/movement_score_diagnostic.json.

    python benchmarks/movement_score_diagnostic.py [--steps 64]
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hfcompress import Pruner, PruningConfig
from hfcompress.data import load_rotten_tomatoes
from hfcompress.prune.masks import topk_mask
from hfcompress.report.bench import write_json

logger = logging.getLogger("hfcompress.benchmark")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="benchmarks/cache/student6_finetune-s42")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--output", default="benchmarks/results/movement_score_diagnostic.json")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.manual_seed(0)
    ds = load_rotten_tomatoes(seed=42)
    tok = AutoTokenizer.from_pretrained(a.model)
    val = ds["validation"].select(range(300))
    venc = tok(list(val["text"]), padding=True, truncation=True, max_length=128, return_tensors="pt")
    vy = torch.tensor(list(val["label"]))

    def acc(m):
        m.eval()
        with torch.no_grad():
            return (m(**venc).logits.argmax(-1) == vy).float().mean().item()

    model = AutoModelForSequenceClassification.from_pretrained(a.model)
    pruner = Pruner(model, PruningConfig(method="movement"))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    train = ds["train"].shuffle(seed=0)
    model.train()
    for i in range(a.steps):
        b = train[i * 32:(i + 1) * 32]
        enc = tok(b["text"], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**enc, labels=torch.tensor(b["label"])).loss
        loss.backward()
        pruner.before_optimizer_step()
        opt.step()
        opt.zero_grad()
    result = {"model": a.model, "steps": a.steps, "dense_validation300_accuracy": acc(model), "pruned": {}}
    weights = {n: m.weight.detach().clone() for n, m in pruner.targets.items()}
    g = torch.Generator().manual_seed(0)
    for s in (0.1, 0.23, 0.5):
        for kind in ("movement", "magnitude", "random"):
            for n in pruner.targets:
                w = weights[n]
                score = {"movement": pruner.scores[n], "magnitude": w.abs(),
                         "random": torch.rand(w.shape, generator=g)}[kind]
                pruner.states[n].mask = topk_mask(score, s)
            result["pruned"][f"{kind}@{s}"] = acc(model)
            logger.info("sparsity %.2f by %s: %.4f", s, kind, result["pruned"][f"{kind}@{s}"])
    # Which weights does a short-run movement score remove? Mean |W| of the pruned 10% vs the whole matrix.
    ratios = []
    for n in pruner.targets:
        m = topk_mask(pruner.scores[n], 0.1)
        ratios.append((weights[n].abs()[~m].mean() / weights[n].abs().mean()).item())
    result["mean_abs_weight_of_movement_pruned_10pct_vs_all"] = sum(ratios) / len(ratios)
    write_json(a.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
