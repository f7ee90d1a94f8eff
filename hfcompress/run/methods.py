"""How a compression method joins a run of the shared pipeline without copying it.

A `RunMethod` brings a `TrainerCallback` (the mechanism, from the method's own folder) and the run-side duties the
pipeline asks of every method at fixed points: check the input before anything slow starts, check a checkpoint
before resuming, save what it produced, and describe itself in the run record.
"""

from __future__ import annotations

import os

from ..errors import UserInputError

QUANTIZED_FORMATS = ("onnx", "torch_int8", "bnb", "qat")  # checkpoint formats whose weights are not float


class RunMethod:
    name: str = "method"
    # The transformers auto class of the run's models (the run sets it: audio classifiers are not sequence
    # classifiers); None = the text classifiers' AutoModelForSequenceClassification.
    auto_class = None

    def callback(self):
        """The `TrainerCallback` added to the run's trainer (or None)."""
        return None

    def check(self, model_args, data_args, args, train_rows: int) -> None:
        """Raise `UserInputError` for bad settings; called before the teacher is loaded or fine-tuned."""

    def check_model(self, model) -> None:
        """Raise `UserInputError` if the built model cannot take the method; called before any training."""

    def prepare_model(self, model, run_dir: str, tokenizer=None):
        """Return the model the trainer trains (e.g. wrapped in a LoRA adapter); called after `check_model`, before
        the trainer is built, so the optimizer sees the final parameters."""
        return model

    def check_resume(self, checkpoint: str) -> None:
        """Raise `UserInputError` if `checkpoint` was written with incompatible settings."""

    def save(self, trainer, tokenizer, run_dir: str) -> dict | None:
        """Save the trained model if this method has its own format: return the artifacts written
        (``{"model": path, ...}``), or None to let the pipeline save the usual checkpoint."""
        return None

    def record(self) -> dict:
        return {}

    def modules_changed(self, model_args) -> list[str] | None:
        """Names (as `named_modules` of the run's model gives them) of the modules this method changes, for a task
        that must know before any work (a Whisper run whose encoder is frozen and cached); None: not known, any."""
        return None

    def probe_model(self, model_args):
        """An empty (meta-device) copy of the model the run will train (the student, else the teacher), built by the
        run's auto class: its module names and shapes, for `check` to refuse bad settings before the teacher is
        loaded or fine-tuned. No weights are read. A structured checkpoint gives the same names at full width."""
        import torch
        from transformers import AutoConfig

        from ..arch.base import model_class_for
        from ..assets import resolve_model_path

        cfg = AutoConfig.from_pretrained(resolve_model_path(model_args.student_model or model_args.teacher_model))
        with torch.device("meta"):
            return (self.auto_class or model_class_for(cfg)).from_config(cfg)


def refuse_quantized_source(model_args, what: str) -> None:
    """`UserInputError` when the model a training method starts from (the student, else the teacher) is a quantized
    checkpoint (bitsandbytes, ONNX, torch int8): its weights are no longer the float weights the method trains."""
    from ..assets import resolve_model_path
    from ..loading import checkpoint_format

    source = model_args.student_model or model_args.teacher_model
    path = resolve_model_path(source) if source else None
    if path and os.path.isdir(path):
        fmt = checkpoint_format(path)
        if fmt in QUANTIZED_FORMATS:
            raise UserInputError(f"{what} needs float weights; {source} is a quantized checkpoint ({fmt}): start from "
                                 "its full-precision source")


def save_packed_and_dense(trainer, tokenizer, run_dir: str, method_dir: str, config, save_packed, save_dense) -> tuple:
    """What the below-eight-bit methods save: the packed model in ``model/`` (`save_packed`), a plain transformers copy
    in ``model_dense/`` (`save_dense`) and the method's config in `method_dir`, by the main process. Returns
    ``(artifacts, sizes)``: the folders by role, and their sizes in MB (on the main process; empty elsewhere)."""
    from accelerate import PartialState

    from ..report.measure import folder_size_mb
    from .steps import MODEL_DIR

    model_dir, dense_dir = os.path.join(run_dir, MODEL_DIR), os.path.join(run_dir, "model_dense")
    method_path = os.path.join(run_dir, method_dir)
    sizes = {}
    if trainer.is_world_process_zero():
        save_packed(trainer.model, model_dir, tokenizer)
        save_dense(trainer.model, dense_dir, tokenizer)
        config.save_pretrained(method_path)
        sizes = {"model_mb": folder_size_mb(model_dir), "model_dense_mb": folder_size_mb(dense_dir)}
    PartialState().wait_for_everyone()
    return {"model": model_dir, "model_dense": dense_dir, method_dir: method_path}, sizes
