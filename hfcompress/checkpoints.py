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


# `Trainer.save_model` also pickles the whole `TrainingArguments` (`training_args.bin`): a pickle has no place in a
# folder a user publishes (the Hub flags pickles, and this project writes safetensors only).
TRAINING_ARGS_PICKLE = "training_args.bin"


def save_trainer_model(trainer, path: str) -> str:
    """`trainer.save_model(path)` without the pickled training arguments: weights (safetensors) and config only.
    Returns `path`."""
    trainer.save_model(path)
    pickle = os.path.join(path, TRAINING_ARGS_PICKLE)
    if trainer.is_world_process_zero() and os.path.exists(pickle):
        os.remove(pickle)
    return path
