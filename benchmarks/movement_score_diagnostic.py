#!/usr/bin/env python
"""How good are movement scores after a short run, by the rule that makes them?

Takes the dense MiniLM-L6 fine-tuned on Rotten Tomatoes (benchmarks/cache/student6_finetune-s42, made by
scripts/benchmark_distill.py), trains it N more steps (batch 32, AdamW 5e-5, bf16 autocast) while two movement scores
are made from the same straight-through gradients dL/dW' * W: (a) the reference's (`Pruner`, method movement: AdamW
steps at 1e-2, the rule of hfcompress since issue 26), (b) the raw sum S -= dL/dW' * W (the rule before it). Then
prunes every encoder Linear matrix to sparsity s by (a), (b), |W| and a random score, without any further training,
and measures accuracy on 300 validation rows; also the rank correlation of each score with |W|. Writes
benchmarks/results/movement_score_diagnostic.json.

    python benchmarks/movement_score_diagnostic.py [--steps 64] [--model DIR] [--fp32]
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


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two same-shape tensors (ties broken by position)."""
    ra = a.reshape(-1).argsort().argsort().float()
    rb = b.reshape(-1).argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="benchmarks/cache/student6_finetune-s42")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--output", default="benchmarks/results/movement_score_diagnostic.json")
    ap.add_argument("--fp32", action="store_true", help="Train in fp32 (no bf16 autocast), for CPUs without bf16.")
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
    raw = {n: torch.zeros_like(s) for n, s in pruner.scores.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    train = ds["train"].shuffle(seed=0)
    model.train()
    for i in range(a.steps):
        b = train[i * 32:(i + 1) * 32]
        enc = tok(b["text"], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not a.fp32):
            loss = model(**enc, labels=torch.tensor(b["label"])).loss
        loss.backward()
        grads = pruner.step_gradients()  # dL/dW' * W of this step (no clipping, constant learning rate here)
        for n, g in grads.items():
            raw[n].sub_(g)
        pruner.adam.step(pruner.scores, grads, pruner.config.score_learning_rate)
        opt.step()
        opt.zero_grad()
    result = {"model": a.model, "steps": a.steps, "precision": "fp32" if a.fp32 else "bf16 autocast",
              "dense_validation300_accuracy": acc(model), "pruned": {}}
    weights = {n: m.weight.detach().clone() for n, m in pruner.targets.items()}
    g = torch.Generator().manual_seed(0)
    for s in (0.1, 0.23, 0.5):
        for kind in ("movement_adam", "movement_raw_sum", "magnitude", "random"):
            for n in pruner.targets:
                w = weights[n]
                score = {"movement_adam": pruner.scores[n], "movement_raw_sum": raw[n], "magnitude": w.abs(),
                         "random": torch.rand(w.shape, generator=g)}[kind]
                pruner.states[n].mask = topk_mask(score, s)
            result["pruned"][f"{kind}@{s}"] = acc(model)
            logger.info("sparsity %.2f by %s: %.4f", s, kind, result["pruned"][f"{kind}@{s}"])
    # Which weights does each short-run movement score remove? Mean |W| of the pruned 10% vs the whole matrix, and
    # the rank correlation of |score| with |W| (raw sums scale with |W| * |g|; Adam divides |g| out).
    for kind, table in (("adam", pruner.scores), ("raw_sum", raw)):
        ratios, corr = [], []
        for n in pruner.targets:
            m = topk_mask(table[n], 0.1)
            ratios.append((weights[n].abs()[~m].mean() / weights[n].abs().mean()).item())
            corr.append(rank_correlation(table[n].abs(), weights[n].abs()))
        result[f"mean_abs_weight_of_movement_{kind}_pruned_10pct_vs_all"] = sum(ratios) / len(ratios)
        result[f"rank_correlation_abs_score_abs_weight_{kind}"] = sum(corr) / len(corr)
    write_json(a.output, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
