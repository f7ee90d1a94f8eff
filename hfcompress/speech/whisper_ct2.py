"""Whisper from a CTranslate2 ``model.bin`` (the faster-whisper format) to transformers, offline.

A CTranslate2 Whisper folder holds ``model.bin`` (the weights), ``config.json`` (suppress lists, alignment heads,
language ids), ``tokenizer.json`` (without the timestamp tokens) and often ``vocabulary.txt``. `convert_whisper_ct2`
turns it into a folder that `WhisperForConditionalGeneration.from_pretrained` and `WhisperProcessor.from_pretrained`
load offline: safetensors weights (float32), config, generation config, feature extractor and tokenizer.

The binary layout (little-endian; a *string* is a uint16 length counting a final NUL, then the bytes)::

    uint32 binary version (5 or 6) | string spec name | uint32 spec revision | uint32 number of variables
    per variable: string name | uint8 rank | rank x uint32 dims | uint8 dtype code | uint32 byte count | bytes
    uint32 number of aliases | per alias: string alias | string target variable

dtype codes: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16 (stored as the high 16 bits of a float32).

`read_ct2_model` / `write_ct2_model` are the reader and its inverse (the tests write tiny random Whispers with it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UserInputError
from ..files import write_bytes_atomic

logger = logging.getLogger(__name__)

SUPPORTED_BINARY_VERSIONS = (5, 6)
WHISPER_SPEC = "WhisperSpec"

# code -> (name, numpy storage dtype); bfloat16 is stored as uint16 (the high half of a float32)
CT2_DTYPES: dict[int, tuple[str, type]] = {
    0: ("float32", np.float32),
    1: ("int8", np.int8),
    2: ("int16", np.int16),
    3: ("int32", np.int32),
    4: ("float16", np.float16),
    5: ("bfloat16", np.uint16),
}
_CODE_OF_NUMPY = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
                  np.dtype(np.float16): 4, np.dtype(np.bool_): 1}

# CTranslate2's `Activation` enum -> transformers' `activation_function`
CT2_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu", 4: "quick_gelu", 5: "tanh"}

# Scalars of a Whisper spec that must hold these values for transformers' Whisper to compute the same function.
_REQUIRED_FLAGS = {"pre_norm": 1, "alibi": 0, "scale_embeddings": 0, "start_from_zero_embedding": 0}
_WEIGHT_SUFFIXES = ("weight", "bias", "gamma", "beta", "encodings", "weight_scale")

TIMESTAMP_PRECISION = 0.02  # seconds per timestamp token; <|0.00|> ... <|30.00|> is 1,501 tokens
SAMPLING_RATE = 16000
HOP_LENGTH = 160


class CT2Model(NamedTuple):
    spec_name: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


# --------------------------------------------------------------------------------------------------------------------
# binary format


class _Cursor:
    """Reads little-endian fields from a bytes buffer; a short read is a clear `UserInputError`."""

    def __init__(self, buf: bytes, path: str):
        self.buf, self.path, self.pos = buf, path, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise UserInputError(
                f"{self.path}: truncated or corrupted CTranslate2 file: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {len(self.buf)} bytes"
            )
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str):
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size, what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("H", f"length of {what}")
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise UserInputError(f"{self.path}: corrupted CTranslate2 file: {what} at offset {self.pos - n} is not "
                                 "NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserInputError(f"{self.path}: corrupted CTranslate2 file: {what} is not UTF-8 ({exc})") from None


def read_ct2_model(path: str | os.PathLike, expected_spec: str | None = None) -> CT2Model:
    """Read a CTranslate2 ``model.bin``: returns ``(spec_name, revision, variables, aliases)`` (a `CT2Model`).

    ``variables`` maps each name to a numpy array in its stored dtype (float16 stays float16; bfloat16 is returned
    as float32, exactly); rank-0 scalars are 0-d arrays. ``aliases`` maps an alias name to the variable it names.
    ``path`` may be the file or its folder. With ``expected_spec``, another spec name is an error.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise UserInputError(f"CTranslate2 model file not found: {path}")
    cur = _Cursor(path.read_bytes(), str(path))
    version = cur.unpack("I", "binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise UserInputError(f"{path}: CTranslate2 binary version {version} is not supported (expected one of "
                             f"{SUPPORTED_BINARY_VERSIONS}); is this a CTranslate2 model.bin?")
    spec = cur.string("spec name")
    if expected_spec is not None and spec != expected_spec:
        raise UserInputError(f"{path}: CTranslate2 spec is {spec!r}, expected {expected_spec!r}")
    revision = cur.unpack("I", "spec revision")
    count = cur.unpack("I", "number of variables")
    variables: dict[str, np.ndarray] = {}
    for i in range(count):
        name = cur.string(f"name of variable {i}")
        rank = cur.unpack("B", f"rank of {name}")
        dims = tuple(cur.unpack("I", f"dims of {name}") for _ in range(rank))
        code = cur.unpack("B", f"dtype of {name}")
        if code not in CT2_DTYPES:
            raise UserInputError(f"{path}: variable {name!r} has unknown dtype code {code} (known: "
                                 f"{ {k: v[0] for k, v in CT2_DTYPES.items()} })")
        nbytes = cur.unpack("I", f"byte count of {name}")
        dtype_name, np_dtype = CT2_DTYPES[code]
        expected = int(np.prod(dims, dtype=np.int64)) * np.dtype(np_dtype).itemsize
        if nbytes != expected:
            raise UserInputError(f"{path}: variable {name!r} ({dtype_name}, shape {list(dims)}) declares {nbytes} "
                                 f"bytes, expected {expected}: corrupted file")
        data = np.frombuffer(cur.take(nbytes, f"data of {name}"), dtype=np.dtype(np_dtype).newbyteorder("<"))
        array = data.astype(np.dtype(np_dtype).newbyteorder("="), copy=True).reshape(dims)
        if dtype_name == "bfloat16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        if name in variables:
            raise UserInputError(f"{path}: variable {name!r} appears twice: corrupted file")
        variables[name] = array
    aliases: dict[str, str] = {}
    n_aliases = cur.unpack("I", "number of aliases")
    for i in range(n_aliases):
        alias = cur.string(f"alias {i}")
        target = cur.string(f"target of alias {alias!r}")
        if target not in variables:
            raise UserInputError(f"{path}: alias {alias!r} names missing variable {target!r}")
        aliases[alias] = target
    if cur.pos != len(cur.buf):
        raise UserInputError(f"{path}: {len(cur.buf) - cur.pos} unexpected bytes after the alias section: "
                             "corrupted file")
    logger.debug("Read %s: binary version %d, %s revision %d, %d variables, %d aliases", path, version, spec,
                 revision, len(variables), len(aliases))
    return CT2Model(spec, revision, variables, aliases)


def _bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """float -> bfloat16 bits (uint16), round to nearest even."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return bits.astype(np.uint16)


def write_ct2_model(path: str | os.PathLike, variables: dict[str, np.ndarray], aliases: dict[str, str] | None = None,
                    spec: str = WHISPER_SPEC, revision: int = 3, version: int = 6,
                    float_dtype: str | None = None) -> str:
    """Write ``variables`` (name -> array or scalar) and ``aliases`` in the CTranslate2 binary format, atomically.

    Arrays keep their dtype (float32, float16, int8, int16, int32; bool as int8); ``float_dtype`` ("float32",
    "float16" or "bfloat16") recasts every floating-point array first. Returns the path written.
    """
    if float_dtype not in (None, "float32", "float16", "bfloat16"):
        raise UserInputError(f"float_dtype must be float32, float16 or bfloat16, not {float_dtype!r}")
    aliases = dict(aliases or {})
    out = bytearray()

    def string(s: str) -> None:
        raw = s.encode("utf-8") + b"\0"
        out.extend(struct.pack("<H", len(raw)))
        out.extend(raw)

    out.extend(struct.pack("<I", version))
    string(spec)
    out.extend(struct.pack("<II", revision, len(variables)))
    for name, value in variables.items():
        array = np.asarray(value)
        code = None
        if np.issubdtype(array.dtype, np.floating):
            if float_dtype == "bfloat16":
                array, code = _bfloat16_bits(array), 5
            elif float_dtype is not None:
                array = array.astype(float_dtype)
        if code is None:
            if array.dtype not in _CODE_OF_NUMPY:
                raise UserInputError(f"variable {name!r}: dtype {array.dtype} has no CTranslate2 code")
            code = _CODE_OF_NUMPY[array.dtype]
            if array.dtype == np.bool_:
                array = array.astype(np.int8)
        string(name)
        out.extend(struct.pack("<B", array.ndim))
        out.extend(struct.pack(f"<{array.ndim}I", *array.shape))
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        out.extend(struct.pack("<BI", code, len(raw)))
        out.extend(raw)
    out.extend(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        string(alias)
        string(target)
    return write_bytes_atomic(str(path), bytes(out))


# --------------------------------------------------------------------------------------------------------------------
# conversion


class _Variables:
    """Name lookup through the alias table, with float32 results (int8/int16 weights dequantized with their
    ``*_scale``) and a record of which stored variables were used."""

    def __init__(self, model: CT2Model, path: str):
        self.vars, self.aliases, self.path = model.variables, model.aliases, path
        self.used: set[str] = set()

    def resolve(self, name: str) -> str:
        return self.aliases.get(name, name)

    def has(self, name: str) -> bool:
        return self.resolve(name) in self.vars

    def raw(self, name: str) -> np.ndarray:
        real = self.resolve(name)
        if real not in self.vars:
            raise UserInputError(f"{self.path}: variable {name!r} is missing; not a complete Whisper model")
        self.used.add(real)
        return self.vars[real]

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        value = self.raw(name)
        real = self.resolve(name)
        if real + "_scale" in self.vars:  # CTranslate2 int8/int16 quantization: stored = round(w * scale)
            scale = self.raw(real + "_scale").astype(np.float32)
            if scale.size > 1:
                scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
            value = value.astype(np.float32) / scale
        elif not np.issubdtype(value.dtype, np.floating):
            raise UserInputError(f"{self.path}: variable {name!r} is {value.dtype} without a scale")
        value = value.astype(np.float32)
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise UserInputError(f"{self.path}: variable {name!r} has shape {list(value.shape)}, expected "
                                 f"{list(shape)}")
        return value

    def scalar(self, name: str, default=None):
        if not self.has(name):
            if default is None:
                raise UserInputError(f"{self.path}: scalar {name!r} is missing; not a complete Whisper model")
            return default
        value = self.raw(name)
        return value.reshape(-1)[0].item() if value.size else default

    def leftovers(self) -> tuple[list[str], list[str]]:
        """Unused variables: (weights, other scalars)."""
        unused = sorted(set(self.vars) - self.used)
        weights = [n for n in unused if n.rsplit("/", 1)[-1] in _WEIGHT_SUFFIXES
                   or (self.vars[n].ndim > 0 and np.issubdtype(self.vars[n].dtype, np.floating))]
        return weights, [n for n in unused if n not in weights]


def _num_layers(names, side: str, path: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(rf"{side}/layer_(\d+)/", n))}
    if not found:
        raise UserInputError(f"{path}: no {side} layers found (variables {side}/layer_N/...)")
    if found != set(range(len(found))):
        raise UserInputError(f"{path}: {side} layers are not numbered 0..{len(found) - 1}: {sorted(found)}")
    return len(found)


def _map_weights(v: _Variables, cfg) -> dict[str, np.ndarray]:
    """transformers parameter name -> float32 array, from the CTranslate2 variables."""
    d = cfg.d_model
    out: dict[str, np.ndarray] = {}

    def linear(ct2: str, hf: str, rows: int, cols: int) -> None:
        out[f"{hf}.weight"] = v.tensor(f"{ct2}/weight", (rows, cols))
        out[f"{hf}.bias"] = v.tensor(f"{ct2}/bias", (rows,))

    def norm(ct2: str, hf: str) -> None:
        out[f"{hf}.weight"] = v.tensor(f"{ct2}/gamma", (d,))
        out[f"{hf}.bias"] = v.tensor(f"{ct2}/beta", (d,))

    def fused(ct2: str, hf: str, parts: tuple[str, ...]) -> None:
        """Split a fused projection stacked on dim 0; k_proj has no bias in Whisper, so its bias slice is dropped
        (a constant added to every key shifts all of one query's scores equally: softmax ignores it)."""
        n = len(parts)
        weight = v.tensor(f"{ct2}/weight", (n * d, d))
        bias = v.tensor(f"{ct2}/bias", (n * d,))
        for i, part in enumerate(parts):
            out[f"{hf}.{part}.weight"] = weight[i * d:(i + 1) * d]
            if part == "k_proj":
                k_bias = bias[i * d:(i + 1) * d]
                if np.any(k_bias != 0):
                    logger.info("%s: dropping a non-zero key bias (max |b| %.3g); it does not change attention",
                                ct2, float(np.abs(k_bias).max()))
            else:
                out[f"{hf}.{part}.bias"] = bias[i * d:(i + 1) * d]

    for side in ("encoder", "decoder"):
        layers = cfg.encoder_layers if side == "encoder" else cfg.decoder_layers
        ffn = cfg.encoder_ffn_dim if side == "encoder" else cfg.decoder_ffn_dim
        positions = cfg.max_source_positions if side == "encoder" else cfg.max_target_positions
        out[f"model.{side}.embed_positions.weight"] = v.tensor(f"{side}/position_encodings/encodings", (positions, d))
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(layers):
            ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"))
            linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj", d, d)
            norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            if side == "decoder":
                linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj", d, d)
                fused(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", ("k_proj", "v_proj"))
                linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj", d, d)
                norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
            linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1", ffn, d)
            linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2", d, ffn)
            norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
    out["model.encoder.conv1.weight"] = v.tensor("encoder/conv1/weight", (d, cfg.num_mel_bins, 3))
    out["model.encoder.conv1.bias"] = v.tensor("encoder/conv1/bias", (d,))
    out["model.encoder.conv2.weight"] = v.tensor("encoder/conv2/weight", (d, d, 3))
    out["model.encoder.conv2.bias"] = v.tensor("encoder/conv2/bias", (d,))
    out["model.decoder.embed_tokens.weight"] = v.tensor("decoder/embeddings/weight", (cfg.vocab_size, d))
    if not cfg.tie_word_embeddings:
        out["proj_out.weight"] = v.tensor("decoder/projection/weight", (cfg.vocab_size, d))
    return out


def _load_strict(model, weights: dict[str, np.ndarray]) -> None:
    """Copy ``weights`` into ``model``: every parameter and buffer of its state dict exactly once (tied ones count
    once), no name unknown to the model, shapes equal."""
    import torch

    targets = model.state_dict(keep_vars=True)
    unknown = sorted(set(weights) - set(targets))
    if unknown:
        raise UserInputError(f"converted weights with no place in WhisperForConditionalGeneration: {unknown}")
    assigned: dict[int, str] = {}
    with torch.no_grad():
        for name, array in weights.items():
            target = targets[name]
            if tuple(target.shape) != array.shape:
                raise UserInputError(f"{name}: shape {list(array.shape)} does not fit the model's {list(target.shape)}")
            if id(target) in assigned:
                raise UserInputError(f"{name} is the same tensor as {assigned[id(target)]}: assigned twice")
            assigned[id(target)] = name
            target.copy_(torch.from_numpy(np.ascontiguousarray(array)))
    missing = sorted(n for n, t in targets.items() if id(t) not in assigned)
    if missing:
        raise UserInputError(f"model tensors that no CTranslate2 variable filled: {missing}")


def _timestamp_tokens(n: int) -> list[str]:
    return [f"<|{i * TIMESTAMP_PRECISION:.2f}|>" for i in range(n)]


def _build_tokenizer(ct2_dir: Path, vocab_size: int):
    """tokenizer.json of the CTranslate2 folder, completed with the timestamp tokens up to ``vocab_size``."""
    from tokenizers import AddedToken, Tokenizer

    path = ct2_dir / "tokenizer.json"
    if not path.is_file():
        raise UserInputError(f"{path} is missing: the tokenizer is needed to convert the model")
    tok = Tokenizer.from_file(str(path))
    have = tok.get_vocab_size(with_added_tokens=True)
    no_ts = tok.token_to_id("<|notimestamps|>")
    if no_ts is None:
        raise UserInputError(f"{path} has no <|notimestamps|> token: not a Whisper tokenizer")
    if tok.token_to_id("<|0.00|>") is None:
        missing = vocab_size - have
        if missing <= 0 or no_ts != have - 1:
            raise UserInputError(f"{path}: {have} tokens ending with id {no_ts} (<|notimestamps|>) cannot be completed "
                                 f"with timestamp tokens to the model's vocabulary of {vocab_size}")
        if missing != round(30 / TIMESTAMP_PRECISION) + 1:
            logger.warning("Adding %d timestamp tokens (Whisper has 1,501, <|0.00|> to <|30.00|>)", missing)
        tok.add_tokens([AddedToken(t, lstrip=False, rstrip=False, normalized=False, special=False)
                        for t in _timestamp_tokens(missing)])
        logger.info("Added timestamp tokens %s..%s (ids %d..%d)", "<|0.00|>", _timestamp_tokens(missing)[-1], have,
                    vocab_size - 1)
    if tok.get_vocab_size(with_added_tokens=True) != vocab_size:
        raise UserInputError(f"{path}: the tokenizer has {tok.get_vocab_size(with_added_tokens=True)} tokens, the "
                             f"model's vocabulary {vocab_size}")
    vocabulary = ct2_dir / "vocabulary.txt"
    if vocabulary.is_file():  # CTranslate2's own token list (byte-level strings), one a line: must agree id for id
        lines = vocabulary.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        bad = [i for i, t in enumerate(lines) if tok.id_to_token(i) != t]
        if len(lines) != vocab_size or bad:
            raise UserInputError(f"{vocabulary} disagrees with the tokenizer: {len(lines)} lines for {vocab_size} "
                                 f"tokens, first mismatches at ids {bad[:5]}")
    return tok


def _token_id(tok, token: str, required: bool = True) -> int | None:
    i = tok.token_to_id(token)
    if i is None and required:
        raise UserInputError(f"the tokenizer has no {token} token: not a Whisper tokenizer")
    return i


def _make_readable(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only files: give the result the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.rglob("*"):
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)


def convert_whisper_ct2(ct2_dir: str | os.PathLike, output_dir: str | os.PathLike, *, overwrite: bool = False,
                        multilingual: bool | None = None) -> str:
    """Convert a CTranslate2 Whisper folder (``model.bin``, ``tokenizer.json``, ``config.json``) into a transformers
    `WhisperForConditionalGeneration` + `WhisperProcessor` folder at ``output_dir`` (float32 safetensors).

    The architecture is read from the tensors; token ids from the tokenizer; suppress lists and alignment heads from
    ``config.json``. ``multilingual`` (default: vocabulary of 51,865 tokens or more, transformers' rule) decides
    whether the generation config carries ``lang_to_id``/``task_to_id``; an English-only model (``.en``) has neither
    and starts decoding with ``<|startoftranscript|><|notimestamps|>``. The folder is written to a temporary
    sibling and renamed at the end. Returns ``output_dir``.
    """
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    ct2_dir, output_dir = Path(ct2_dir), Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise UserInputError(f"{output_dir} exists and is not empty; pass overwrite=True to replace it")
    model_bin = ct2_dir / "model.bin"
    ct2 = read_ct2_model(model_bin, expected_spec=WHISPER_SPEC)
    v = _Variables(ct2, str(model_bin))

    package_cfg: dict = {}
    if (ct2_dir / "config.json").is_file():
        package_cfg = json.loads((ct2_dir / "config.json").read_text())
    else:
        logger.warning("%s has no config.json: the generation config gets no suppress lists or alignment heads",
                       ct2_dir)
    tok = _build_tokenizer(ct2_dir, vocab_size=v.raw("decoder/embeddings/weight").shape[0])

    # --- architecture from the tensors
    for side in ("encoder", "decoder"):
        for flag, want in _REQUIRED_FLAGS.items():
            got = v.scalar(f"{side}/{flag}", default=want)
            if int(got) != want:
                raise UserInputError(f"{model_bin}: {side}/{flag} is {got}, transformers' Whisper needs {want}")
    activation = int(v.scalar("decoder/activation", default=3))
    if activation not in CT2_ACTIVATIONS:
        raise UserInputError(f"{model_bin}: unknown activation code {activation}")
    conv1 = v.raw("encoder/conv1/weight")
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    names = list(ct2.variables)
    cfg_kwargs = dict(
        vocab_size=int(v.raw("decoder/embeddings/weight").shape[0]),
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=_num_layers(names, "encoder", str(model_bin)),
        decoder_layers=_num_layers(names, "decoder", str(model_bin)),
        encoder_attention_heads=int(v.scalar("encoder/num_heads")),
        decoder_attention_heads=int(v.scalar("decoder/num_heads")),
        encoder_ffn_dim=int(v.raw("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(v.raw("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(v.raw("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(v.raw("decoder/position_encodings/encodings").shape[0]),
        activation_function=CT2_ACTIVATIONS[activation],
        scale_embedding=False,
    )
    for side in ("encoder", "decoder"):
        heads = cfg_kwargs[f"{side}_attention_heads"]
        if heads <= 0 or d_model % heads:
            raise UserInputError(f"{model_bin}: {side}/num_heads {heads} does not divide d_model {d_model}")

    # tied output projection: an alias of the embeddings (or an equal copy)
    tied = True
    if v.has("decoder/projection/weight") and v.resolve("decoder/projection/weight") != "decoder/embeddings/weight":
        tied = bool(np.array_equal(v.raw("decoder/projection/weight"), v.raw("decoder/embeddings/weight")))
        logger.info("decoder/projection/weight is stored separately; %s", "equal to the embeddings: tied" if tied
                    else "untied")
    elif not v.has("decoder/projection/weight"):
        logger.info("no decoder/projection/weight: the output projection is tied to the embeddings")

    eot = _token_id(tok, "<|endoftext|>")
    sot = _token_id(tok, "<|startoftranscript|>")
    no_ts = _token_id(tok, "<|notimestamps|>")
    prev_sot = _token_id(tok, "<|startofprev|>", required=False)
    vocab_size = cfg_kwargs["vocab_size"]
    if multilingual is None:
        multilingual = vocab_size >= 51865
    suppress = [int(i) for i in package_cfg.get("suppress_ids", [])]
    begin_suppress = [int(i) for i in package_cfg.get("suppress_ids_begin", [])]
    bad = [i for i in suppress + begin_suppress if not 0 <= i < vocab_size]
    if bad:
        raise UserInputError(f"{ct2_dir / 'config.json'}: suppress ids {bad[:5]} outside the vocabulary of "
                             f"{vocab_size}")
    alignment_heads = [[int(a), int(b)] for a, b in package_cfg.get("alignment_heads", [])]

    config = WhisperConfig(
        **cfg_kwargs,
        pad_token_id=eot, bos_token_id=sot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=suppress, begin_suppress_tokens=begin_suppress, tie_word_embeddings=tied,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )
    weights = _map_weights(v, config)

    unused_weights, unused_other = v.leftovers()
    if unused_weights:
        raise UserInputError(f"{model_bin}: CTranslate2 weights that the conversion did not use: {unused_weights}")
    if unused_other:
        logger.info("CTranslate2 settings not needed by transformers: %s", ", ".join(unused_other))

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    model = model.to_empty(device="cpu").float()
    if tied:
        model.tie_weights()
        if model.proj_out.weight is not model.model.decoder.embed_tokens.weight:
            raise RuntimeError("transformers did not tie proj_out to the decoder embeddings")
    _load_strict(model, weights)
    model.eval()

    gen = dict(
        decoder_start_token_id=sot, bos_token_id=sot, eos_token_id=eot, pad_token_id=eot,
        max_length=config.max_target_positions, suppress_tokens=suppress, begin_suppress_tokens=begin_suppress,
        no_timestamps_token_id=no_ts, return_timestamps=False, max_initial_timestamp_index=50,
        is_multilingual=bool(multilingual),
    )
    if prev_sot is not None:
        gen["prev_sot_token_id"] = prev_sot
    if alignment_heads:
        gen["alignment_heads"] = alignment_heads
    if multilingual:
        lang_ids = [int(i) for i in package_cfg.get("lang_ids", [])]
        if not lang_ids:
            raise UserInputError(f"{ct2_dir / 'config.json'} has no lang_ids, needed for a multilingual model")
        gen["lang_to_id"] = {tok.id_to_token(i): i for i in lang_ids}
        gen["task_to_id"] = {t: _token_id(tok, f"<|{t}|>") for t in ("transcribe", "translate")}
        logger.info("multilingual Whisper: generate detects the language unless one is set "
                    "(hfcompress.arch.speech.set_transcription_language; hfcompress's own runs default to English)")
    model.generation_config = GenerationConfig(**gen)

    if config.max_source_positions * 2 * HOP_LENGTH != 30 * SAMPLING_RATE:
        logger.warning("max_source_positions %d: the feature extractor's 30 s window will not fit the encoder",
                       config.max_source_positions)
    feature_extractor = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLING_RATE,
                                                hop_length=HOP_LENGTH, chunk_length=30, n_fft=400, padding_value=0.0,
                                                return_attention_mask=False)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}-"))
    try:
        tok_dir = tmp / "_tokenizer"
        tok_dir.mkdir()
        tok.save(str(tok_dir / "tokenizer.json"))
        specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
        (tok_dir / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "WhisperTokenizer",
            "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "extra_special_tokens": [t for t in specials if t != "<|endoftext|>"],
            "add_prefix_space": False, "model_max_length": 1024, "predict_timestamps": False,
        }, indent=2))
        tokenizer = WhisperTokenizer.from_pretrained(str(tok_dir))
        for key in ("is_local", "local_files_only"):  # loading details, not tokenizer settings: keep them out
            tokenizer.init_kwargs.pop(key, None)
        if len(tokenizer) != vocab_size:
            raise RuntimeError(f"WhisperTokenizer loaded {len(tokenizer)} tokens, expected {vocab_size}")
        shutil.rmtree(tok_dir)
        WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(str(tmp))
        model.save_pretrained(str(tmp))
        _make_readable(tmp)
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}-old-"))
            os.replace(output_dir, old / "x")
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("Converted %s -> %s (%d+%d layers, d_model %d, %.1fM parameters, vocabulary %d)", ct2_dir, output_dir,
                config.encoder_layers, config.decoder_layers, d_model, n_params / 1e6, vocab_size)
    return str(output_dir)
