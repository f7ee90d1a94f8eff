#!/usr/bin/env python
"""One-shot check of movement scores saved in a pruning checkpoint (issue 26): prune 10% and 30% of every scored
matrix (local) by the scores, by the scores inverted, by their absolute value, by |W| and at random, without training, and print validation
accuracy (400 Rotten Tomatoes validation rows). A score that ranks weights well must beat random here.

    python benchmarks/movement_oneshot_check.py [CHECKPOINT]

Default checkpoint: the Sanh-budget hard-movement row's epoch-1 checkpoint (scores trained one epoch, nothing
pruned yet), `benchmarks/cache/prune-movement-10pct-s43-10ep/checkpoints/checkpoint-319`.
"""
import copy
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

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


print('dense', acc(base))
for sp in (0.1, 0.3):
    for name, fn in [('movement', lambda n, w: scores[n]), ('inverted', lambda n, w: -scores[n]),
                     ('abs_score', lambda n, w: scores[n].abs()),
                     ('magnitude', lambda n, w: w.abs()), ('random', lambda n, w: torch.rand_like(w))]:
        m = copy.deepcopy(base)
        mm = dict(m.named_modules())
        with torch.no_grad():
            for n in scores:
                w = mm[n].weight
                w.mul_(topk_mask(fn(n, w.float()), sp).to(w.dtype))
        print(sp, name, acc(m), flush=True)
