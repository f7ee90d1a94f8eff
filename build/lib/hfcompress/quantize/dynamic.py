"""PyTorch dynamic int8 quantization, and a checkpoint format for it, for users who stay in PyTorch.

`quantize_dynamic_int8` runs `torch.ao.quantization.quantize_dynamic` over the model's `nn.Linear` layers: weights
become int8 (one scale per tensor, or per output row with ``per_channel=True``) and activations are quantized per batch
at run time. On a 2-core x86 CPU a MiniLM-L6 classifier runs about 2x faster than fp32 and its logits move by about
0.02. The task head (`task_head_names`) stays fp32 by default: it is tiny, so quantizing it saves nothing measurable and
only adds error to the very numbers a user reads. ``embeddings=True`` also quantizes the input (token) embedding table
to 8 bits per row, the largest single tensor of a small encoder; position embeddings are left alone because some model
families read ``embedding.weight`` directly, which a quantized embedding does not have as a tensor.

Why a checkpoint format of our own: torch's quantized modules keep their weights in opaque packed objects
(``_packed_params``) that ``save_pretrained`` / safetensors cannot write. `save_dynamic_int8` therefore writes, for each
quantized module ``<name>``, ``<name>.weight_int8`` (the int8 values; ``weight_uint8`` for an embedding),
``<name>.weight_scale`` and ``<name>.weight_zero_point`` (0-d for per-tensor, one per row for per-channel) and
``<name>.bias``, next to every other parameter under its usual name, in ``hfcompress_dynamic_int8.safetensors``;
config.json records ``hfcompress_quantization = {"method": "torch_dynamic_int8", "modules": [...], ...}``.
`load_dynamic_int8` rebuilds the model from its config (the class ``architectures`` names: a text classifier,
``WhisperForConditionalGeneration``, ``Wav2Vec2ForCTC``, ...; at its pruned shape when the config records
``hfcompress_structure``), loads the float parameters and re-creates each quantized module from the saved integers and
scales, so a reload computes exactly the same logits (and Whisper generates the same tokens). **This checkpoint needs
hfcompress to load**: ``from_pretrained`` on the folder fails (it finds no ``model.safetensors``) rather than silently
initialising the quantized layers at random, which is why the weights file has its own name.

`torch.ao.quantization` is deprecated upstream (the migration target, torchao's ``quantize_``, measured slower than
fp32 on this CPU); it still works in torch 2.13. Its two deprecation warnings are silenced around our own calls only
(`_quiet_torch_ao`), so a user's other uses still see them.

This module also holds the helpers the bitsandbytes path shares (skip patterns, "quantized twice" checks): it depends
on torch and transformers only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn

from ..arch.base import task_head_names, unwrap_model
from ..errors import UserInputError
from ..remote_code import plain_class_name, shaped_class

logger = logging.getLogger(__name__)

CONFIG_KEY = "hfcompress_quantization"
METHOD = "torch_dynamic_int8"
WEIGHTS_NAME = "hfcompress_dynamic_int8.safetensors"
FORMAT_VERSION = 1

# Weight files transformers (or hfcompress) would read from a checkpoint folder: a save removes those it did not write,
# so a folder never mixes an earlier model's weights with the new config.
_WEIGHT_FILE_PATTERNS = (r"model(-\d+-of-\d+)?\.safetensors", r"model\.safetensors\.index\.json",
                         r"pytorch_model(-\d+-of-\d+)?\.bin", r"pytorch_model\.bin\.index\.json",
                         re.escape(WEIGHTS_NAME), r"sparse_model\.safetensors")


# --------------------------------------------------------------------------------------------------------------------
# shared helpers (also used by hfcompress.quantize.bnb)
# --------------------------------------------------------------------------------------------------------------------

def _pattern_matches(pattern: str, name: str) -> bool:
    """transformers' rule for ``llm_int8_skip_modules`` / ``modules_to_not_convert``: `pattern` matches a module name
    from the start up to a module boundary (also as a regex: ``layer.*`` matches ``layer.11.attn``), or as a suffix
    (``fc1`` matches ``model.decoder.layers.3.fc1``). The same rule serves the torch int8 path, so one skip list means
    the same thing to every quantizer."""
    try:
        from transformers.quantizers.quantizers_utils import should_convert_module
    except ImportError:  # pragma: no cover - older/newer transformers without the helper: same rule, our copy
        boundary = r"(?:(?<=\.)|(?=\.|$))"
        return bool(re.match(rf"(?:{pattern}){boundary}", name)) or name.endswith(pattern)
    return not should_convert_module(name, [pattern])


def describe_modules(model: nn.Module) -> str:
    """A short summary of a model's module names, for error messages: its top-level children and the distinct last
    name parts of its `nn.Linear` layers."""
    model = unwrap_model(model)
    children = [name for name, _ in model.named_children()]
    suffixes = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    return (f"top-level modules: {', '.join(children) or '(none)'}; "
            f"Linear layers end in: {', '.join(suffixes) or '(none)'}")


def check_skip_patterns(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """`patterns` as a list, after checking that each one matches at least one module of `model` (transformers'
    matching rule, `_pattern_matches`). A pattern matching nothing is almost always a typo that would silently quantize
    the module the user meant to protect: `UserInputError` naming the modules that exist."""
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = [str(p) for p in patterns]
    names = [name for name, _ in unwrap_model(model).named_modules() if name]
    unmatched = []
    for pattern in patterns:
        if not pattern:
            raise UserInputError("skip_modules holds an empty name")
        try:
            hit = any(_pattern_matches(pattern, name) for name in names)
        except re.error as exc:
            raise UserInputError(f"skip_modules pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        if not hit:
            unmatched.append(pattern)
    if unmatched:
        raise UserInputError(
            f"skip_modules {unmatched} match no module of {type(unwrap_model(model)).__name__} (a name matches from "
            f"the start, e.g. 'bert.pooler', as a regex, or as a suffix, e.g. 'classifier'); {describe_modules(model)}"
        )
    return patterns


def is_skipped(name: str, patterns: Iterable[str]) -> bool:
    return any(_pattern_matches(p, name) for p in patterns)


def existing_quantization(config) -> str | None:
    """How `config` (a transformers config, or config.json as a dict) says its weights are already quantized, or
    None: a transformers ``quantization_config`` (bitsandbytes, GPTQ, ...) or hfcompress's torch int8 key."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    ours = get(CONFIG_KEY)
    if ours:
        method = ours.get("method", "?") if isinstance(ours, dict) else ours
        return f"hfcompress {method} ({CONFIG_KEY} in its config)"
    theirs = get("quantization_config")
    if theirs:
        if not isinstance(theirs, dict):
            theirs = theirs.to_dict() if hasattr(theirs, "to_dict") else {"quant_method": str(theirs)}
        method = theirs.get("quant_method", "?")
        bits = "4-bit" if theirs.get("load_in_4bit") else "8-bit" if theirs.get("load_in_8bit") else ""
        return f"{method} {bits}".strip() + " (quantization_config in its config)"
    return None


