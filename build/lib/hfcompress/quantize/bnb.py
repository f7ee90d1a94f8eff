"""bitsandbytes 8-bit (LLM.int8) and 4-bit (nf4 / fp4, double quantization) through transformers'
``BitsAndBytesConfig``, on CPU or CUDA, for any ``...For<Task>`` model (text classifiers, wav2vec2, Whisper).

What hfcompress adds to a plain ``from_pretrained(..., quantization_config=BitsAndBytesConfig(...))``:

* **The task head stays full precision** (`task_head_names`: BERT's ``classifier``, DistilBERT's ``pre_classifier``
  and ``classifier``, wav2vec2's ``projector`` and ``classifier``, Whisper's ``proj_out``). transformers' own default
  keeps only the last *parameter* and tied/output embeddings, which for a sequence classifier quantizes the head. A
  skip pattern that matches no module is an error (a typo would silently quantize what the user meant to protect).
* **4-bit layers the CPU kernel cannot run stay full precision.** On an AVX512-BF16 CPU bitsandbytes repacks each
  4-bit weight for its fused kernel on the first eval forward, which needs ``out_features % 32 == 0`` and
  ``in_features % 64 == 0`` (the 4-bit block size): a 2-label head fails with "N must be divisible by block_n", a
  hidden size below 64 with "shape '[32, 0]' is invalid". Such layers are added to the skip list (with a log line),
  on every device, so a checkpoint quantized on a GPU still runs on such a CPU.
* **Refusals before anything is loaded**: bits other than 4 / 8, 4- and 8-bit asked at once, a checkpoint that is
  already quantized (a ``quantization_config``, or hfcompress's torch int8 format).
* **Saving is exact whether or not a forward already ran** (`save_quantized`). That repacking (above) is lossy and
  bitsandbytes 0.50 only half undoes it when saving: the weight bits are restored exactly, but the block scales
  (``absmax``) were cast to bf16 and transposed to ``[K/64, N]``. Without double quantization they were written as
  that bf16 ``[K/64, N]`` tensor, which a reload reads in the wrong order (0.05 to 0.1 off in the logits); with
  double quantization they were re-quantized from the bf16 values (about 1e-3 off), and in both cases saving changed
  the live model's own outputs. `load_quantized` keeps a copy of each 4-bit layer's quantization state as it was
  before any forward (its block scales: about 3% of the layer's 4-bit bytes, 12% without double quantization);
  `save_quantized` puts the weight back into its canonical layout and restores that state, so the file is
  bit-for-bit what a save before any forward writes, and the live model, which repacks again on its next forward,
  computes what it computed before. A model loaded elsewhere (no copy) is
  saved with the bf16 scales it actually computes with, as fp32 and without double quantization: the reload computes
  the same logits on this CPU and the file is a little larger.

The saved folder is an ordinary transformers checkpoint: ``AutoModelForSequenceClassification.from_pretrained(dir)``
(``AutoModelForSpeechSeq2Seq``, ``AutoModelForCTC``, ``AutoModelForAudioClassification`` for speech models)
reads its ``quantization_config`` and needs bitsandbytes, not hfcompress. `reload_quantized` does the same and
also keeps the state copy, so that model can be saved again exactly.

On a CPU, bitsandbytes saves memory and disk, not time: see the project notes for measured latencies.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Iterable

import torch
import torch.nn as nn

from ..arch.base import model_class_for, task_head_names, unwrap_model
from ..errors import UserInputError
from ..extras import require_extra
from .dynamic import check_skip_patterns, describe_modules, existing_quantization, is_skipped, replace_weight_files

logger = logging.getLogger(__name__)

BLOCKSIZE_4BIT = 64  # bitsandbytes' default 4-bit block size, the one transformers' Linear4bit uses
CPU_BLOCK_N = 32  # row block of bitsandbytes' CPU 4-bit packing (_convert_weight_packed_for_cpu)
SNAPSHOT_ATTR = "_hfcompress_quant_state"  # on each Linear4bit: its quant state as loaded, before any forward
_QUANT_KWARGS = ("quantization_config", "load_in_4bit", "load_in_8bit")


def _import_bnb():
    require_extra("bnb", "bitsandbytes quantization")
    import bitsandbytes as bnb

    return bnb


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, str)) or str(bits) not in ("4", "8"):
        raise UserInputError(f"bits must be 4 or 8 (bitsandbytes 4-bit nf4/fp4 or 8-bit LLM.int8), got {bits!r}")
    return int(bits)


def _check_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise UserInputError(f"compute_dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return dtype


def _cpu_incompatible_4bit(model: nn.Module, skip: list[str]) -> list[str]:
    """The `nn.Linear` layers transformers would turn 4-bit whose shape bitsandbytes' CPU kernel cannot repack."""
    out = []
    for name, module in unwrap_model(model).named_modules():
        if type(module) is nn.Linear and not is_skipped(name, skip):
            if module.out_features % CPU_BLOCK_N or module.in_features % BLOCKSIZE_4BIT:
                out.append(name)
    return out


