"""ONNX export and ONNX Runtime int8 quantization of sequence classifiers, token classifiers and extractive QA readers,
for CPU inference that is really faster.

Why this module exists: optimum's ONNX side (``optimum-onnx``, home of ``ORTModelForSequenceClassification`` and
``ORTQuantizer``) requires ``transformers<4.58`` and fails at import on transformers 5.x. What still works is the
pieces underneath it, used here directly:

* `export_onnx` (from `hfcompress.onnx_io`, shared with the QAT method's int8 export) traces the classifier with
  ``torch.onnx.export(dynamo=False)`` (the TorchScript exporter: it needs neither ``onnxscript`` nor
  ``torch.export``) into ``<directory>/model.onnx`` with dynamic batch and sequence axes, writes ``config.json`` and
  the tokenizer beside it, and checks ONNX Runtime's logits against PyTorch's on a padded batch of another shape than
  the traced one (so a shape baked into the trace is caught, not shipped).
* `quantize_onnx` quantizes that folder with ONNX Runtime: dynamic int8 (weights int8 ahead of time, activations
  quantized per call: no calibration data), the variant that is both fast and accurate on CPU (see its docstring
  for what was measured, static int8 included).
* `OnnxModelForSequenceClassification` loads such a folder and is called like a transformers model (``.config``,
  ``model(input_ids=..., attention_mask=...)`` -> ``SequenceClassifierOutput``, ``save_pretrained``), including inside
  ``transformers.pipeline("text-classification", model=..., tokenizer=...)``; `OnnxModelForTokenClassification` is
  the same for token classifiers (per-token logits, ``pipeline("token-classification")``),
  `OnnxModelForQuestionAnswering` for QA readers (``start_logits`` / ``end_logits`` outputs; no pipeline in
  transformers 5: ``hfcompress.run.qa.answer_questions``), and `onnx_model_class` picks one from the folder's metadata.
* `measure_onnx_latency` times it with the same protocol and the same keys as `report.measure.measure_latency`.

Every folder written here holds ``hfcompress_onnx.json`` (what was exported, the opset, the graph inputs, the
quantization settings, the source); files land under their final names only once complete (written in a temporary
folder beside the target, then moved, the metadata last). onnx and onnxruntime are imported inside the functions, so
``import hfcompress.quantize`` stays cheap.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserInputError
from ..extras import require_extra
from ..onnx_io import (
    METADATA_FILE,
    ONNX_FILE,
    TRACED_SCOPE,
    check_shapes,
    commit_folder,
    export_onnx,  # noqa: F401 (public here as before: hfcompress.quantize.export_onnx)
    onnx_size_mb,
    ort_session,
    read_onnx_metadata,
    run_logits,
    sample_inputs,
    temp_dir_beside,
    write_json,
)

logger = logging.getLogger(__name__)

# node types that only a quantized graph holds (dynamic: DynamicQuantizeLinear + MatMulInteger, fused by ORT into
# DynamicQuantizeMatMul / MatMulIntegerToFloat; static QDQ: QuantizeLinear / DequantizeLinear; QOperator: QLinear*)
QUANTIZED_OPS = frozenset({
    "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "QuantizeLinear", "DequantizeLinear", "QAttention", "QEmbedLayerNormalization", "QGemm", "DynamicQuantizeLSTM",
})


# --------------------------------------------------------------------------------------------------- logging

class _DropRecords(logging.Filter):
    """Drop the records `match` selects unless DEBUG is enabled for their logger (a demoted record would still reach
    a handler whose level is NOTSET, so they are dropped rather than demoted)."""

    def __init__(self, match):
        super().__init__()
        self.match = match

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.match(record) or logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _is_pipeline_model_check(record: logging.LogRecord) -> bool:
    return str(record.msg).startswith(tuple(f"The model '{name}' is not supported" for name in (
        "OnnxModelForSequenceClassification", "OnnxModelForTokenClassification", "OnnxModelForQuestionAnswering")))


def _is_quantizer_chatter(record: logging.LogRecord) -> bool:
    # onnxruntime.quantization logs one INFO line per tensor through the root logger (logging.info), and a warning
    # advising its pre-processing step, which changed neither accuracy nor speed on MiniLM-L6 (ORT's session
    # optimizer does the same fusions when the model is loaded)
    if f"{os.sep}onnxruntime{os.sep}quantization{os.sep}" not in record.pathname:
        return False
    return record.levelno < logging.WARNING or str(record.msg).startswith("Please consider to run pre-processing")


def _quiet_pipeline_model_check() -> None:
    """transformers' pipeline logs an ERROR for a model class outside its auto mapping, then works with it: drop that
    one record for this class (the mapping cannot take it without replacing BERT's own entry)."""
    pipe_logger = logging.getLogger("transformers.pipelines.base")
    if not any(isinstance(f, _DropRecords) for f in pipe_logger.filters):
        pipe_logger.addFilter(_DropRecords(_is_pipeline_model_check))


class _QuietQuantizer:
    """While active, drop onnxruntime.quantization's per-tensor INFO lines from the root logger."""

    def __enter__(self) -> "_QuietQuantizer":
        self._filter = _DropRecords(_is_quantizer_chatter)
        logging.getLogger().addFilter(self._filter)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeFilter(self._filter)


# --------------------------------------------------------------------------------------------------- graphs

def _graph_ops(path: str) -> set[str]:
    require_extra("onnx", "ONNX export and ONNX Runtime")
    import onnx

    return {node.op_type for node in onnx.load(path, load_external_data=False).graph.node}


def _module_of(node_name: str) -> str:
    """The dotted module name a traced node belongs to: ``/model/bert/pooler/dense/Gemm`` -> ``bert.pooler.dense``."""
    parts = node_name.strip("/").split("/")[:-1]
    if parts and parts[0] == TRACED_SCOPE:
        parts = parts[1:]
    return ".".join(parts)


def _node_names(path: str) -> list[str]:
    require_extra("onnx", "ONNX export and ONNX Runtime")
    import onnx

    return [node.name for node in onnx.load(path, load_external_data=False).graph.node]


def is_quantized_onnx(directory_or_file: str) -> bool:
    """Whether an ONNX model (a folder written here, or any ``.onnx`` file) is already quantized: by the metadata
    when present, else by the graph (a quantized graph holds `QUANTIZED_OPS` or ``QLinear*`` nodes)."""
    if os.path.isdir(directory_or_file):
        meta = read_onnx_metadata(directory_or_file) or {}
        if meta.get("quantization"):
            return True
        path = os.path.join(directory_or_file, meta.get("file_name", ONNX_FILE))
    else:
        path = directory_or_file
    return any(op in QUANTIZED_OPS or op.startswith("QLinear") for op in _graph_ops(path))


# ---------------------------------------------------------------------------------------------------- quantization

def quantize_onnx(
    source_dir: str,
    directory: str,
    mode: str = "dynamic",
    per_channel: bool = True,
    reduce_range: bool = False,
    quantize_embeddings: bool = True,
    float_modules: Sequence[str] = (),
    seed: int = 0,
) -> str:
    """Quantize the ONNX classifier in `source_dir` (written by `export_onnx`) to int8 in `directory` (which may be
    `source_dir` itself: the int8 model then replaces the float one); returns `directory`.

    `mode="dynamic"` (the only one): int8 weights, activations quantized at run time, no calibration data. On the
    MiniLM-L6 Rotten Tomatoes classifier (2 threads, batch 32 x 128) it runs 1.7-1.9x faster than float32 ONNX and
    loses 0.5 accuracy points per channel (1.1 per tensor, 2.6 with `reduce_range`). Static int8 (``quantize_static``,
    QDQ, 256 calibration texts) was tried and left out: 1.6 points lost and barely faster than float32 (1.05x).
    Static int8 with ranges *learned in training* is the QAT method's export (`hfcompress.qat.onnx_export`).
    `quantize_embeddings` also stores the embedding tables (the Gather inputs; half of MiniLM-L6's weights) as 8-bit:
    91 MB -> 23 MB instead of 59 MB. `float_modules` are regular expressions searched in the module names
    (``bert.encoder.layer.0.output.dense``) of the graph's nodes: those modules stay float32, as the task head
    (``classifier``...) always does. On MiniLM-L6, ``[r"layer\\.0\\.output\\.dense$"]`` (the first feed-forward
    down-projection, the most sensitive one on the validation split) gave back float32's test accuracy at 24.9 MB
    with no measurable speed cost. `per_channel` and `reduce_range` are ONNX Runtime's options of the same names.
    config.json, the tokenizer and every other file of
    `source_dir` are copied beside the new model.onnx; a model that is already quantized is refused.
    """
    require_extra("onnx", "ONNX export and ONNX Runtime")
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if mode != "dynamic":
        raise UserInputError(f"quantize_onnx: mode={mode!r} is not supported; use mode='dynamic' (static int8 was "
                             "measured slower and less accurate than dynamic int8 for these models on CPU)")
    meta = read_onnx_metadata(source_dir)
    file_name = (meta or {}).get("file_name", ONNX_FILE)
    source = os.path.join(source_dir, file_name)
    if not os.path.exists(source):
        raise UserInputError(f"{source_dir}: no {file_name} (write one with export_onnx)")
    if is_quantized_onnx(source_dir):
        done = (meta or {}).get("quantization") or {}
        raise UserInputError(
            f"{source_dir} holds an already quantized ONNX model ({done.get('mode', 'int8')}): it would be quantized "
            "twice; quantize the float model written by export_onnx")
    if meta is None:
        raise UserInputError(f"{source_dir} has no {METADATA_FILE}: quantize a folder written by export_onnx")
    names = list(meta["inputs"])
    heads = list(meta.get("task_heads") or [])
    patterns = [rf"^{re.escape(h)}(\.|$)" for h in heads] + list(float_modules)
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as exc:
        raise UserInputError(f"quantize_onnx: float_modules holds an invalid regular expression ({exc})") from exc
    keep_float = [n for n in _node_names(source) if any(c.search(_module_of(n)) for c in compiled)]
    keep_float += [n + "_MatMul" for n in keep_float]  # dynamic mode first rewrites Gemm X as MatMul X_MatMul + Add
    op_types = ["MatMul", "Attention"] + (["Gather", "EmbedLayerNormalization"] if quantize_embeddings else [])
    settings: dict[str, Any] = {
        "mode": mode, "weight_type": "int8", "per_channel": bool(per_channel), "reduce_range": bool(reduce_range),
        "quantize_embeddings": bool(quantize_embeddings), "op_types": op_types,
        "float_modules": heads + list(float_modules), "onnxruntime": onnxruntime.__version__,
    }
    with temp_dir_beside(directory) as tmp:
        for name in os.listdir(source_dir):
            if name in (file_name, METADATA_FILE) or name.startswith("."):
                continue
            src = os.path.join(source_dir, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(tmp, name))
            else:
                shutil.copy2(src, os.path.join(tmp, name))
        out = os.path.join(tmp, ONNX_FILE)
        with _QuietQuantizer():
            quantize_dynamic(source, out, op_types_to_quantize=op_types, per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=keep_float)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source_dir)
        check = sample_inputs(config, names, *check_shapes(config)[1], seed + 1)
        diff = float(np.abs(run_logits(ort_session(out), check) - run_logits(ort_session(source), check)).max())
        logger.info("Quantized %s (%s int8, per_channel=%s, reduce_range=%s, embeddings %s): %.1f MB -> %.1f MB, "
                    "max |logits - float ONNX| = %.3g on a random batch", source_dir, mode, per_channel, reduce_range,
                    "int8" if quantize_embeddings else "float", onnx_size_mb(source_dir, file_name),
                    onnx_size_mb(tmp), diff)
        settings["check_max_abs_diff"] = diff
        new_meta = dict(meta, file_name=ONNX_FILE, quantization=settings,
                        source=os.path.abspath(source_dir), exported_from=meta.get("source"))
        write_json(os.path.join(tmp, METADATA_FILE), new_meta)
        commit_folder(tmp, directory)
    return directory


