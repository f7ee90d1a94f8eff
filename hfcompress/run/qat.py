"""Quantization-aware training as a method of a training run (`hfcompress qat`, `scripts/qat.py`): the student (by
default a full copy of the fine-tuned teacher) gets fake-quantized layers before the trainer is built (ternary,
binary or int8 weights per row, 8-bit activations), then trains with distillation from the full-precision teacher
(TernaryBERT's recipe: logits and hidden states, through the shared `DistillationLoss`). Saved packed (`model/`,
`load_qat`) and dense (`model_dense/`: the quantized weights as a plain checkpoint, which `hfcompress quantize` turns
into int8 kernels for an int8-trained model); an int8 run also writes `model_onnx/` (`export_qat_onnx`: the ONNX
Runtime int8 graph with the trained scales). ``--qat_split_ternary`` starts a binary run from a ternary run's
`model_dense/` split into a binary model of twice the width (`hfcompress.qat.split`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..distill.arguments import DistillationArguments
from ..errors import UserInputError
from ..qat import QATCallback, QATConfig, apply_qat, check_qat, save_qat, save_qat_dense
from ..qat.modules import QAT_KEY, qat_targets
from ..qat.split import check_ternary_weights, split_ternary
from .methods import RunMethod, refuse_quantized_source, save_packed_and_dense

logger = logging.getLogger(__name__)

METHOD_DIR = "qat"
KD_TERMS = ("alpha", "hidden_weight", "relation_weight", "attention_weight")


@dataclass
class QATArguments(DistillationArguments, QATConfig):
    """`TrainingArguments` + distillation fields + quantization-aware training fields, for one `HfArgumentParser`.
    With ``--qat_distill false`` every distillation term is turned off (labels alone)."""

    def __post_init__(self):
        QATConfig.__post_init__(self)
        if not self.qat_distill:
            for name in KD_TERMS:
                setattr(self, name, 0.0)
        DistillationArguments.__post_init__(self)

    def qat_config(self) -> QATConfig:
        return QATConfig.from_any(self)


def run_qat(model_args, data_args, args: QATArguments, task: str = "qat", report=None, push=None):
    """Quantization-aware training with distillation, as `scripts/qat.py` does; returns the `RunRecord`."""
    from .distill import run_distillation

    check_teacher(model_args, args)  # before the run reads the teacher's config

    return run_distillation(model_args, data_args, args, methods=[QATMethod(args.qat_config())], task=task,
                            report=report, push=push)


def check_teacher(model_args, config: QATConfig) -> None:
    """Distillation asked (``qat_distill``, the default) with no teacher: one clear error before any work."""
    if config.qat_distill and not (model_args.teacher_model or "").strip():
        raise UserInputError("quantization-aware training with distillation (--qat_distill, the default) needs the "
                             "full-precision model as --teacher_model (the model distilled from, and copied into the "
                             "student unless --student_model is given); with --qat_distill false it is only copied")


def check_ternary_student(path: str, linears: list[str]) -> None:
    """Ternary weight splitting: the student's weights (its model.safetensors) must be ternary per row, before any
    work (`check_ternary_weights` on the stored tensors)."""
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
        raise UserInputError(f"--qat_split_ternary splits a ternary model: the student {path} has no model.safetensors "
                             "(give the model_dense/ folder of a --qat_weight_bits 2 run)")
    from safetensors import safe_open

    with safe_open(weights, "pt") as fh:
        keys = set(fh.keys())
        holder = torch.nn.Module()
        for name in linears:
            key = next((k for k in (f"{name}.weight", f"{name.split('.', 1)[-1]}.weight") if k in keys), None)
            if key is None:
                raise UserInputError(f"--qat_split_ternary: {path} holds no weight for {name}")
            layer = torch.nn.Module()
            layer.weight = fh.get_tensor(key)
            holder.add_module(name.replace(".", "_"), layer)
    check_ternary_weights(holder, [n.replace(".", "_") for n in linears])


class QATMethod(RunMethod):
    name = "qat"

    def __init__(self, config: QATConfig):
        self.config = config
        self._callback = QATCallback(config)
        self.layers: dict = {}
        self.sizes: dict = {}
        self.onnx_skipped: str | None = None  # why model_onnx/ was not written (its check failed), if so

    def callback(self):
        return self._callback

    def check(self, model_args, data_args, args, train_rows: int) -> None:
        check_teacher(model_args, self.config)
        if self.exports_onnx and self.config.qat_weight_bits == 8:
            from ..hardware import cpu_has_vnni

            if not cpu_has_vnni():
                logger.warning("qat_weight_bits=8 on a CPU without VNNI: ONNX Runtime's int8 kernels here saturate "
                               "with full-range 8-bit weights, so model_onnx/ will likely fail its check against the "
                               "PyTorch model and be left out; --qat_weight_bits 7 exports exactly")
        refuse_quantized_source(model_args, "quantization-aware training")
        probe = self.probe_model(model_args)
        targets = qat_targets(probe, self.config)  # a pattern matching nothing, before the teacher is touched
        if self.config.qat_split_ternary:
            from ..assets import resolve_model_path

            source = resolve_model_path(model_args.student_model or model_args.teacher_model)
            check_ternary_student(source, [n for n in targets if isinstance(probe.get_submodule(n), torch.nn.Linear)])

    def check_model(self, model) -> None:
        check_qat(model, self.config)

    def prepare_model(self, model, run_dir: str, tokenizer=None):
        if self.config.qat_split_ternary:  # the student is a ternary model: ternary layers first, then split
            ternary = QATConfig.from_any({**self.config.to_dict(), "qat_weight_bits": 2, "qat_split_ternary": False})
            apply_qat(model, ternary)  # its weights were checked ternary in `check` (check_ternary_student)
            split_ternary(model)
            self.layers = dict(getattr(model.config, QAT_KEY)["modules"])
            return model
        self.layers = apply_qat(model, self.config)  # before the trainer: evaluations see the quantized model
        return model

    def save(self, trainer, tokenizer, run_dir: str) -> dict:
        artifacts, sizes = save_packed_and_dense(trainer, tokenizer, run_dir, METHOD_DIR, self.config, save_qat,
                                                 save_qat_dense)
        self.sizes = sizes or self.sizes
        if self.exports_onnx:
            onnx_dir = self._save_onnx(trainer, tokenizer, run_dir)
            if onnx_dir is not None:
                artifacts["model_onnx"] = onnx_dir
        return artifacts

    @property
    def exports_onnx(self) -> bool:
        """An int8 run (7- or 8-bit weights, 8-bit activations) also writes ``model_onnx/``."""
        return self.config.qat_weight_bits in (7, 8) and self.config.qat_activation_bits == 8

    def _save_onnx(self, trainer, tokenizer, run_dir: str) -> str:
        """int8 runs: ``model_onnx/``, the ONNX Runtime int8 graph with the trained scales (`export_qat_onnx`)."""
        from accelerate import PartialState

        from ..qat.onnx_export import OnnxMismatchError, export_qat_onnx
        from ..report.measure import folder_size_mb

        directory = os.path.join(run_dir, "model_onnx")
        if trainer.is_world_process_zero():
            try:
                export_qat_onnx(trainer.model, directory, tokenizer)
                self.sizes = {**self.sizes, "model_onnx_mb": folder_size_mb(directory, ".onnx")}
            except OnnxMismatchError as err:  # the trained model/ and model_dense/ are saved: keep the run
                logger.warning("%s. model/ and model_dense/ are saved; model_onnx/ is not (`hfcompress quantize "
                               "--model %s --quantization onnx_int8` makes a dynamic int8 graph of the QAT weights)",
                               err, os.path.join(run_dir, "model_dense"))
                self.onnx_skipped = str(err)
        PartialState().wait_for_everyone()
        return None if self.onnx_skipped else directory

    def record(self) -> dict:
        bits = sorted(set(self.layers.values()))
        split = self.config.qat_split_ternary
        return {**self.config.to_dict(), "scheme": "binary (split from ternary)" if split else self.config.scheme,
                "layers": len(self.layers),
                "layer_bits": bits, "saved_mb": self.sizes,
                "loading": "model/: hfcompress.qat.load_qat(path) (packed codes, same logits as trained); model_dense/: "
                           "AutoModelForSequenceClassification.from_pretrained(path) (the quantized weights in float32, "
                           "activations not quantized; for int8 kernels: hfcompress quantize --model model_dense "
                           "--quantization onnx_int8)" + ("; model_onnx/: OnnxModelForSequenceClassification."
                                                         "from_pretrained(path) (int8 ONNX Runtime graph, static "
                                                         "activation scales from training)"
                                                         if self.exports_onnx and not self.onnx_skipped else ""),
                **({"model_onnx_skipped": self.onnx_skipped} if self.onnx_skipped else {})}
