#!/usr/bin/env python
"""One-shot check of movement scores saved in a pruning checkpoint (issue 26): prune 10% and 30% of every scored
matrix (local) by the scores, by the scores inverted, by their absolute value, by |W| and at random, without training, and print validation
accuracy (400 Rotten Tomatoes validation rows). A score that ranks weights well must beat random here.

It first prints what the scores are: their rank correlation with each weight's own movement since the run's start
(``sign(W0) * (W - W0)``, W0 = pretrained MiniLM-L6) and how far the lowest-scored 10% travelled toward zero, as a
fraction of their size. With Adam on both, a score step is the weight's own Adam step times sign(W) (Adam is
invariant to the per-element factor W), so the score counts Adam steps toward or away from zero whatever |W| is.

    python benchmarks/movement_oneshot_check.py [CHECKPOINT]

Default checkpoint: the Sanh-budget hard-movement row's epoch-1 checkpoint (scores trained one epoch, nothing
pruned yet), `benchmarks/cache/prune-movement-10pct-s43-10ep/checkpoints/checkpoint-319`.
"""
import copy
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hfcompress.assets import resolve_model_path
from hfcompress.data import load_rotten_tomatoes
from hfcompress.prune.masks import topk_mask
from hfcompress.report import evaluate_classifier

torch.set_num_threads(2)
torch.manual_seed(0)
ck = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/cache/prune-movement-10pct-s43-10ep/checkpoints/checkpoint-319"
st = load_file(ck + '/pruning_state.safetensors')
scores = {k[len('score.'):]: v for k, v in st.items() if k.startswith('score.')}
base = AutoModelForSequenceClassification.from_pretrained(ck).eval()
tok = AutoTokenizer.from_pretrained(ck)
val = load_rotten_tomatoes(seed=42)['validation'].select(range(400))


def acc(m):
    return evaluate_classifier(m, tok, val['text'], val['label'])['accuracy']


start = AutoModelForSequenceClassification.from_pretrained(resolve_model_path("minilm-l6"))
start_weights = {n: m.weight.detach().float() for n, m in start.named_modules() if n in scores}
cur = dict(base.named_modules())
rank = lambda x: x.flatten().argsort().argsort().float()  # noqa: E731
rhos, travelled = [], []
for n, s in scores.items():
    w0, w = start_weights[n], cur[n].weight.detach().float()
    moved = torch.sign(w0) * (w - w0)  # > 0: away from zero
    rhos.append(torch.corrcoef(torch.stack([rank(s), rank(moved)]))[0, 1].item())
    low = s.flatten().argsort()[: s.numel() // 10]
    travelled.append(((w - w0).flatten()[low].abs() / w0.flatten()[low].abs()).median().item())
print(f"rank correlation of the score with sign(W0) * (W - W0): median {sorted(rhos)[len(rhos) // 2]:.3f}, "
      f"min {min(rhos):.3f} over {len(rhos)} matrices")
print(f"lowest-scored 10%: median |W - W0| / |W0| per matrix {sorted(travelled)[len(travelled) // 2]:.3f} "
      f"(min {min(travelled):.3f}, max {max(travelled):.3f}): pruning them moves each weight ~1 / that further")


def cross_entropy(m, grad: bool = False) -> float:
    """Mean cross-entropy over the validation rows (with `grad`, dCE/dW is left in the weights' .grad)."""
    total = 0.0
    for i in range(0, len(val), 50):
        enc = tok(val['text'][i:i + 50], truncation=True, max_length=128, padding=True, return_tensors='pt')
        with torch.set_grad_enabled(grad):
            loss = torch.nn.functional.cross_entropy(m(**enc).logits, torch.tensor(val['label'][i:i + 50]),
                                                     reduction='sum') / len(val)
        if grad:
            loss.backward()
        total += loss.item()
    return total


base.zero_grad()
dense_ce = cross_entropy(base, grad=True)
grads = {n: cur[n].weight.grad.detach().float().clone() for n in scores}
base.zero_grad()
print(f"first-order check (10% pruned, validation cross-entropy, dense {dense_ce:.4f}): predicted = sum over the "
      "pruned weights of dCE/dW * (0 - W); actual = measured")
RANKINGS = {'movement': lambda n, w: scores[n], 'inverted': lambda n, w: -scores[n],
            'abs_score': lambda n, w: scores[n].abs(), 'magnitude': lambda n, w: w.abs(),
            'random': lambda n, w: torch.rand_like(w)}


def pruned_copy(rank_by, sparsity: float):
    """A copy of the model with the lowest `sparsity` of every scored matrix (ranked by `rank_by`) set to zero, and
    the first-order change of the validation cross-entropy that predicts (sum of dCE/dW * (0 - W) over them)."""
    m = copy.deepcopy(base)
    mm = dict(m.named_modules())
    predicted = 0.0
    with torch.no_grad():
        for n in scores:
            w = mm[n].weight
            keep = topk_mask(rank_by(n, w.float()), sparsity)
            predicted += float((grads[n] * -w.float())[~keep].sum())
            w.mul_(keep.to(w.dtype))
    return m, predicted


for name in ('movement', 'random'):
    m, predicted = pruned_copy(RANKINGS[name], 0.1)
    print(f"  {name}: predicted {predicted:+.4f}, actual {cross_entropy(m) - dense_ce:+.4f}", flush=True)
print('dense', acc(base))
for sp in (0.1, 0.3):
    for name, rank_by in RANKINGS.items():
        print(sp, name, acc(pruned_copy(rank_by, sp)[0]), flush=True)
