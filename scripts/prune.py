#!/usr/bin/env python
"""Prune a sequence classifier while it learns from a teacher: single weights (magnitude / movement), or whole
attention heads, FFN neurons and blocks cut out of the model (--granularity structured).

    accelerate launch scripts/prune.py --output_dir out                      # offline default: magnitude, 10% kept
    accelerate launch scripts/prune.py --method magnitude --target_sparsity 0.8 --output_dir out-mag
    accelerate launch scripts/prune.py --dataset my_data/ --teacher_model my-finetuned-model/ --output_dir out
    python scripts/prune.py --config recipe.yaml                              # flags and YAML/JSON config files
    accelerate launch scripts/prune.py --granularity structured --target_sparsity 0.5 --output_dir out-heads
    accelerate launch scripts/prune.py --granularity structured --target_speedup 2 --output_dir out-fast

Default: Rotten Tomatoes; the model pruned is a full copy of the teacher (MiniLM-L6 fine-tuned on it, done once and
cached); gradual magnitude pruning of the encoder's q/k/v, attention-output and feed-forward weights to 90%
sparsity (warm-up 10% of the steps, cubic ramp to 70%, then held) with logit distillation from the teacher's cached
outputs. `--method movement` / `soft_movement` (Sanh et al. 2020; scores trained by AdamW as in their code) need
longer runs than this default (the paper: ~10 epochs); the 2-epoch benchmark rows in benchmarks/results/prune.json
predate the Adam rule and collapsed. Teacher, cache and distillation options are those of scripts/distill.py.

Writes <output_dir>/model (compact sparse checkpoint: load with hfcompress.load_sparse), <output_dir>/model_dense
(plain transformers checkpoint with explicit zeros), checkpoints with the pruning state (resume with
--resume_from_checkpoint latest), <output_dir>/pruning (its configuration) and <output_dir>/prune_summary.json.
Unstructured sparsity makes the checkpoint smaller, not the CPU forward faster (see the README).
Structured: <output_dir>/model is the pruned model itself, smaller and faster (half the heads and neurons of MiniLM-L6
run about 2x faster on a CPU): load it with hfcompress.load_structured, or without hfcompress with
from_pretrained(..., trust_remote_code=True) (its modeling code is saved beside the weights).
"""

from __future__ import annotations

from hfcompress.cli import run_script
from hfcompress.run.scripts import PruneModelArguments, PruneScriptArguments, command_main, script  # noqa: F401  (for readers)

SCRIPT = script("prune")
main = command_main("prune", description=__doc__.split("\n\n")[0])  # the same as `hfcompress prune`

if __name__ == "__main__":
    run_script(main)
