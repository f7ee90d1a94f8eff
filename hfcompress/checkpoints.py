"""Where a Trainer checkpoint of the current step lives, for callbacks that keep their own state beside it.

A method's callback (distillation projections, pruning masks) saves into the folder the Trainer just wrote
(`on_save`) and, on a resume, finds the folder the Trainer restored from (`on_train_begin`, where `global_step` is
already the checkpoint's step).
"""

from __future__ import annotations

import os

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


def step_checkpoint_dir(args, state) -> str:
    """`<output_dir>/checkpoint-<global_step>`: the folder the Trainer writes at this step."""
    return os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


def resume_checkpoint_dirs(args, state) -> list[str]:
    """Folders a resumed run may have restored from, most specific first: `--resume_from_checkpoint PATH` when it
    names one, then the checkpoint of the restored step in `output_dir`."""
    explicit = args.resume_from_checkpoint if isinstance(args.resume_from_checkpoint, str) else None
    return [c for c in (explicit, step_checkpoint_dir(args, state)) if c]
