#!/usr/bin/env python
"""Share weights (Deep Compression's trained quantization) and train the shared values with distillation from the
unshared model.

    accelerate launch scripts/share.py --weight_sharing_k 16 --output_dir out/share16              # offline default
    accelerate launch scripts/share.py --weight_sharing_k 16 --weight_sharing_embeddings --output_dir out/share16e
    accelerate launch scripts/share.py --student_model out/pruned/model --output_dir out/prune-share  # after pruning

Default: Rotten Tomatoes; teacher = MiniLM-L6 fine-tuned on it (done once and cached); the student is a full copy of
the teacher whose Linear layers outside the task head (and with --weight_sharing_embeddings the word embeddings)
keep k values each (k-means, linear initialisation), then the values train for 2 epochs with distillation. Pruned
zeros stay zero.

Writes <output_dir>/model (shared_model.safetensors: ceil(log2 k)-bit indices + a codebook per matrix; load with
hfcompress.share.load_shared or hfcompress.load_model), <output_dir>/model_dense (plain transformers),
<output_dir>/weight_sharing (its configuration), checkpoints and <output_dir>/share_summary.json.
"""

from __future__ import annotations

from hfcompress.cli import run_script
from hfcompress.run.scripts import command_main

main = command_main("share", description=__doc__.split("\n\n")[0])  # the same as `hfcompress share`

if __name__ == "__main__":
    run_script(main)
