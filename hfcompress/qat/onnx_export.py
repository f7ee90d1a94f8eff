"""An int8 QAT model as an ONNX Runtime int8 graph, with the scales it was trained with (Q8BERT's deployment).

`export_qat_onnx(model, directory)` exports a model trained with ``qat_weight_bits=8`` and 8-bit activations to a
folder that ``OnnxModelForSequenceClassification`` (and the token-classification / QA classes, `load_model`, the
pipelines) load like any folder of `hfcompress.quantize.onnx`; the export itself is `hfcompress.onnx_io.export_onnx`. The
graph is QDQ: every quantized Linear is ``DequantizeLinear(int8 weight, a scale per output unit) ->
MatMul <- DequantizeLinear(QuantizeLinear(input))``, which ONNX Runtime fuses into int8 kernels.

* Weights: the QAT codes and scales themselves (int8, symmetric, per output row; `quantizers.quantize_rows`), stored
  as int8 initializers: nothing is re-quantized.
* Activations: static, from the ranges the layers observed in training (a moving average of max|x|,
  ``QATLinear.activation_range``; `calibrate_activation_ranges` for a model trained without them): scale
  range / 127, stored as uint8 with zero point 128 (the same grid as int8 with zero point 0; ONNX Runtime's x86
  kernels prefer unsigned activations). The PyTorch model in eval mode rounds on the very same grid
  (``torch.fake_quantize_per_tensor_affine``, traced to QuantizeLinear / DequantizeLinear), so the two agree to
  float rounding; the export checks that on a padded batch of another shape.
* Word embeddings quantized to 8 bits in training are stored int8 with a scale per row (a DequantizeLinear before
  the Gather); position / token-type embeddings, LayerNorms, the attention's own products and the task head stay float.
"""

from __future__ import annotations

import copy
import logging
import os

import numpy as np
import torch
import torch.nn as nn

from ..arch.base import unwrap_model
from ..errors import UserInputError
from ..hardware import cpu_has_vnni
from .modules import QAT_KEY, QATEmbedding, QATLinear, qat_modules

logger = logging.getLogger(__name__)

MODE = "qat_static_qdq"


def check_int8_exportable(model: nn.Module) -> dict[str, float]:
    """`UserInputError` unless every quantized Linear of `model` has int8 weights, 8-bit activations and an observed
    range; returns name -> range."""
    base = unwrap_model(model)
    if not getattr(getattr(base, "config", None), QAT_KEY, None):
        raise UserInputError(f"{type(base).__name__} is not a quantization-aware trained model (no {QAT_KEY} in its "
                             "config): export_qat_onnx exports int8 QAT models; quantize others with quantize_onnx")
    linears = {n: m for n, m in qat_modules(base).items() if isinstance(m, QATLinear)}
    wrong = [f"{n} ({m.weight_bits}-bit weights, {m.activation_bits or 'float'} activations)" for n, m in linears.items()
             if m.weight_bits not in (7, 8) or m.activation_bits != 8 or m.split]
    if wrong:
        raise UserInputError(f"export_qat_onnx needs int8 weights and 8-bit activations (qat_weight_bits=7 or 8, "
                             f"qat_activation_bits=8); {wrong[0]}{' ...' if len(wrong) > 1 else ''}: 1- and 2-bit "
                             "weights have no ONNX Runtime kernels (save them packed with save_qat)")
    if len({m.weight_bits for m in linears.values()}) > 1:
        raise UserInputError("export_qat_onnx: the quantized Linear layers mix 7- and 8-bit weights; train them alike")
    ranges = {n: m.static_range() for n, m in linears.items()}
    unseen = [n for n, r in ranges.items() if r is None]
    if unseen:
        raise UserInputError(f"{len(unseen)} quantized layers have no observed activation range ({unseen[0]}...): "
                             "static int8 needs them; train with QATCallback / hfcompress qat, or call "
                             "hfcompress.qat.calibrate_activation_ranges(model, batches) first")
    return ranges


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A copy whose quantized layers hold their quantized weights (`qat_frozen`): the trace then holds constants
    on the int8 grid, not the quantizer's arithmetic."""
    copied = copy.deepcopy(unwrap_model(model)).eval()
    with torch.no_grad():
        for module in qat_modules(copied).values():
            module.weight.data = module.quantized_weight().detach().clone()
            module.qat_frozen = True
    return copied


