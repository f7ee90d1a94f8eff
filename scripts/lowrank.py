#!/usr/bin/env python
"""Factorize a classifier's projections by truncated SVD and train the factors back with distillation from the
unfactorized model.

    accelerate launch scripts/lowrank.py --parameter_budget 0.5 --output_dir out/svd       # offline default
    accelerate launch scripts/lowrank.py --energy 0.9 --output_dir out/svd-e90
    accelerate launch scripts/lowrank.py --rank 64 --target_modules intermediate.dense,output.dense --output_dir out/svd
    python scripts/quantize.py --model out/svd/model --output_dir out/svd-int8              # then int8 for the CPU

Default: Rotten Tomatoes; teacher = MiniLM-L6 fine-tuned on it (done once and cached); the student is a full copy
of the teacher whose q/k/v, attention-output and feed-forward projections become pairs of thinner layers from
their truncated SVD (exactly one of --rank, --energy, --parameter_budget), then trains for 2 epochs with logit
distillation from the teacher's cached outputs. Without training (scripts/quantize.py --lowrank_*) accuracy falls
far (benchmarks/results/quantize.json).

Writes <output_dir>/model (safetensors + modeling_hfcompress_lowrank.py: load with hfcompress.lowrank.load_lowrank, or
without hfcompress with from_pretrained(..., trust_remote_code=True)), <output_dir>/lowrank (its configuration),
checkpoints and <output_dir>/lowrank_summary.json.
"""

from __future__ import annotations

from hfcompress.cli import run_script
from hfcompress.run.scripts import LowRankModelArguments, LowRankScriptArguments, command_main, script  # noqa: F401  (for readers)

SCRIPT = script("lowrank")
main = command_main("lowrank", description=__doc__.split("\n\n")[0])  # the same as `hfcompress lowrank`

if __name__ == "__main__":
    run_script(main)
