#!/usr/bin/env python
"""Run a compression recipe: several methods composed in one command (distil, prune, LoRA, low rank, quantize),
then measure the result against the base, write its model card and plot, and push it if asked.

    python scripts/compress.py --recipe minilm-l6-prune-int8                        # a shipped recipe -> out/<recipe name>
    accelerate launch scripts/compress.py --recipe my-recipe.yaml --output_dir out/d3
    python scripts/compress.py --recipe my.yaml --push_to_hub --hub_model_id me/my-small-model
    python scripts/compress.py --recipe my.yaml --push_dry_run                          # the exact upload, locally

A recipe (YAML; see hfcompress/recipes/ and hfcompress/run/recipe.py) names a base model, the data and a list of stages, each
a method with the options of the script of the same name (scripts/distill.py, prune.py, lowrank.py, quantize.py;
`lora` is distill.py with --lora_*). The whole file is checked before any work: an unknown key, an option a stage's
script does not have, methods in an order that cannot work, a library that is not installed or a missing base model
is one error naming the recipe line. A killed recipe resumes at the stage it was in when run again with the same
--output_dir.

Writes <output_dir>/stages/<NN>-<stage>/ (each stage's run folder: model, checkpoints, card, summary),
<output_dir>/model (the result, with README.md card and compression.png), <output_dir>/recipe_summary.json
(every stage's and the final measurements) and <output_dir>/recipe_state.json (progress, for resuming).
"""

from __future__ import annotations

from hfcompress.cli import run_script
from hfcompress.run.recipe import compress_main as main  # the same as `hfcompress compress`

if __name__ == "__main__":
    run_script(main)
