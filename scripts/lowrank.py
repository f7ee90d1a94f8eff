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

from dataclasses import dataclass, field

from hfcompress.cli import parse_args, run_script, setup_logging
from hfcompress.run import DataArguments, ModelArguments
from hfcompress.run.arguments import ScriptTrainingDefaults
from hfcompress.run.lowrank import LowRankArguments, run_lowrank


@dataclass
class LowRankModelArguments(ModelArguments):
    student_num_layers: int = field(
        default=0,
        metadata={"help": "Depth of the model to factorize when it is built from the teacher: 0 = all blocks (a full "
                  "copy of the teacher, the default); k = k evenly spaced blocks."},
    )


@dataclass
class LowRankScriptArguments(ScriptTrainingDefaults, LowRankArguments):
    """Low-rank and distillation options, training defaults sized for the offline default on a 2-core CPU."""

    _method_group_name = "Low rank and distillation"

    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs of training the factors."})


def main(argv=None):
    model_args, data_args, args = parse_args(
        (LowRankModelArguments, DataArguments, LowRankScriptArguments), argv, description=__doc__.split("\n\n")[0]
    )
    setup_logging(args)
    return run_lowrank(model_args, data_args, args)


if __name__ == "__main__":
    run_script(main)