def _quantized_module_types() -> tuple[type, ...]:
    types: list[type] = []
    with _quiet_torch_ao():
        import torch.ao.nn.quantized as nnq
        import torch.ao.nn.quantized.dynamic as nnqd

        types += [nnqd.Linear, nnq.Linear, nnq.Embedding, nnq.EmbeddingBag]
    try:  # bitsandbytes is optional here: only look for its modules if it is already imported
        import sys

        if "bitsandbytes" in sys.modules:
            import bitsandbytes as bnb

            types += [bnb.nn.Linear4bit, bnb.nn.Linear8bitLt]
    except Exception:  # pragma: no cover
        pass
    return tuple(types)


def refuse_if_quantized(model: nn.Module, action: str = "quantize") -> None:
    """`UserInputError` if `model` already holds quantized modules or its config says so: quantizing quantized
    weights again compounds the error and breaks every checkpoint format involved."""
    model = unwrap_model(model)
    found = existing_quantization(getattr(model, "config", None) or {})
    if found is None:
        qtypes = _quantized_module_types()
        names = [n for n, m in model.named_modules() if isinstance(m, qtypes)]
        if names:
            first = model.get_submodule(names[0])
            found = f"{len(names)} quantized modules ({type(first).__name__} at {names[0]})"
    if found:
        raise UserInputError(f"cannot {action} {type(model).__name__}: it is already quantized, {found}. Quantizing "
                             "twice compounds the error: start from the full-precision model")