def _int8_columns(values: np.ndarray, axis: int, name: str, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scales along `axis`) of a matrix that already lies on a symmetric per-unit grid whose
    largest magnitude per unit is `qmax` steps (127, or 63 for 7-bit weights); a matrix that does not is an error
    (not a QAT int8 weight)."""
    other = 1 - axis
    scales = (np.abs(values).max(axis=other) / qmax).astype(np.float32)
    safe = np.where(scales > 0, scales, 1).astype(np.float32)
    shape = [1, 1]
    shape[axis] = -1
    codes = np.round(values / safe.reshape(shape))
    off = float(np.abs(codes * safe.reshape(shape) - values).max()) if values.size else 0.0
    if off > 1e-5 * max(float(np.abs(values).max()), 1e-12):
        raise UserInputError(f"{name}: weights not on an int8 grid (off by {off:.3g}): not a QAT int8 layer")
    return codes.clip(-qmax, qmax).astype(np.int8), safe


def _quantize_graph(path: str, qmax: int, embedding: np.ndarray | None, embedding_qmax: int = 127) -> dict:
    """Rewrite the traced graph at `path` in place: the float weight of every MatMul / Gemm whose input comes from a
    DequantizeLinear (a quantized Linear) becomes int8 + DequantizeLinear; so does the word-embedding table (the
    Gather initializer holding `embedding`) when given. Returns counts."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(path)
    graph = m.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    new_nodes, counts = [], {"linear": 0, "embedding": 0}

    def dq(init_name: str, axis: int, label: str, steps: int) -> str:
        values = numpy_helper.to_array(inits[init_name])
        codes, scales = _int8_columns(values, axis, label, steps)
        base = init_name.replace("::", "_").replace("/", "_")
        graph.initializer.remove(inits.pop(init_name))
        graph.initializer.extend([numpy_helper.from_array(codes, base + "_int8"),
                                  numpy_helper.from_array(scales, base + "_scale"),
                                  numpy_helper.from_array(np.zeros_like(scales, dtype=np.int8), base + "_zero_point")])
        out = base + "_dequantized"
        new_nodes.append(helper.make_node("DequantizeLinear", [base + "_int8", base + "_scale", base + "_zero_point"],
                                          [out], name=base + "_DequantizeLinear", axis=axis))
        return out

    for node in list(graph.node):
        if node.op_type in ("MatMul", "Gemm") and len(node.input) >= 2 and node.input[1] in inits:
            src = producer.get(node.input[0])
            if src is None or src.op_type != "DequantizeLinear":
                continue  # a float layer (the task head)
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 0 if (node.op_type == "Gemm" and trans_b) else 1  # the output units of B
            node.input[1] = dq(node.input[1], axis, node.name, qmax)
            counts["linear"] += 1
        elif node.op_type == "Gather" and embedding is not None and node.input[0] in inits and \
                tuple(inits[node.input[0]].dims) == embedding.shape and \
                np.array_equal(numpy_helper.to_array(inits[node.input[0]]), embedding):
            node.input[0] = dq(node.input[0], 0, node.name, embedding_qmax)
            counts["embedding"] += 1
    # the DequantizeLinear nodes read initializers only: placing them first keeps the graph topologically sorted
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return counts


class OnnxMismatchError(UserInputError):
    """The exported int8 graph does not compute what the QAT model does (checked on a random batch)."""