def bnb_config(
    bits: int,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype | str = torch.float32,
    skip_modules: Iterable[str] | None = None,
    model: nn.Module | None = None,
):
    """A transformers ``BitsAndBytesConfig`` for `bits` (8: LLM.int8; 4: `quant_type` nf4 or fp4, with
    `double_quant` of the block scales).

    Args:
        compute_dtype: 4-bit matmul dtype. float32 (default) matches an fp32 model; bfloat16 is faster on a GPU. (On an
            AVX512-BF16 CPU bitsandbytes' fused kernel computes in bf16 whatever this says.)
        skip_modules: module name patterns kept in full precision (transformers' rule: from the start, as a regex, or
            as a suffix). Default: the task head of `model` (`task_head_names`); given, it replaces that default
            (``[]``: quantize the head too). Checked against `model`: a pattern matching no module is a
            `UserInputError`.
        model: the model (a ``torch.device("meta")`` skeleton is enough) the config is for. Required for the default
            skip list; with 4 bits, layers the CPU kernel cannot run are added to the skip list.
    """
    from transformers import BitsAndBytesConfig

    bits = _check_bits(bits)
    if quant_type not in ("nf4", "fp4"):
        raise UserInputError(f"quant_type must be 'nf4' or 'fp4', got {quant_type!r}")
    compute_dtype = _check_dtype(compute_dtype)
    if isinstance(skip_modules, str):
        skip_modules = [skip_modules]
    if skip_modules is None:
        if model is None:
            raise UserInputError("bnb_config needs model= to keep its task head in full precision (or pass "
                                 "skip_modules explicitly, [] to quantize every Linear)")
        skip = task_head_names(model)
    else:
        skip = check_skip_patterns(model, skip_modules) if model is not None else [str(s) for s in skip_modules]
    if bits == 4 and model is not None:
        extra = _cpu_incompatible_4bit(model, skip)
        if extra:
            logger.info("4-bit: keeping %s in full precision (bitsandbytes' CPU kernel needs out_features %% %d == 0 "
                        "and in_features %% %d == 0)", extra, CPU_BLOCK_N, BLOCKSIZE_4BIT)
            skip = skip + extra
    return BitsAndBytesConfig(
        load_in_8bit=bits == 8,
        load_in_4bit=bits == 4,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=bool(double_quant),
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=skip,
    )


def _resolve_device(device: str | torch.device | None) -> str:
    device = "cpu" if device is None else str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserInputError(f"device {device!r} asked but torch sees no CUDA device: use device='cpu' or 'auto'")
        return device
    if device != "cpu":
        raise UserInputError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    return device