def replace_weight_files(tmp: str, directory: str) -> None:
    """Move every file of `tmp` into `directory`, weight files last, after removing weight files of an earlier save
    that this one does not overwrite: a reader never sees new weights beside an old config, nor old shards beside new
    ones."""
    os.makedirs(directory, exist_ok=True)
    written = set(os.listdir(tmp))
    pattern = re.compile("|".join(f"(?:{p})" for p in _WEIGHT_FILE_PATTERNS) + "$")
    for name in os.listdir(directory):
        if name not in written and pattern.match(name) and os.path.isfile(os.path.join(directory, name)):
            logger.info("Removing %s from %s: weights of an earlier save", name, directory)
            os.remove(os.path.join(directory, name))
    weights = {n for n in written if pattern.match(n)}
    for name in sorted(written, key=lambda n: n in weights):  # weights last
        src = os.path.join(tmp, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(directory, name), dirs_exist_ok=True)
        else:
            os.replace(src, os.path.join(directory, name))


@contextlib.contextmanager
def _quiet_torch_ao():
    """Silence the two warnings torch 2.13 raises on every eager-mode quantization call: "torch.ao.quantization is
    deprecated" (DeprecationWarning, once per call) and "quantized tensor creation functions ... are deprecated"
    (UserWarning, once per quantized weight). They say nothing a user of hfcompress can act on (the replacement,
    torchao ``quantize_``, is slower here) and would drown real warnings; this module docstring states the deprecation.
    Only these two messages, only inside our calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"(?s).*quantized tensor creation functions", category=UserWarning)
        yield


# --------------------------------------------------------------------------------------------------------------------
# quantization
# --------------------------------------------------------------------------------------------------------------------

def _input_embedding_name(model: nn.Module) -> str | None:
    """Name of the model's token-embedding table if it is a plain `nn.Embedding` whose weight no other module shares
    (a tied LM head must keep a float tensor)."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if get else None
    except (NotImplementedError, AttributeError):
        emb = None
    if type(emb) is not nn.Embedding:
        return None
    name = next((n for n, m in model.named_modules() if m is emb), None)
    sharers = [n for n, p in model.named_parameters(remove_duplicate=False) if p is emb.weight]
    if len(sharers) > 1:
        logger.info("Not quantizing the input embedding %s: its weight is shared with %s", name, sharers[1:])
        return None
    return name


def quantize_dynamic_int8(
    model: nn.Module,
    skip_modules: Iterable[str] | None = None,
    embeddings: bool = False,
    per_channel: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """`model` with its `nn.Linear` layers in dynamic int8 (`torch.ao.quantization.quantize_dynamic`), in eval mode.

    Args:
        skip_modules: module name patterns kept fp32 (transformers' matching rule: from the start, as a regex, or as a
            suffix). Default: the task head (`task_head_names`: BERT's ``classifier``, wav2vec2's ``projector`` and
            ``classifier``, ...). Given explicitly, it replaces that default (``[]`` quantizes the head too). A pattern
            matching no module is a `UserInputError`.
        embeddings: also quantize the input (token) embedding table, 8 bits per row with a float scale and offset
            per row (``float_qparams_weight_only_qconfig``).
        per_channel: one weight scale per output row instead of one per matrix.
        inplace: modify `model` itself instead of a copy (saves one model's worth of memory).

    The result records what was done in ``config.hfcompress_quantization``; save it with `save_dynamic_int8`.
    """
    model = unwrap_model(model)
    refuse_if_quantized(model)
    odd = {(str(p.device), p.dtype) for p in model.parameters() if p.is_floating_point()} - {("cpu", torch.float32)}
    if odd:
        raise UserInputError(f"torch dynamic int8 runs on CPU from float32 weights; {type(model).__name__} has "
                             f"parameters on/in {sorted(map(str, odd))}: call model.float().cpu() first")
    skip = task_head_names(model) if skip_modules is None else check_skip_patterns(model, skip_modules)
    with _quiet_torch_ao():
        from torch.ao.quantization import (
            default_dynamic_qconfig,
            float_qparams_weight_only_qconfig,
            per_channel_dynamic_qconfig,
            quantize_dynamic,
        )

        linear_qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        linears = [n for n, m in model.named_modules() if type(m) is nn.Linear and not is_skipped(n, skip)]
        spec: dict[str, object] = {n: linear_qconfig for n in linears}
        emb_names = []
        if embeddings:
            name = _input_embedding_name(model)
            if name is None:
                logger.warning("embeddings=True: %s has no unshared nn.Embedding input table; embeddings stay fp32",
                               type(model).__name__)
            elif is_skipped(name, skip):
                logger.info("embeddings=True: %s matches skip_modules, left fp32", name)
            else:
                emb_names.append(name)
                spec[name] = float_qparams_weight_only_qconfig
        if not spec:
            raise UserInputError(f"nothing to quantize in {type(model).__name__}: no nn.Linear outside skip_modules "
                                 f"{skip}; {describe_modules(model)}")
        if not inplace:
            model = copy.deepcopy(model)
        model.eval()
        quantize_dynamic(model, qconfig_spec=spec, dtype=torch.qint8, inplace=True)
    if hasattr(model, "config"):
        setattr(model.config, CONFIG_KEY, {
            "method": METHOD,
            "format_version": FORMAT_VERSION,
            "modules": linears,
            "embeddings": emb_names,
            "weight_qscheme": "per_channel" if per_channel else "per_tensor",
            "skip_modules": list(skip),
            "torch_version": torch.__version__.split("+")[0],
        })
    kept = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    logger.info("Dynamic int8 (%s weights): %d Linear layers%s quantized; kept fp32: %s", "per-channel" if per_channel
                else "per-tensor", len(linears), f" and embedding {emb_names[0]}" if emb_names else "", kept or "none")
    return model


# --------------------------------------------------------------------------------------------------------------------
# checkpoint format
# --------------------------------------------------------------------------------------------------------------------

def _quantized_modules(model: nn.Module) -> dict[str, tuple[str, nn.Module]]:
    """``{name: ("linear" | "embedding", module)}`` for torch's dynamic-quantized Linear and quantized Embedding."""
    with _quiet_torch_ao():
        import torch.ao.nn.quantized as nnq
        import torch.ao.nn.quantized.dynamic as nnqd
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nnqd.Linear):
            out[name] = ("linear", module)
        elif isinstance(module, nnq.Embedding):
            out[name] = ("embedding", module)
        elif isinstance(module, (nnq.Linear, nnq.EmbeddingBag)):
            raise UserInputError(f"{name} is a {type(module).__name__}: save_dynamic_int8 handles dynamic-quantized "
                                 "Linear and quantized Embedding modules only")
    return out