# ------------------------------------------------------------------------------------------------------- the model

def _as_int64(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 2:
        raise UserInputError(f"{name} must be a [batch, sequence] array of ids, got shape {tuple(array.shape)}")
    return array.astype(np.int64, copy=False)


class OnnxModelForSequenceClassification:
    """An ONNX Runtime session behind the interface of a transformers sequence classifier (and of optimum's
    ``ORTModelForSequenceClassification``): `from_pretrained`, `.config`, ``model(input_ids=..., attention_mask=...)``
    returning a `SequenceClassifierOutput` with torch logits, `save_pretrained`, `.device`, `.eval()`, `.to("cpu")`.
    It also works as the model of ``transformers.pipeline("text-classification", model=..., tokenizer=...)``.

    Inputs may be torch tensors or numpy arrays; a missing ``attention_mask`` means all ones and a missing
    ``token_type_ids`` all zeros, as in transformers; ``token_type_ids`` given to a graph without that input (RoBERTa,
    MPNet...) are dropped.
    """

    main_input_name = "input_ids"
    output_names: tuple[str, ...] = ("logits",)  # the graph outputs this class reads (`onnx_output_names`)
    task = "sequence classifier"

    def __init__(self, session, config, model_path: str, metadata: dict | None = None,
                 provider: str = "CPUExecutionProvider", num_threads: int | None = None):
        self.session = session
        self.config = config
        self.model_path = model_path
        self.metadata = metadata or {}
        self.provider = provider
        self.num_threads = int(num_threads) if num_threads else torch.get_num_threads()
        self.input_names = [i.name for i in session.get_inputs()]
        self.name_or_path = os.path.dirname(model_path)
        self.training = False
        _quiet_pipeline_model_check()

    @classmethod
    def from_pretrained(cls, directory: str, provider: str = "CPUExecutionProvider", num_threads: int | None = None,
                        file_name: str = ONNX_FILE, config=None) -> "OnnxModelForSequenceClassification":
        """Load `directory/file_name` (written by `export_onnx` or `quantize_onnx`) with its config.json.
        `num_threads` (ONNX Runtime intra-op threads) defaults to ``torch.get_num_threads()``, so an ONNX model and a
        PyTorch one compared in the same process use the same cores."""
        require_extra("onnx", "ONNX export and ONNX Runtime")
        import onnxruntime as ort
        from transformers import AutoConfig

        path = os.path.join(directory, file_name)
        if not os.path.exists(path):
            raise UserInputError(f"{directory}: no {file_name} (write one with hfcompress.quantize.export_onnx)")
        if provider not in ort.get_available_providers():
            raise UserInputError(f"ONNX Runtime provider {provider!r} is not available here (available: "
                                 f"{', '.join(ort.get_available_providers())})")
        if config is None:
            try:
                config = AutoConfig.from_pretrained(directory)
            except (OSError, ValueError) as exc:
                raise UserInputError(f"{directory}: no readable config.json beside {file_name} ({exc})") from exc
        num_threads = int(num_threads) if num_threads else torch.get_num_threads()
        session = ort_session(path, num_threads, provider)
        outputs = [o.name for o in session.get_outputs()]
        missing = [n for n in cls.output_names if n not in outputs]
        if missing:
            raise UserInputError(f"{path} has no {', '.join(map(repr, missing))} output (outputs: {', '.join(outputs)})"
                                 f": not a {cls.task} exported by export_onnx (load it with "
                                 f"{onnx_model_class(directory).__name__})")
        return cls(session, config, path, read_onnx_metadata(directory), provider, num_threads)

    # what transformers code (pipelines, Trainer-free evaluation loops) reads from a model
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def is_quantized(self) -> bool:
        return bool(self.metadata.get("quantization"))

    def can_generate(self) -> bool:
        return False

    def parameter_counts(self) -> dict:
        """``parameters`` / ``nonzero_parameters`` of the graph's weight initializers (int8 or float), quantization
        scales and zero points left out: the same count as the PyTorch model it was exported from."""
        require_extra("onnx", "ONNX export and ONNX Runtime")
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(self.model_path, load_external_data=True).graph
        total = nonzero = 0
        for init in graph.initializer:
            if init.name.endswith(("_scale", "_zero_point")) or len(init.dims) == 0:
                continue
            values = numpy_helper.to_array(init)
            if values.dtype not in (np.float32, np.float16, np.int8, np.uint8):  # not shape constants, index buffers
                continue
            total += values.size
            nonzero += int(np.count_nonzero(values))
        return {"parameters": total, "nonzero_parameters": nonzero}

    def eval(self) -> "OnnxModelForSequenceClassification":
        return self

    def train(self, mode: bool = True) -> "OnnxModelForSequenceClassification":
        if mode:
            raise UserInputError("an ONNX Runtime model cannot be trained: train the PyTorch model, then export it")
        return self

    def to(self, device=None, *args, **kwargs) -> "OnnxModelForSequenceClassification":
        if device is not None and not isinstance(device, torch.dtype) and torch.device(device).type != "cpu":
            raise UserInputError(f"OnnxModelForSequenceClassification runs on the CPU only (provider {self.provider}),"
                                 f" not on {device}")
        return self

    def _run(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs) -> list[torch.Tensor]:
        """The graph's `output_names` outputs for a batch, as torch tensors."""
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if unexpected:
            raise UserInputError(f"{type(self).__name__} takes input_ids, attention_mask and "
                                 f"token_type_ids only, not {', '.join(unexpected)} (the loss is not computed: "
                                 "compare the logits with your labels)")
        if input_ids is None:
            raise UserInputError(f"{type(self).__name__} needs input_ids")
        ids = _as_int64(input_ids, "input_ids")
        feeds = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = (np.ones_like(ids) if attention_mask is None
                                       else _as_int64(attention_mask, "attention_mask"))
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = (np.zeros_like(ids) if token_type_ids is None
                                       else _as_int64(token_type_ids, "token_type_ids"))
        for name, array in feeds.items():
            if array.shape != ids.shape:
                raise UserInputError(f"{name} has shape {tuple(array.shape)}, input_ids {tuple(ids.shape)}")
        return [torch.from_numpy(a) for a in self.session.run(list(self.output_names), feeds)]

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, return_dict: bool | None = None,
                **kwargs):
        """Logits for a batch, as `SequenceClassifierOutput` (or ``(logits,)`` with ``return_dict=False``)."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self._run(input_ids, attention_mask, token_type_ids, **kwargs)[0]
        if return_dict is False:
            return (logits,)
        return SequenceClassifierOutput(logits=logits)

    __call__ = forward

    def save_pretrained(self, directory: str, **_ignored) -> str:
        """Write the ONNX model, config.json and the metadata to `directory` (the tokenizer is saved on its own, as
        with transformers models); returns `directory`."""
        if os.path.abspath(directory) == os.path.abspath(self.name_or_path):
            self.config.save_pretrained(directory)
            return directory
        with temp_dir_beside(directory) as tmp:
            shutil.copy2(self.model_path, os.path.join(tmp, ONNX_FILE))
            self.config.save_pretrained(tmp)
            if self.metadata:
                write_json(os.path.join(tmp, METADATA_FILE), dict(self.metadata, file_name=ONNX_FILE))
            commit_folder(tmp, directory)
        return directory

    def __repr__(self) -> str:
        kind = (self.metadata.get("quantization") or {}).get("mode")
        return (f"{type(self).__name__}({self.model_path!r}, {kind + ' int8' if kind else 'float32'}, "
                f"inputs={self.input_names}, provider={self.provider}, threads={self.num_threads})")


class OnnxModelForTokenClassification(OnnxModelForSequenceClassification):
    """`OnnxModelForSequenceClassification` for a token classifier exported by `export_onnx` (logits ``[batch,
    sequence, labels]``): the same interface, returning a `TokenClassifierOutput`, and the model of
    ``transformers.pipeline("token-classification", model=..., tokenizer=..., aggregation_strategy=...)``."""

    task = "token classifier"

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, return_dict: bool | None = None,
                **kwargs):
        from transformers.modeling_outputs import TokenClassifierOutput

        out = super().forward(input_ids, attention_mask, token_type_ids, return_dict=False, **kwargs)
        return out if return_dict is False else TokenClassifierOutput(logits=out[0])

    __call__ = forward


class OnnxModelForQuestionAnswering(OnnxModelForSequenceClassification):
    """`OnnxModelForSequenceClassification` for an extractive QA reader exported by `export_onnx` (outputs
    ``start_logits`` and ``end_logits``, ``[batch, sequence]``): the same interface, returning a
    `QuestionAnsweringModelOutput`. transformers 5 has no question-answering pipeline: answer raw questions with
    ``hfcompress.run.qa.answer_questions(model, tokenizer, questions, contexts)``."""

    output_names = ("start_logits", "end_logits")
    task = "question-answering reader"

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, return_dict: bool | None = None,
                **kwargs):
        from transformers.modeling_outputs import QuestionAnsweringModelOutput

        start, end = self._run(input_ids, attention_mask, token_type_ids, **kwargs)
        if return_dict is False:
            return (start, end)
        return QuestionAnsweringModelOutput(start_logits=start, end_logits=end)

    __call__ = forward


# the ONNX model class of each task, by the suffix of the exported architecture (anything else: sequence classifier)
ONNX_MODEL_CLASSES = {"ForTokenClassification": OnnxModelForTokenClassification,
                      "ForQuestionAnswering": OnnxModelForQuestionAnswering}


def onnx_model_class(directory: str):
    """The ONNX model class for the folder's exported architecture (`ONNX_MODEL_CLASSES`: token classifiers and QA
    readers have their own; anything else is a sequence classifier)."""
    arch = (read_onnx_metadata(directory) or {}).get("architecture") or ""
    return next((cls for suffix, cls in ONNX_MODEL_CLASSES.items() if arch.endswith(suffix)),
                OnnxModelForSequenceClassification)


def measure_onnx_latency(model: OnnxModelForSequenceClassification, **kwargs) -> dict:
    """`report.measure.measure_latency` (which takes this model as it is: batch 32 x 128 random ids by default,
    median of `runs` after `warmup`, the same keys) with ``threads`` the session's intra-op threads, not torch's."""
    from ..costs import measure_latency

    result = measure_latency(model, **kwargs)
    result["threads"] = model.num_threads
    return result