def _skeleton(model_class, config) -> nn.Module:
    """`model_class` built from `config` on the meta device (no memory, no init): enough to read module names."""
    try:
        with torch.device("meta"):
            if hasattr(model_class, "from_config"):
                return model_class.from_config(config)
            return model_class._from_config(config)
    except ValueError as exc:
        raise UserInputError(f"{getattr(model_class, '__name__', model_class)} cannot be built from a "
                             f"{type(config).__name__}: {exc}. Pass the right model_class") from exc


def _read_config(path: str):
    from transformers import AutoConfig

    if not os.path.isdir(path):
        raise UserInputError(f"{path} is not a folder: pass the directory of a saved model (config.json + weights)")
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: cannot read its config.json: {exc}") from exc


def snapshot_quant_states(model: nn.Module) -> int:
    """Keep a copy of the quantization state of every bitsandbytes 4-bit layer of `model` that has not been repacked
    for the CPU kernel yet (i.e. before its first eval forward on CPU), so `save_quantized` can write it exactly.
    `load_quantized` and `reload_quantized` call this; returns the number of layers copied."""
    bnb = _import_bnb()
    count = 0
    for module in unwrap_model(model).modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        state = getattr(module.weight, "quant_state", None)
        if state is None or getattr(state, "packing_format_for_cpu", False):
            continue
        setattr(module, SNAPSHOT_ATTR, {k: v.detach().clone() for k, v in state.as_dict(packed=True).items()})
        count += 1
    return count


def _canonical_4bit(module) -> str | None:
    """Undo bitsandbytes' CPU repacking of one Linear4bit in place (see the module docstring); returns how the quant
    state was restored, or None if the layer was not repacked."""
    from bitsandbytes.functional import QuantState, _convert_weight_packed_for_cpu_inverse

    weight = module.weight
    state = getattr(weight, "quant_state", None)
    if state is None or not getattr(state, "packing_format_for_cpu", False):
        return None
    # the weight bits: an exact permutation back (bitsandbytes' own inverse, run on a copy so the live state is
    # untouched until we replace it)
    data, _ = _convert_weight_packed_for_cpu_inverse(weight.data, copy.copy(state))
    saved = getattr(module, SNAPSHOT_ATTR, None)
    if saved is not None:
        restored = QuantState.from_dict({k: v.clone() for k, v in saved.items()}, device=data.device)
        how = "state kept at load"
    else:
        # the scales the packed kernel really uses (bf16, [K/64, N]) in the canonical order, as fp32, unnested
        restored = QuantState(
            absmax=state.absmax.T.reshape(-1).float(), shape=state.shape, code=state.code,
            blocksize=state.blocksize, quant_type=state.quant_type, dtype=state.original_dtype,
        )
        how = "bf16 scales in use"
    if tuple(restored.shape) != tuple(state.shape) or data.numel() * data.element_size() * 2 < restored.shape.numel():
        raise RuntimeError(f"bitsandbytes 4-bit state of shape {tuple(restored.shape)} does not fit its weight "
                           f"{tuple(data.shape)}")
    weight.data = data
    weight.quant_state = restored
    module.quant_state = restored
    return how


def _bnb_modules(model: nn.Module) -> dict[str, nn.Module]:
    import sys

    if "bitsandbytes" not in sys.modules:
        return {}
    bnb = sys.modules["bitsandbytes"]
    types = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return {n: m for n, m in unwrap_model(model).named_modules() if isinstance(m, types)}


