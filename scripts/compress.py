#!/usr/bin/env python
"""Run a compression recipe: several methods composed in one command (distil, prune, LoRA, low rank, quantize),
then measure the result against the base, write its model card and plot, and push it if asked.

    python scripts/compress.py --recipe recipes/minilm-l6-prune-int8.yaml              # out/<recipe name>
    accelerate launch scripts/compress.py --recipe recipes/minilm-l6-distil3-int8.yaml --output_dir out/d3
    python scripts/compress.py --recipe my.yaml --push_to_hub --hub_model_id me/my-small-model
    python scripts/compress.py --recipe my.yaml --push_dry_run                          # the exact upload, locally

A recipe (YAML; see recipes/ and hfcompress/run/recipe.py) names a base model, the data and a list of stages, each
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

from hfcompress.cli import parse_args, run_script, setup_logging
from hfcompress.hub import HubArguments, PushArguments
from hfcompress.run.recipe import RecipeArguments, run_recipe


def main(argv=None):
    args, hub, push = parse_args((RecipeArguments, HubArguments, PushArguments), argv, description=__doc__.split("\n\n")[0])
    setup_logging()
    if not args.recipe:
        from hfcompress.errors import UserInputError

        raise UserInputError("--recipe is required: a YAML file such as recipes/minilm-l6-prune-int8.yaml")
    overrides = {k: getattr(hub, k) for k in ("push_to_hub", "hub_model_id", "hub_private_repo", "hub_token",
                                              "hub_revision")}
    overrides["push_dry_run"] = push.push_dry_run
    return run_recipe(args.recipe, args.output_dir, overrides)


if __name__ == "__main__":
    run_script(main)
