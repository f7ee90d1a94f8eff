"""Where a Trainer checkpoint of the current step lives, for callbacks that keep their own state beside it.

A method's callback (distillation projections, pruning masks) saves into the folder the Trainer just wrote
(`on_save`) and, on a resume, finds the folder the Trainer restored from (`on_train_begin`, where `global_step` is
already the checkpoint's step).
"""

from __future__ import annotations

import os

from transformers import TrainerCallback
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


# ------------------------------------------------------------------------------------------- complete checkpoints
# A run killed from outside can leave a checkpoint cut in half (the Trainer's files partly written, or a method's
# state missing). `FaithfulResumeCallback` writes a manifest last of all, once the Trainer and every method have
# written their part; `latest_complete_checkpoint` resumes from the newest checkpoint that has one.
MANIFEST_NAME = "hfcompress_checkpoint.json"
TEST_PAUSE_ENV = "HFCOMPRESS_TEST_PAUSE"  # tests only: "step:N" or "save:N" pauses the run there (to be killed)


def _checkpoint_files(folder: str) -> dict[str, int]:
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name == MANIFEST_NAME or name.endswith(".tmp"):
                continue
            path = os.path.join(root, name)
            files[os.path.relpath(path, folder).replace(os.sep, "/")] = os.path.getsize(path)
    return files


def write_manifest(folder: str, step: int) -> str:
    """Mark `folder` complete: its files and their sizes, written atomically as the last file of the checkpoint."""
    from .files import write_json_atomic

    return write_json_atomic(os.path.join(folder, MANIFEST_NAME),
                             {"step": int(step), "complete": True, "files": _checkpoint_files(folder)})


def checkpoint_is_complete(folder: str) -> tuple[bool, str]:
    """(complete?, why not): the manifest is there and every file it lists is there with its size."""
    import json

    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return False, f"no {MANIFEST_NAME} (the run stopped while writing it)"
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        return False, f"unreadable {MANIFEST_NAME} ({exc})"
    for rel, size in (manifest.get("files") or {}).items():
        file = os.path.join(folder, *rel.split("/"))
        if not os.path.isfile(file):
            return False, f"{rel} is missing"
        if os.path.getsize(file) != size:
            return False, f"{rel} has {os.path.getsize(file)} bytes, {size} were written"
    return True, ""


def _step_of(name: str) -> int | None:
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    if name.startswith(prefix) and name[len(prefix):].isdigit():
        return int(name[len(prefix):])
    return None


def has_manifests(output_dir: str) -> bool:
    """Whether any checkpoint in `output_dir` carries a manifest (the run marks its checkpoints complete)."""
    return os.path.isdir(output_dir) and any(os.path.isfile(os.path.join(output_dir, n, MANIFEST_NAME))
                                             for n in os.listdir(output_dir))


def latest_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` of `output_dir` that is complete; an incomplete newer one is skipped with one log
    line naming it (and left where it is: nothing is deleted). Checkpoints written without manifests (a plain
    Trainer, an older hfcompress) count as complete when the Trainer's `trainer_state.json`, its last file, is there."""
    import logging

    if not os.path.isdir(output_dir):
        return None
    found = sorted(((s, n) for n in os.listdir(output_dir) if (s := _step_of(n)) is not None
                    and os.path.isdir(os.path.join(output_dir, n))), reverse=True)
    with_manifests = has_manifests(output_dir)
    log = logging.getLogger(__name__)
    for _, name in found:
        folder = os.path.join(output_dir, name)
        if with_manifests:
            complete, why = checkpoint_is_complete(folder)
        else:
            complete = os.path.isfile(os.path.join(folder, "trainer_state.json"))
            why = "no trainer_state.json"
        if complete:
            return folder
        log.warning("Checkpoint %s is incomplete (%s): skipped, left in place; resuming from an earlier one",
                    folder, why)
    return None


def remove_checkpoints(output_dir: str) -> None:
    """Delete every `checkpoint-N` folder of `output_dir` (complete or not); other files are left."""
    import shutil

    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if _step_of(name) is not None:
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def _test_pause(kind: str, step: int, output_dir: str) -> None:
    """Tests only: with HFCOMPRESS_TEST_PAUSE=kind:step, write `<output_dir>/.paused-<kind>-<step>` and wait (the
    test kills the process there, as a scheduler would)."""
    wanted = os.environ.get(TEST_PAUSE_ENV, "")
    if wanted != f"{kind}:{step}":
        return
    import time

    with open(os.path.join(output_dir, f".paused-{kind}-{step}"), "w") as fh:
        fh.write(str(os.getpid()))
    while True:
        time.sleep(1)


def random_state() -> dict:
    """Every random generator a training step draws from: torch (CPU and CUDA), Python's `random`, NumPy's."""
    import random

    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class FaithfulResumeCallback(TrainerCallback):
    """What a run needs so that, killed from outside and resumed with `latest`, it ends as it would have without the
    kill. Add it last (`with_faithful_resume`); it works in a plain `Trainer` too.

    * A checkpoint is complete only once this callback writes its manifest (`hfcompress_checkpoint.json`), after the
      Trainer and every method's `on_save` wrote their part; `latest_complete_checkpoint` skips one cut in half.
    * Evaluation leaves the random generators as it found them. The Trainer saves the generators' state in a
      checkpoint and evaluates after saving at the end of an epoch; the evaluation draws from torch's generator
      (the evaluation DataLoader's seed), so a run resumed from that checkpoint (which does not evaluate again)
      drew other dropout masks from then on than the uninterrupted run did. Here the state is taken at a step or
      epoch end that an evaluation follows, and put back once the evaluation is done.
    """

    def __init__(self):
        self._before_evaluation: dict | None = None

    def _before(self, control) -> None:
        # Last callback: the flow callback and every method have decided whether an evaluation follows.
        if control.should_evaluate:
            self._before_evaluation = random_state()

    def on_step_end(self, args, state, control, **kwargs):
        self._before(control)
        _test_pause("step", state.global_step, args.output_dir)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._before(control)

    def on_evaluate(self, args, state, control, **kwargs):
        if self._before_evaluation is not None:
            set_random_state(self._before_evaluation)
            self._before_evaluation = None

    def on_save(self, args, state, control, **kwargs):
        _test_pause("save", state.global_step, args.output_dir)
        folder = step_checkpoint_dir(args, state)
        if state.is_world_process_zero and os.path.isdir(folder):
            write_manifest(folder, state.global_step)


def with_faithful_resume(callbacks) -> list:
    """`callbacks` with a `FaithfulResumeCallback` last."""
    return [*(c for c in callbacks if not isinstance(c, FaithfulResumeCallback)), FaithfulResumeCallback()]
