#!/bin/bash
# The reference cards of the two shipped recipes (model_cards/minilm-l6-prune-int8/, minilm-l6-distil3-prune-lora-int8/)
# on a short budget: each recipe of hfcompress/recipes/ copied with the base set to TEACHER_DIR, 2,000 training rows,
# one epoch per training stage and fp32 (bf16 lines dropped: a CPU without AVX512-BF16 emulates it ~80x slower), then
# run end to end by `hfcompress compress` and pushed as a dry run (the upload's card names the Hub id).
#
#   bash benchmarks/card_recipes.sh OUT_DIR TEACHER_DIR
#
# TEACHER_DIR: MiniLM-L6 fine-tuned on Rotten Tomatoes (the cards of 2026-12-06 used card_chain.sh's 0.5-epoch teacher,
# test accuracy 0.8024). The full-budget results are benchmarks/results/recipes.json (scripts/benchmark_recipes.py).
set -euo pipefail
OUT=${1:?output folder}
TEACHER=${2:?fine-tuned teacher folder}
PY=${PYTHON:-python}
mkdir -p "$OUT/recipes"
for name in minilm-l6-prune-int8 minilm-l6-distil3-prune-lora-int8; do
  "$PY" - "$name" "$TEACHER" "$OUT/recipes/$name.yaml" <<'PYEOF'
import sys

import yaml

from hfcompress.run.recipe import resolve_recipe

name, teacher, dest = sys.argv[1:]
recipe = yaml.safe_load(open(resolve_recipe(name)))
recipe["base_model"] = teacher
recipe["data"]["max_train_samples"] = 2000
for stage in recipe["stages"]:
    stage.get("args", {}).pop("bf16", None)
    if "num_train_epochs" in stage.get("args", {}):
        stage["args"]["num_train_epochs"] = 1
recipe.setdefault("measure", {})["base_model_id"] = "sentence-transformers/all-MiniLM-L6-v2"
recipe["hub"] = {"push_dry_run": True, "hub_model_id": f"hfcompress/{name}"}
with open(dest, "w") as fh:
    fh.write(f"# Short-budget copy of hfcompress/recipes/{name}.yaml for the reference card (fp32: this CPU has no bf16;\n"
             "# base: MiniLM-L6 fine-tuned 0.5 epoch; 2,000 training rows; 1 epoch per training stage).\n")
    yaml.safe_dump(recipe, fh, sort_keys=False)
PYEOF
  "$PY" -m hfcompress compress --recipe "$OUT/recipes/$name.yaml" --output_dir "$OUT/out/$name"
done