def export_qat_onnx(model: nn.Module, directory: str, tokenizer=None, opset: int | None = None,
                    atol: float | None = 1e-2, seed: int = 0) -> str:
    """Export an int8 QAT model (see the module docstring) to ``<directory>/model.onnx`` with config.json, the
    `tokenizer` and ``hfcompress_onnx.json`` (``quantization.mode = "qat_static_qdq"``); returns `directory`. ONNX
    Runtime's logits on a padded random batch must be within `atol` of the PyTorch QAT model's in eval mode
    (``None``: only logged and recorded)."""
    from ..onnx_io import (
        DEFAULT_OPSET,
        METADATA_FILE,
        ONNX_FILE,
        check_shapes,
        commit_folder,
        export_onnx,
        onnx_size_mb,
        ort_session,
        read_onnx_metadata,
        run_logits,
        sample_inputs,
        temp_dir_beside,
        torch_logits,
        write_json,
    )

    ranges = check_int8_exportable(model)
    base = unwrap_model(model)
    embeddings = [m for m in qat_modules(base).values() if isinstance(m, QATEmbedding)]
    bits = next(m.weight_bits for m in qat_modules(base).values() if isinstance(m, QATLinear))
    frozen = _frozen_copy(base)
    emb_bits = embeddings[0].weight_bits if embeddings else 32
    emb = frozen.get_input_embeddings().weight.detach().cpu().numpy() if emb_bits in (7, 8) else None
    with temp_dir_beside(directory) as tmp:
        export_onnx(frozen, tmp, tokenizer, opset=opset or DEFAULT_OPSET, atol=None, seed=seed)
        float_mb = onnx_size_mb(tmp)
        counts = _quantize_graph(os.path.join(tmp, ONNX_FILE), 2 ** (bits - 1) - 1, emb, 2 ** (emb_bits - 1) - 1)
        if counts["linear"] != len(ranges):
            raise UserInputError(f"export_qat_onnx: {counts['linear']} int8 MatMuls in the graph for {len(ranges)} "
                                 "quantized Linear layers: this architecture's trace is not supported")
        meta = read_onnx_metadata(tmp)
        check = sample_inputs(base.config, meta["inputs"], *check_shapes(base.config)[1], seed + 1)
        was_training = base.training
        base.eval()
        try:
            with torch.no_grad():
                expected = torch_logits(base, {k: torch.from_numpy(v).to(next(base.parameters()).device)
                                                for k, v in check.items()})
        finally:
            base.train(was_training)
        diff = float(np.abs(run_logits(ort_session(os.path.join(tmp, ONNX_FILE)), check) - expected).max())
        logger.info("Exported the int8 QAT model to ONNX QDQ: %d int8 Linear layers, %d int8 embedding tables, "
                    "%.1f MB -> %.1f MB, max |logits - PyTorch QAT| = %.3g", counts["linear"], counts["embedding"],
                    float_mb, onnx_size_mb(tmp), diff)
        if atol is not None and not diff <= atol:
            hint = (" (8-bit weights on a CPU without VNNI: ONNX Runtime's int8 kernels saturate their 16-bit sums; "
                    "train with qat_weight_bits=7)" if bits == 8 and not cpu_has_vnni() else "")
            raise OnnxMismatchError(f"export_qat_onnx: ONNX Runtime's logits differ from the QAT model's by "
                                    f"{diff:.3g} (> atol={atol}){hint}; nothing was written to {directory}")
        import onnxruntime

        meta["quantization"] = {
            "mode": MODE, "weight_type": "int8", "weight_bits": bits, "per_channel": True, "activations": "static uint8, zero point 128",
            "weights_from": "QAT codes and scales", "embeddings": "int8 per row" if counts["embedding"] else "float",
            "int8_linear_layers": counts["linear"], "activation_ranges": ranges, "check_max_abs_diff": diff,
            "onnxruntime": onnxruntime.__version__,
        }
        meta["source"] = getattr(base.config, "_name_or_path", None) or meta.get("source")
        write_json(os.path.join(tmp, METADATA_FILE), meta)
        commit_folder(tmp, directory)
    return directory