def _qweight_tensors(name: str, kind: str, qweight: torch.Tensor) -> dict[str, torch.Tensor]:
    key = "weight_int8" if kind == "linear" else "weight_uint8"
    scheme = qweight.qscheme()
    out = {f"{name}.{key}": qweight.int_repr().contiguous()}
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        out[f"{name}.weight_scale"] = torch.tensor(qweight.q_scale(), dtype=torch.float64)
        out[f"{name}.weight_zero_point"] = torch.tensor(qweight.q_zero_point(), dtype=torch.int64)
    else:
        if qweight.q_per_channel_axis() != 0:
            raise UserInputError(f"{name}: per-channel weight quantized along axis {qweight.q_per_channel_axis()}, "
                                 "only axis 0 (output rows) is supported")
        out[f"{name}.weight_scale"] = qweight.q_per_channel_scales().contiguous()
        out[f"{name}.weight_zero_point"] = qweight.q_per_channel_zero_points().contiguous()
    return out


def save_dynamic_int8(model: nn.Module, directory: str, tokenizer=None) -> str:
    """Save a model from `quantize_dynamic_int8` to `directory` (config.json, ``hfcompress_dynamic_int8.safetensors``,
    the tokenizer if given). Files land under their final names only once complete (written to a temporary folder
    beside `directory`, weights moved last). Loads with `load_dynamic_int8` only (hfcompress needed)."""
    from safetensors.torch import save_file

    model = unwrap_model(model)
    meta = getattr(getattr(model, "config", None), CONFIG_KEY, None)
    qmods = _quantized_modules(model)
    if not isinstance(meta, dict) or meta.get("method") != METHOD or not qmods:
        raise UserInputError(f"{type(model).__name__} is not a torch dynamic int8 model (no {CONFIG_KEY} method "
                             f"{METHOD!r} in its config, or no quantized modules): quantize it with "
                             "quantize_dynamic_int8 first")
    recorded = set(meta.get("modules", [])) | set(meta.get("embeddings", []))
    if recorded != set(qmods):
        raise UserInputError(f"{CONFIG_KEY} in the config lists {sorted(recorded - set(qmods))[:5]} as quantized "
                             f"and misses {sorted(set(qmods) - recorded)[:5]}: the model changed after "
                             "quantize_dynamic_int8")
    tensors: dict[str, torch.Tensor] = {}
    with _quiet_torch_ao():
        for name, (kind, module) in qmods.items():
            tensors.update(_qweight_tensors(name, kind, module.weight()))
            if kind == "linear" and module.bias() is not None:
                tensors[f"{name}.bias"] = module.bias().detach().contiguous()
    prefixes = tuple(f"{n}." for n in qmods)
    tied: dict[str, str] = {}
    first_key: dict[tuple, str] = {}
    for key, value in model.state_dict(keep_vars=False).items():
        if key.startswith(prefixes):
            continue
        if not isinstance(value, torch.Tensor) or value.is_quantized:
            raise UserInputError(f"{key} is not a plain tensor ({type(value).__name__}): save_dynamic_int8 cannot "
                                 "write it")
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), value.dtype)
        if value.numel() and ident in first_key:  # tied weights: written once, re-tied on load
            tied[key] = first_key[ident]
            continue
        first_key[ident] = key
        tensors[key] = value.detach().contiguous()
    config = copy.deepcopy(model.config)
    config.architectures = [plain_class_name(type(model).__name__)]  # HfcPrunedX -> X: the shape is in the config
    setattr(config, CONFIG_KEY, {**meta, "weights_file": WEIGHTS_NAME, "tied": tied})
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".hfc-save-") as tmp:
        config.save_pretrained(tmp)
        gen = getattr(model, "generation_config", None)
        if gen is not None and callable(getattr(model, "can_generate", None)) and model.can_generate():
            gen.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME),
                  metadata={"format": "pt", "hfcompress_method": METHOD, "format_version": str(FORMAT_VERSION)})
        replace_weight_files(tmp, directory)
    logger.info("Saved torch dynamic int8 %s to %s (%d quantized modules; loads with "
                "hfcompress.quantize.dynamic.load_dynamic_int8)", type(model).__name__, directory, len(qmods))
    return directory


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _dequant_spec(name: str, kind: str, state: dict[str, torch.Tensor], directory: str) -> torch.Tensor:
    key = f"{name}.weight_int8" if kind == "linear" else f"{name}.weight_uint8"
    missing = [k for k in (key, f"{name}.weight_scale", f"{name}.weight_zero_point") if k not in state]
    if missing:
        raise UserInputError(f"{directory}/{WEIGHTS_NAME} lacks {missing}: the file and config.json do not belong "
                             "together (save them with save_dynamic_int8)")
    values, scale, zero = state[key], state[f"{name}.weight_scale"], state[f"{name}.weight_zero_point"]
    if scale.dim() == 0:
        return torch._make_per_tensor_quantized_tensor(values, float(scale), int(zero))
    return torch._make_per_channel_quantized_tensor(values, scale, zero, 0)