class _OnceFilter(logging.Filter):
    """Let a repeated bitsandbytes warning through once: LLM.int8 on CPU logs "MatMul8bitLt: inputs will be cast from
    torch.float32 to float16" on *every* call of every layer (hundreds of lines per evaluation)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix, self.seen = prefix, False

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(self.prefix):
            if self.seen:
                return False
            self.seen = True
        return True


def _quiet_int8_cast_warning() -> None:
    log = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _OnceFilter) for f in log.filters):
        log.addFilter(_OnceFilter("MatMul8bitLt: inputs will be cast"))


def _summary(model: nn.Module) -> str:
    quantized = _bnb_modules(model)
    kept = [n for n, m in unwrap_model(model).named_modules() if type(m) is nn.Linear]
    return f"{len(quantized)} Linear layers quantized, kept in full precision: {kept or 'none'}"


def load_quantized(
    path: str,
    bits: int,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: torch.dtype | str = torch.float32,
    skip_modules: Iterable[str] | None = None,
    model_class=None,
    device: str | None = "cpu",
    **from_pretrained_kwargs,
) -> nn.Module:
    """The full-precision checkpoint at `path` loaded with bitsandbytes `bits`-bit weights, in eval mode.

    Args:
        bits, quant_type, double_quant, compute_dtype, skip_modules: as in `bnb_config` (default skip list: the task
            head).
        model_class: a transformers class or auto class. Default: the task auto class of the class config.json
            names (`model_class_for`: ``AutoModelForSpeechSeq2Seq`` for Whisper, ``AutoModelForCTC``,
            ``AutoModelForAudioClassification``; a text model: ``AutoModelForSequenceClassification``).
        device: ``"cpu"`` (default), ``"cuda"`` / ``"cuda:N"`` (an error if torch sees no GPU) or ``"auto"`` (CUDA if
            available).
        from_pretrained_kwargs: passed on (not ``quantization_config`` / ``load_in_*bit``: `bits` says that).

    Refused before loading (`UserInputError`): bits other than 4 or 8, a second bit width in the kwargs, a checkpoint
    that is already quantized (transformers ``quantization_config`` or hfcompress torch int8).
    """
    bits = _check_bits(bits)
    given = {k: from_pretrained_kwargs[k] for k in _QUANT_KWARGS if k in from_pretrained_kwargs}
    if given:
        other = 8 if bits == 4 else 4
        if given.get(f"load_in_{other}bit"):
            raise UserInputError(f"bits={bits} and load_in_{other}bit=True both given: choose 4-bit or 8-bit")
        raise UserInputError(f"pass the bit width as bits= only, not {sorted(given)}: load_quantized builds the "
                             "BitsAndBytesConfig itself (use bnb_config + from_pretrained for a hand-made one)")
    if "device_map" in from_pretrained_kwargs:
        raise UserInputError("pass device= to load_quantized, not device_map")
    config = _read_config(path)
    model_class = model_class or model_class_for(config)
    already = existing_quantization(config)
    if already:
        raise UserInputError(f"{path} is already quantized: {already}. Quantizing it twice compounds the error: load "
                             "it with from_pretrained (or load_dynamic_int8), or start from the full-precision model")
    device = _resolve_device(device)
    _import_bnb()
    skeleton = _skeleton(model_class, config)
    qconfig = bnb_config(bits, quant_type, double_quant, compute_dtype, skip_modules, model=skeleton)
    model = model_class.from_pretrained(path, quantization_config=qconfig, device_map=device, **from_pretrained_kwargs)
    model.eval()
    snapshot_quant_states(model)
    if bits == 8:
        _quiet_int8_cast_warning()
    what = "8-bit LLM.int8" if bits == 8 else f"4-bit {quant_type}{' double-quant' if double_quant else ''}"
    logger.info("Loaded %s as bitsandbytes %s on %s: %s", path, what, device, _summary(model))
    return model


def reload_quantized(directory: str, model_class=None, device: str | None = "cpu", **from_pretrained_kwargs):
    """A checkpoint written by `save_quantized` (any saved bitsandbytes checkpoint), in eval mode. The same as
    ``model_class.from_pretrained(directory, device_map=device)``, plus the 4-bit state copy that makes a later
    `save_quantized` of this model exact."""
    config = _read_config(directory)
    qc = getattr(config, "quantization_config", None)
    qc = qc if isinstance(qc, dict) else (qc.to_dict() if qc is not None else {})
    if qc.get("quant_method") != "bitsandbytes":
        raise UserInputError(f"{directory}/config.json has no bitsandbytes quantization_config: quantize a "
                             "full-precision checkpoint with load_quantized")
    _import_bnb()
    model_class = model_class or model_class_for(config)
    model = model_class.from_pretrained(directory, device_map=_resolve_device(device), **from_pretrained_kwargs)
    model.eval()
    snapshot_quant_states(model)
    if qc.get("load_in_8bit"):
        _quiet_int8_cast_warning()
    return model


def save_quantized(model: nn.Module, directory: str, tokenizer=None, **save_kwargs) -> str:
    """Save a bitsandbytes-quantized model (from `load_quantized`) as a transformers checkpoint (config.json with its
    ``quantization_config``, ``model.safetensors``, the tokenizer if given). Exact whether or not the model already
    ran a forward (module docstring). Files land under their final names only once complete (written to a temporary
    folder beside `directory`, weights moved last; weight files of an earlier save that this one does not overwrite
    are removed)."""
    model = unwrap_model(model)
    if not _bnb_modules(model):
        raise UserInputError(f"{type(model).__name__} has no bitsandbytes layers: load it with load_quantized first "
                             "(a torch dynamic int8 model saves with save_dynamic_int8)")
    bnb = _import_bnb()
    restored: dict[str, int] = {}
    for module in model.modules():
        how = _canonical_4bit(module) if isinstance(module, bnb.nn.Linear4bit) else None
        if how:
            restored[how] = restored.get(how, 0) + 1
    if restored:
        logger.info("Undid bitsandbytes' CPU repacking of 4-bit layers before saving: %s", restored)
    if restored.get("bf16 scales in use"):
        logger.warning("%d 4-bit layers had run a forward before hfcompress saw them (model not loaded with "
                       "load_quantized / reload_quantized): saved with the bf16 block scales they compute with, as "
                       "fp32 without double quantization. The reload computes the same logits on this CPU; the "
                       "file is slightly larger", restored["bf16 scales in use"])
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".hfc-save-") as tmp:
        with _without_bnb_deserializers(model):
            model.save_pretrained(tmp, safe_serialization=True, **save_kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        replace_weight_files(tmp, directory)
    logger.info("Saved bitsandbytes-quantized %s to %s (%.2f MB of weights; loads with from_pretrained)",
                type(model).__name__, directory, quantized_size_mb(directory))
    return directory


@contextlib.contextmanager
def _without_bnb_deserializers(model: nn.Module):
    """transformers 5.24 cannot save a model it loaded from a saved bitsandbytes checkpoint: ``save_pretrained``
    reverses the load-time weight conversions, and the bitsandbytes deserialize step has no reverse
    (``NotImplementedError`` in ``ConversionOps.reverse_op``). Its reverse is the identity (bitsandbytes layers
    already write the serialized names and tensors), so hide those converters during the save."""
    conversions = getattr(model, "_weight_conversions", None)
    names = ("Bnb4bitDeserialize", "Bnb8bitDeserialize")

    def is_bnb(conv) -> bool:
        ops = getattr(conv, "operations", None) or []
        return bool(ops) and all(type(op).__name__ in names for op in ops)

    kept = [c for c in conversions or [] if not is_bnb(c)]
    if not conversions or len(kept) == len(conversions):
        yield
        return
    model._weight_conversions = kept
    try:
        yield
    finally:
        model._weight_conversions = conversions


def quantized_size_mb(directory: str) -> float:
    """Size of the safetensors weights of a saved checkpoint folder, in MB (10^6 bytes)."""
    from ..costs import folder_size_mb

    return folder_size_mb(directory)


__all__ = [
    "bnb_config",
    "load_quantized",
    "reload_quantized",
    "save_quantized",
    "snapshot_quant_states",
    "quantized_size_mb",
    "describe_modules",
    "check_skip_patterns",
]
