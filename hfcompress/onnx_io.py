"""ONNX export of transformers text models and what reads such a folder back, shared by the methods that write ONNX
(`hfcompress.quantize.onnx`: float export and ONNX Runtime dynamic int8; `hfcompress.qat.onnx_export`: int8 QDQ with
the trained scales). A method package composes no other method, so the export lives here, below both.

* `export_onnx` traces a sequence classifier, token classifier or extractive QA reader with
  ``torch.onnx.export(dynamo=False)`` into ``<directory>/model.onnx`` (dynamic batch and sequence axes), writes
  ``config.json``, the tokenizer and ``hfcompress_onnx.json`` beside it, and checks ONNX Runtime's logits against
  PyTorch's on a padded batch of another shape than the traced one.
* The folder's files: `read_onnx_metadata`, `write_json`, `commit_folder` (files land under their final names only
  once complete, the metadata last), `temp_dir_beside`, `onnx_size_mb`.
* The check's pieces: `sample_inputs`, `check_shapes`, `ort_session`, `run_logits`, `torch_logits`.

onnx and onnxruntime are imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .errors import UserInputError
from .extras import require_extra

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
METADATA_FILE = "hfcompress_onnx.json"
METADATA_FORMAT = "hfcompress-onnx"
DEFAULT_OPSET = 17
TRACED_SCOPE = "model"  # the attribute of `_LogitsOnly` holding the classifier: the first part of every node's scope


# --------------------------------------------------------------------------------------------------- metadata / files

def read_onnx_metadata(directory: str) -> dict | None:
    """The ``hfcompress_onnx.json`` of a folder written by `export_onnx` / `quantize_onnx`, or None if absent."""
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")


def commit_folder(tmp: str, directory: str) -> None:
    """Move everything in `tmp` into `directory`: the old metadata is removed first and the new one moved last, so a
    folder whose metadata is present is complete and never describes another model.onnx than the one beside it."""
    os.makedirs(directory, exist_ok=True)
    old_meta = os.path.join(directory, METADATA_FILE)
    if os.path.exists(old_meta):
        os.remove(old_meta)
    for name in sorted(os.listdir(tmp), key=lambda f: f == METADATA_FILE):  # metadata last
        src, dst = os.path.join(tmp, name), os.path.join(directory, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            os.replace(src, dst)


def temp_dir_beside(directory: str) -> tempfile.TemporaryDirectory:
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=parent, prefix=".hfc-onnx-")


def onnx_size_mb(directory: str, file_name: str = ONNX_FILE) -> float:
    """Size on disk of the ONNX model in `directory`, in MB (10^6 bytes). (The models written here keep their weights
    inside the file: no external data, which ONNX needs only past 2 GB.)"""
    path = os.path.join(directory, file_name)
    if not os.path.exists(path):
        raise UserInputError(f"{directory}: no {file_name} (write one with export_onnx)")
    return os.path.getsize(path) / 1e6


# --------------------------------------------------------------------------------------------------------- export

def onnx_input_names(model: nn.Module) -> list[str]:
    """The graph inputs `export_onnx` gives `model`: ``input_ids`` and ``attention_mask``, plus ``token_type_ids``
    when the forward takes it and the config has more than one token type (BERT, ELECTRA; not RoBERTa, whose single
    type makes the input useless, nor MPNet / DistilBERT, whose forward has none)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    missing = [n for n in ("input_ids", "attention_mask") if n not in params]
    if missing:
        raise UserInputError(f"{type(model).__name__}.forward takes no {', '.join(missing)}: export_onnx exports "
                             "text classifiers called as model(input_ids=..., attention_mask=...)")
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and int(getattr(model.config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return names


# the graph outputs of each task, by the suffix of the model's class (anything else: one ``logits`` output)
TASK_OUTPUTS = {"ForQuestionAnswering": ("start_logits", "end_logits")}


def onnx_output_names(model_or_architecture) -> list[str]:
    """The outputs `export_onnx` gives a model (or an architecture name): ``start_logits`` and ``end_logits`` for an
    extractive QA reader, else ``logits``."""
    arch = model_or_architecture if isinstance(model_or_architecture, str) else type(model_or_architecture).__name__
    return list(next((names for suffix, names in TASK_OUTPUTS.items() if arch.endswith(suffix)), ("logits",)))


class _LogitsOnly(nn.Module):
    """The model with positional tensor inputs and its logits as outputs: what the tracer needs to name the graph's
    inputs ``input_ids`` / ``attention_mask`` / ``token_type_ids`` and its outputs (`onnx_output_names`)."""

    def __init__(self, model: nn.Module, input_names: Sequence[str]):
        super().__init__()
        self.model = model  # node names start with /model/ (`TRACED_SCOPE`)
        self.input_names = list(input_names)
        self.output_names = onnx_output_names(model)

    def forward(self, *tensors: torch.Tensor):
        out = self.model(**dict(zip(self.input_names, tensors)), return_dict=True)
        return tuple(getattr(out, name) for name in self.output_names)


def sample_inputs(config, input_names: Sequence[str], batch: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """Random ids with a padded last row (its second half is padding), as int64 numpy arrays."""
    rng = np.random.default_rng(seed)
    vocab = int(config.vocab_size)
    pad = getattr(config, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    low = min(5, vocab - 1)
    ids = rng.integers(low, vocab, size=(batch, seq_len), dtype=np.int64)
    ids[ids == pad] = low if low != pad else low + 1
    mask = np.ones((batch, seq_len), dtype=np.int64)
    if batch > 1 and seq_len > 2:
        mask[-1, seq_len // 2:] = 0
        ids[-1, seq_len // 2:] = pad
    inputs = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        inputs["token_type_ids"] = np.zeros((batch, seq_len), dtype=np.int64)
    return {name: inputs[name] for name in input_names}


def check_shapes(config) -> tuple[tuple[int, int], tuple[int, int]]:
    """(traced shape, checked shape): different batch and sequence sizes that fit the position embeddings."""
    max_pos = int(getattr(config, "max_position_embeddings", 512) or 512)
    seq = max(4, min(16, max_pos - 4))
    return (2, seq - 3), (3, seq)


def _failing_op(exc: BaseException) -> tuple[str | None, int | None]:
    """The operator an export error names (``aten::erfinv``...) and the opset that would have it, where said."""
    text = str(exc)
    op = None
    for pattern in (r"Exporting the operator '([^']+)'", r"ONNX export of operator ([\w:.]+)", r"operator '([^']+)'"):
        match = re.search(pattern, text)
        if match:
            op = match.group(1)
            break
    since = re.search(r"added in (?:opset )?version (\d+)", text)
    return op, int(since.group(1)) if since else None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def ort_session(path: str, num_threads: int | None = None, provider: str = "CPUExecutionProvider"):
    require_extra("onnx", "ONNX export and ONNX Runtime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(num_threads) if num_threads else torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=[provider])


def run_logits(session, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Every output of the graph, stacked (one ``logits``; a QA reader's start and end logits)."""
    return np.stack(session.run(None, inputs))


def torch_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """`run_logits` of the PyTorch model: its `onnx_output_names` outputs, stacked."""
    out = model(**inputs, return_dict=True)
    return np.stack([getattr(out, name).float().cpu().numpy() for name in onnx_output_names(model)])


def _trace(model: nn.Module, path: str, names: list[str], sample: dict[str, torch.Tensor], opset: int) -> None:
    """``torch.onnx.export`` (TorchScript tracer) of `model` to `path`; a failure is a `UserInputError` naming the
    architecture and, where the exporter says it, the operator and the opset that has it."""
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
    outputs = onnx_output_names(model)
    with torch.no_grad():  # per-token logits (a tagger's [batch, sequence, labels], a reader's start/end [batch,
        out = model(**sample, return_dict=True)  # sequence]) follow the sequence axis too
    for name in outputs:
        dynamic[name] = {0: "batch", 1: "sequence"} if getattr(out, name).dim() >= 2 and (
            getattr(out, name).shape[1] == sample["input_ids"].shape[1]) else {0: "batch"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*advanced indexing.*")
            # The wrapper takes the model's mode: torch.onnx.export restores the exported module's mode afterwards,
            # and a new nn.Module is in training mode, which would switch the model's dropout on after the export.
            wrapper = _LogitsOnly(model, names).train(model.training)
            torch.onnx.export(
                wrapper, tuple(sample[n] for n in names), path, dynamo=False,
                opset_version=int(opset), input_names=names, output_names=outputs, dynamic_axes=dynamic,
                do_constant_folding=True,
            )
    except Exception as exc:  # the tracer raises RuntimeError, UnsupportedOperatorError, SymbolicValueError...
        op, since = _failing_op(exc)
        what = f"operator {op} has no ONNX export at opset {opset}" if op else _first_line(exc)
        hint = f" (it has one from opset {since}: pass opset={since})" if since else ""
        raise UserInputError(
            f"{type(model).__name__} ({getattr(model.config, 'model_type', '?')}) cannot be exported to ONNX: "
            f"{what}{hint}. export_onnx supports BERT-class text models (bert, roberta, mpnet, distilbert, "
            "electra...)"
        ) from exc


def export_onnx(
    model: nn.Module,
    directory: str,
    tokenizer=None,
    opset: int = DEFAULT_OPSET,
    atol: float | None = 1e-3,
    seed: int = 0,
) -> str:
    """Export a transformers sequence classifier, token classifier or extractive QA reader (BERT, RoBERTa, MPNet,
    DistilBERT, ELECTRA...) to ``<directory>/model.onnx`` with ``config.json``, the `tokenizer` (if given) and
    ``hfcompress_onnx.json`` beside it; returns `directory`, which the class `onnx_model_class` names
    (``OnnxModelFor...Classification`` / ``OnnxModelForQuestionAnswering``) and `quantize_onnx` read.

    The graph takes int64 ``input_ids``, ``attention_mask`` (and ``token_type_ids``, see `onnx_input_names`) of any
    batch and sequence size and returns ``logits`` (a QA reader: ``start_logits`` and ``end_logits``, `TASK_OUTPUTS`),
    per-token outputs with a dynamic sequence axis too. The export is checked: ONNX Runtime's logits on a padded random
    batch of another shape than the traced one must be within `atol` of PyTorch's (`atol=None` only logs the
    difference). A model that cannot be traced raises `UserInputError` naming its class and the failing operator.
    """
    import transformers

    from .arch.base import task_head_names

    if not isinstance(model, nn.Module) or getattr(model, "config", None) is None:
        raise UserInputError(f"export_onnx needs a transformers model with a config, got {type(model).__name__}")
    arch = type(model).__name__
    names = onnx_input_names(model)
    device = next(model.parameters()).device
    if any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        raise UserInputError(f"{arch} has non-float32 weights ({next(model.parameters()).dtype}): export the float32 "
                             "model (model.float()); quantize the ONNX file with quantize_onnx instead")
    (tb, ts), (cb, cs) = check_shapes(model.config)
    traced = {k: torch.from_numpy(v).to(device) for k, v in sample_inputs(model.config, names, tb, ts, seed).items()}
    with temp_dir_beside(directory) as tmp:
        path = os.path.join(tmp, ONNX_FILE)
        check = sample_inputs(model.config, names, cb, cs, seed + 1)
        was_training = model.training
        model.eval()
        try:
            _trace(model, path, names, traced, opset)
            with torch.no_grad():
                expected = torch_logits(model, {k: torch.from_numpy(v).to(device) for k, v in check.items()})
        finally:
            model.train(was_training)
        got = run_logits(ort_session(path), check)
        diff = float(np.abs(got - expected).max())
        logger.info("Exported %s to ONNX (opset %d, inputs %s): max |logits - torch| = %.2e on a padded %dx%d batch",
                    arch, opset, ", ".join(names), diff, cb, cs)
        if atol is not None and not diff <= atol:
            raise UserInputError(
                f"{arch} exported to ONNX but its logits differ from PyTorch's by {diff:.3g} (> atol={atol}) on a "
                f"{cb}x{cs} batch: the trace does not generalise to other shapes; nothing was written to {directory}")

        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(os.path.join(tmp, METADATA_FILE), {
            "format": METADATA_FORMAT,
            "file_name": ONNX_FILE,
            "architecture": arch,
            "model_type": getattr(model.config, "model_type", None),
            "source": getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None) or None,
            "opset": int(opset),
            "inputs": names,
            "outputs": onnx_output_names(model),
            # graph nodes under /model/<head>/ belong to these modules; quantize_onnx keeps them in float
            "task_heads": task_head_names(model),
            "dynamic_axes": {"batch": 0, "sequence": 1},
            "export_check": {"max_abs_diff": diff, "batch_size": cb, "seq_len": cs},
            "quantization": None,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        })
        commit_folder(tmp, directory)
    return directory