def _skeleton(model_class, config) -> nn.Module:
    """A model of `config` whose parameters are on the meta device (no memory, no random init: every one of them comes
    from the checkpoint, by assignment) and whose buffers are real: non-persistent buffers such as BERT's
    ``position_ids`` are not in any checkpoint and are built by the modules' ``__init__``."""
    try:
        from accelerate import init_empty_weights

        empty = init_empty_weights(include_buffers=False)
    except ImportError:  # pragma: no cover - accelerate is a dependency; without it: allocate (more memory)
        empty = contextlib.nullcontext()
    with empty:
        if hasattr(model_class, "from_config"):
            return model_class.from_config(config)
        return model_class._from_config(config)


def load_dynamic_int8(directory: str, model_class=None) -> nn.Module:
    """The model `save_dynamic_int8` wrote to `directory`, in eval mode, with the same quantized modules and the same
    logits. `model_class` defaults to the transformers class named in config.json (``architectures``)."""
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoConfig

    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise UserInputError(f"{directory} holds no config.json: not a saved model folder")
    with open(path) as fh:
        raw = json.load(fh)
    meta = raw.get(CONFIG_KEY)
    if not isinstance(meta, dict) or meta.get("method") != METHOD:
        raise UserInputError(f"{directory}/config.json has no {CONFIG_KEY} with method {METHOD!r}: not a torch dynamic "
                             "int8 checkpoint (load it with from_pretrained)")
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise UserInputError(f"{directory} was written by a newer hfcompress (format {meta['format_version']}, this "
                             f"one reads {FORMAT_VERSION}): upgrade hfcompress")
    weights = os.path.join(directory, meta.get("weights_file", WEIGHTS_NAME))
    if not os.path.exists(weights):
        raise UserInputError(f"{directory} has no {os.path.basename(weights)}: the save did not complete")
    config = AutoConfig.from_pretrained(directory)
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        if not archs or not hasattr(transformers, archs[0]):
            raise UserInputError(f"{directory}/config.json names no known architecture ({archs}); pass model_class")
        model_class = getattr(transformers, archs[0])
    # a structurally pruned model (hfcompress_structure in its config) is built at its pruned shape
    model = _skeleton(shaped_class(config, model_class), config).eval()
    if os.path.exists(os.path.join(directory, "generation_config.json")) and hasattr(model, "generation_config"):
        from transformers import GenerationConfig  # e.g. Whisper's prompt, timestamp and alignment settings

        model.generation_config = GenerationConfig.from_pretrained(directory)
    state = load_file(weights)
    kinds = {n: "linear" for n in meta.get("modules", [])} | {n: "embedding" for n in meta.get("embeddings", [])}
    # float parameters first, into the fp32 skeleton (torch's quantized modules refuse a partial state dict);
    # assign=True makes the loaded tensors the parameters instead of copying them (one copy in memory, not two)
    quant_keys = {k for k in state if k.rsplit(".", 1)[0] in kinds}
    result = model.load_state_dict({k: v for k, v in state.items() if k not in quant_keys}, strict=False, assign=True)
    tied = meta.get("tied", {})
    prefixes = tuple(f"{n}." for n in kinds)
    missing = [k for k in result.missing_keys if not k.startswith(prefixes) and k not in tied]
    if missing or result.unexpected_keys:
        raise UserInputError(f"{directory}/{os.path.basename(weights)} does not match {model_class.__name__} built "
                             f"from its config: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    for alias, source in tied.items():
        owner, _, attr = alias.rpartition(".")
        src_owner, _, src_attr = source.rpartition(".")
        setattr(model.get_submodule(owner), attr, getattr(model.get_submodule(src_owner), src_attr))
    with _quiet_torch_ao():
        import torch.ao.nn.quantized as nnq
        import torch.ao.nn.quantized.dynamic as nnqd

        for name, kind in kinds.items():
            try:
                old = model.get_submodule(name)
            except AttributeError as exc:
                raise UserInputError(f"{directory}: quantized module {name} does not exist in {model_class.__name__} "
                                     "built from its config.json") from exc
            qweight = _dequant_spec(name, kind, state, directory)
            if kind == "linear":
                if not isinstance(old, nn.Linear) or tuple(qweight.shape) != (old.out_features, old.in_features):
                    raise UserInputError(f"{directory}: {name} is saved as int8 {tuple(qweight.shape)} but the config "
                                         f"builds {old}")
                bias = state.get(f"{name}.bias")
                new = nnqd.Linear(old.in_features, old.out_features, bias_=bias is not None, dtype=torch.qint8)
                new.set_weight_bias(qweight, bias)
            else:
                if not isinstance(old, nn.Embedding) or tuple(qweight.shape) != tuple(old.weight.shape):
                    raise UserInputError(f"{directory}: {name} is saved as {tuple(qweight.shape)} but the config "
                                         f"builds {old}")
                new = nnq.Embedding(old.num_embeddings, old.embedding_dim, dtype=torch.quint8)  # as from_float
                new.set_weight(qweight)
            _set_submodule(model, name, new)
            for key in [k for k in state if k.startswith(f"{name}.")]:
                del state[key]  # the packed weight holds its own copy
    del state
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if empty:
        raise UserInputError(f"{directory}: {len(empty)} tensors of {model_class.__name__} are in neither the "
                             f"checkpoint nor built by the model: {empty[:5]}")
    if hasattr(model, "config"):
        setattr(model.config, CONFIG_KEY, {k: v for k, v in meta.items() if k not in ("weights_file", "tied")})
    logger.info("Loaded torch dynamic int8 %s from %s (%d quantized modules)", model_class.__name__, directory,
                len(kinds))
    return model.eval()


def dynamic_int8_size_mb(directory: str) -> float:
    """Size of the weights of a `save_dynamic_int8` folder, in MB (10^6 bytes)."""
    from ..costs import folder_size_mb

    return folder_size_mb(directory)
