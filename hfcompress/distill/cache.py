"""Teacher-output caching: run the teacher once over a dataset and store its outputs in the rows.

Each row carries its own teacher logits (and, if asked, selected hidden states and the query/key/value of the
relation-distillation blocks, float16), so shuffling, batching and resuming keep them with their example. Because
the teacher reads its own `teacher_input_ids`, a teacher with a different tokenizer works: each model tokenizes the
raw text itself. The cache is saved with `save_to_disk` under a key of teacher + data + options + storage format; a
run that finds the same key (a second run, a resumed one) loads it.

Encoder-decoder teachers (Whisper) whose encoder the student shares, frozen: the encoder's output is what is cached
(`compute_encoder_outputs`, float16 `[frames, D]` per row; a 30 s Whisper window is 1,500 frames), so neither model
runs the encoder while training; the teacher's decoder still runs on the fly (its logits, `[tokens, vocabulary]` per
row, would be larger than the encoder output). The same pass can replace the labels by the teacher's greedy
transcripts (pseudo-labels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.compute as pc
import torch
from datasets import Dataset, Sequence, Value, load_from_disk
from tqdm.auto import tqdm

from ..errors import UserInputError
from ..files import write_json_atomic
from ..fingerprint import content_fingerprint
from .loss import (
    CACHED_ENCODER,
    CACHED_HIDDEN,
    CACHED_KEYS,
    CACHED_LOGITS,
    CACHED_QKV,
    TEACHER_PREFIX,
    is_span_output,
    logits_of,
)

logger = logging.getLogger(__name__)

CACHE_META = "teacher_cache.json"


# Version of the stored layout, part of the cache key: 2 = hidden states and q/k/v as float16 bytes per row.
CACHE_FORMAT = 2


def cache_key(
    teacher_name: str, dataset: Dataset, hidden_layers: list[int], input_prefix: str, relation_layers: list[int] | None = None,
    per_token: bool = False,
) -> str:
    blob = {"teacher": teacher_name, "data": content_fingerprint(dataset), "hidden": list(hidden_layers),
            "prefix": input_prefix, "format": CACHE_FORMAT}
    if relation_layers:
        blob["relation_qkv"] = list(relation_layers)
    if per_token:
        blob["per_token"] = True
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def encode_array(array) -> bytes:
    """A float16 array as bytes: int32 ndim, int32 shape, then the float16 data (C order). Decoding it is one
    `np.frombuffer`, where nested lists in an Arrow column take a Python object per number."""
    a = np.ascontiguousarray(array, dtype=np.float16)
    return np.asarray([a.ndim, *a.shape], dtype=np.int32).tobytes() + a.tobytes()


def decode_array(value) -> np.ndarray:
    """Inverse of `encode_array` (a read-only view of `value`). Nested lists (caches of older versions) are
    converted with `np.asarray`."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return np.asarray(value, dtype=np.float16)
    ndim = int(np.frombuffer(value, dtype=np.int32, count=1)[0])
    shape = np.frombuffer(value, dtype=np.int32, count=ndim, offset=4)
    return np.frombuffer(value, dtype=np.float16, offset=4 * (ndim + 1)).reshape(shape)


@dataclass
class CacheEstimate:
    """The bytes a teacher cache of `rows` rows will take on disk, by column group: the rows' own columns (token
    ids, labels, as stored in Arrow, plus the saved dataset's metadata files), the float32 logits, and the float16
    hidden states and relation q/k/v (each `layers x tokens x width x 2` bytes, plus per row its `encode_array`
    header and Arrow offset)."""

    rows: int
    tokens: int
    width: int
    hidden_layers: int
    relation_layers: int
    input_bytes: int
    logits_bytes: int
    hidden_bytes: int
    qkv_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.input_bytes + self.logits_bytes + self.hidden_bytes + self.qkv_bytes

    @property
    def logits_only_bytes(self) -> int:
        """The size of the same cache without hidden states and relations."""
        return self.input_bytes + self.logits_bytes

    def describe(self) -> str:
        parts = [f"{self.tokens:,} tokens"]
        if self.hidden_layers:
            parts.append(f"hidden states {_gb(self.hidden_bytes)}: {self.hidden_layers} layers x {self.width} wide")
        if self.relation_layers:
            parts.append(f"relation q/k/v {_gb(self.qkv_bytes)}: 3 x {self.relation_layers} blocks x {self.width} wide")
        parts.append(f"logits + inputs {_gb(self.logits_only_bytes)}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes, "logits_only_bytes": self.logits_only_bytes}


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


# Per row: an `encode_array` header (int32 ndim + 3 int32 dims) and an Arrow large_binary offset (int64).
_ARRAY_ROW_OVERHEAD = 4 * 4 + 8
# Per saved cache: `dataset_info.json`, `state.json` and the Arrow schema (about 2 KB; a few more rows' worth of
# buffer padding per record batch are ignored).
_SAVED_DATASET_OVERHEAD = 2048


def estimate_teacher_cache(
    dataset: Dataset,
    teacher_config,
    hidden_layers: list[int] | None = None,
    relation_layers: list[int] | None = None,
    input_prefix: str = "",
    batch_size: int = 10_000,
    per_token: bool = False,
) -> CacheEstimate:
    """What `compute_teacher_outputs` will write for `dataset`, from the real token lengths of its
    `{input_prefix}input_ids` (not `max_length`), the teacher's width and label count, and the layers asked for
    (`per_token`: logits for every token, a token classifier's). Reads the dataset in Arrow batches of `batch_size`
    rows (memory does not grow with the rows)."""
    import pyarrow.compute as pc

    from ..arch import get_adapter

    column = f"{input_prefix}input_ids"
    if column not in dataset.column_names:
        raise ValueError(f"dataset has no {column} column to estimate the teacher cache from: {dataset.column_names}")
    tokens = input_bytes = 0
    for table in dataset.with_format("arrow").iter(batch_size=batch_size):
        tokens += int(pc.sum(pc.list_value_length(table[column])).as_py() or 0)
        input_bytes += table.nbytes
    rows = len(dataset)
    width = int(get_adapter(teacher_config).hidden_size(teacher_config))
    n_hidden, n_rel = len(hidden_layers or []), len(relation_layers or [])
    token_bytes = width * 2  # float16

    def arrays(layers: int) -> int:
        return layers * tokens * token_bytes + rows * _ARRAY_ROW_OVERHEAD if layers else 0

    return CacheEstimate(
        rows=rows, tokens=tokens, width=width, hidden_layers=n_hidden, relation_layers=n_rel,
        input_bytes=int(input_bytes) + _SAVED_DATASET_OVERHEAD,
        # float32 lists + their int32 offsets (per token: one list of label scores per token)
        logits_bytes=((tokens if per_token else rows) * (4 * int(teacher_config.num_labels) + 4)
                      + (rows * 4 if per_token else 0)),
        hidden_bytes=arrays(n_hidden), qkv_bytes=arrays(3 * n_rel),
    )


# Left free on the cache's disk by the default limit.
DISK_MARGIN_BYTES = 2 * 1024**3


def default_cache_limit_bytes(cache_dir: str) -> int:
    """The largest cache the disk under `cache_dir` can take: half of its free space less a 2 GiB margin (the
    cache is written once, then copied into its folder by `save_to_disk`, so it needs twice its size meanwhile)."""
    folder = os.path.abspath(cache_dir)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return max(0, (shutil.disk_usage(folder).free - DISK_MARGIN_BYTES) // 2)


@torch.no_grad()
def compute_teacher_outputs(
    teacher: torch.nn.Module,
    dataset: Dataset,
    pad_fn,
    input_prefix: str = "",
    hidden_layers: list[int] | None = None,
    batch_size: int = 64,
    relation_layers: list[int] | None = None,
    cache_file_name: str | None = None,
    per_token: bool = False,
) -> Dataset:
    """Add `teacher_logits` (float32; `per_token`: a token classifier's, one list of label scores per real token,
    unpadded `[T_i, C]`, or an extractive QA model's start and end logits, `[T_i, 2]`) to `dataset`; for `hidden_layers`, `teacher_hidden_states` (float16, unpadded
    `[L, T_i, D]` per row); for `relation_layers` (1-based blocks), `teacher_relation_qkv` (float16, unpadded
    `[3 * len(relation_layers), T_i, D]` per row: query, key, value of each block in turn). Both are stored as
    `encode_array` bytes; `DistillationDataCollator` decodes and pads them.

    `pad_fn(list_of_features) -> dict of tensors` pads the teacher's inputs, read from the columns
    `{input_prefix}input_ids`, `{input_prefix}attention_mask` (and `token_type_ids` if present).

    The rows are written as they are computed (a batched `Dataset.map` that flushes every `batch_size` rows), to
    `cache_file_name` when given, so memory does not grow with the number of rows; without it, `map` keeps the result
    where the dataset lives (its cache folder, or memory for an in-memory dataset).
    """
    from ..arch import QKVCapture

    hidden_layers = list(hidden_layers or [])
    relation_layers = list(relation_layers or [])
    teacher.eval()
    device = next(teacher.parameters()).device
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if f"{input_prefix}{n}" in dataset.column_names]
    if "input_ids" not in names:
        raise ValueError(f"dataset has no {input_prefix}input_ids column to run the teacher on: {dataset.column_names}")
    features = dataset.features.copy()
    features[CACHED_LOGITS] = Sequence(Sequence(Value("float32"))) if per_token else Sequence(Value("float32"))
    for name, layers in ((CACHED_HIDDEN, hidden_layers), (CACHED_QKV, relation_layers)):
        if layers:
            features[name] = Value("large_binary")
    capture = QKVCapture(teacher, relation_layers) if relation_layers else None

    def run(rows: dict) -> dict:
        n = len(rows[f"{input_prefix}input_ids"])
        feats = [{k: rows[f"{input_prefix}{k}"][i] for k in names} for i in range(n)]
        batch = {k: v.to(device) for k, v in pad_fn(feats).items()}
        res = teacher(**batch, output_hidden_states=bool(hidden_layers) or None)
        lengths = batch["attention_mask"].sum(-1).tolist()
        logits = logits_of(res)
        if per_token and is_span_output(res):
            logits = logits.transpose(1, 2)  # start/end logits `[B, 2, T]` -> `[B, T, 2]`: one pair per position
        logits = logits.float().cpu().numpy()
        out = {CACHED_LOGITS: [logits[i, : lengths[i]].tolist() for i in range(n)] if per_token else logits.tolist()}
        if hidden_layers:
            stacked = torch.stack([res.hidden_states[j] for j in hidden_layers], 1).half().cpu().numpy()
            out[CACHED_HIDDEN] = [encode_array(stacked[i, :, : lengths[i]]) for i in range(n)]
        if capture is not None:
            qkv = capture.pop()
            stacked = torch.stack([x for b in relation_layers for x in qkv[b]], 1).half().cpu().numpy()
            out[CACHED_QKV] = [encode_array(stacked[i, :, : lengths[i]]) for i in range(n)]
        return out

    blob = json.dumps([dataset._fingerprint, hidden_layers, relation_layers, input_prefix, CACHE_FORMAT, per_token])
    # Rows of like length pad less (BoolQ pairs at 256 tokens: ~251 -> ~132 padded tokens a row, half the teacher's
    # work): the teacher runs over the rows longest first, and they are put back in their own order after.
    lengths = np.asarray(pc.list_value_length(dataset.with_format("arrow")[f"{input_prefix}input_ids"]))
    order = np.argsort(-lengths, kind="stable")
    try:
        computed = dataset.select(order).map(
            run, batched=True, batch_size=batch_size, writer_batch_size=batch_size, features=features,
            cache_file_name=cache_file_name, load_from_cache_file=False, desc="Caching teacher outputs",
            new_fingerprint=hashlib.sha256(blob.encode()).hexdigest()[:16],  # hashing the teacher would be slow
        )
        return computed.select(np.argsort(order))
    finally:
        if capture is not None:
            capture.remove()


def load_or_compute_teacher_cache(
    cache_dir: str,
    teacher_name: str,
    dataset: Dataset,
    teacher_loader,
    pad_fn,
    input_prefix: str = "",
    hidden_layers: list[int] | None = None,
    batch_size: int = 64,
    relation_layers: list[int] | None = None,
    teacher_config=None,
    max_bytes: int | None = None,
    per_token: bool = False,
) -> tuple[Dataset, dict]:
    """The cached dataset from `cache_dir` if its key matches, else compute it (loading the teacher lazily through
    `teacher_loader()`), save it atomically and return it. Returns `(dataset, metadata)`; `metadata["hidden_layers"]`
    and `metadata["relation_layers"]` say what the rows hold (pass them to `DistillationTrainer` as
    `cached_hidden_layers` / `cached_relation_layers`). `per_token`: the teacher is a token classifier, whose logits
    are cached for every token (`compute_teacher_outputs`).

    Before computing, the size is estimated (`estimate_teacher_cache`, from `teacher_config`, else the loaded
    teacher's) and logged in one line. When hidden states or relations are asked for and the estimate exceeds
    `max_bytes` (default: `default_cache_limit_bytes(cache_dir)`), only the logits are cached: then
    `metadata["online_terms"]` names what was left out (`DistillationLoss` computes those terms by running the
    teacher, which needs the teacher's inputs in the training rows), and one line says so."""
    if max_bytes is not None and max_bytes < 0:
        raise UserInputError(f"teacher cache limit (--cache_max_gb) must be 0 or more, got {max_bytes / 1e9:g} GB")
    hidden_layers = list(hidden_layers or [])
    relation_layers = list(relation_layers or [])
    key = cache_key(teacher_name, dataset, hidden_layers, input_prefix, relation_layers, per_token)
    reused = _load_if_key(cache_dir, key)
    if reused is not None:
        return reused
    teacher = None

    def load_teacher():
        nonlocal teacher
        if teacher is None:
            teacher = teacher_loader()
        return teacher

    estimate = estimate_teacher_cache(dataset, teacher_config or load_teacher().config, hidden_layers,
                                      relation_layers, input_prefix, per_token=per_token)
    limit = default_cache_limit_bytes(cache_dir) if max_bytes is None else int(max_bytes)
    limit_note = "--cache_max_gb" if max_bytes is not None else "half the free disk less 2 GiB"
    logger.info("teacher cache: ~%s estimated for %s rows (%s); limit %s (%s)", _gb(estimate.total_bytes),
                f"{estimate.rows:,}", estimate.describe(), _gb(limit), limit_note)
    online_terms = []
    if estimate.total_bytes > limit and (hidden_layers or relation_layers):
        online_terms = [t for t, layers in (("hidden_states", hidden_layers), ("relations", relation_layers)) if layers]
        logger.warning(
            "teacher cache: ~%s is over the limit of %s: caching logits only (~%s); %s computed by running the "
            "teacher online at every step", _gb(estimate.total_bytes), _gb(limit), _gb(estimate.logits_only_bytes),
            " and ".join(t.replace("_", " ") for t in online_terms),
        )
        hidden_layers, relation_layers = [], []
        key = cache_key(teacher_name, dataset, hidden_layers, input_prefix, relation_layers, per_token)

    def compute(workdir: str):
        t = load_teacher()
        cached = compute_teacher_outputs(t, dataset, pad_fn, input_prefix, hidden_layers, batch_size,
                                         relation_layers, cache_file_name=os.path.join(workdir, "rows.arrow"),
                                         per_token=per_token)
        meta = {"teacher": teacher_name, "hidden_layers": hidden_layers, "relation_layers": relation_layers,
                "per_token": per_token,
                "format": CACHE_FORMAT, "teacher_config": t.config.to_dict(), "num_rows": len(cached),
                "estimate": estimate.to_dict(), "limit_bytes": limit, "online_terms": online_terms}
        return cached, meta

    return _load_or_save(cache_dir, key, compute)


def _load_if_key(cache_dir: str, key: str) -> tuple[Dataset, dict] | None:
    """`(dataset, metadata)` saved in `cache_dir` under `key`, else None."""
    meta_path = os.path.join(cache_dir, CACHE_META)
    if not os.path.exists(meta_path):
        return None
    with open(meta_path) as fh:
        meta = json.load(fh)
    if meta.get("key") != key:
        logger.info("Teacher cache in %s has another key (%s != %s): recomputing", cache_dir, meta.get("key"), key)
        return None
    logger.info("Loading teacher cache from %s (key %s)", cache_dir, key)
    meta["reused"] = True
    return load_from_disk(os.path.join(cache_dir, "data")), meta


def _load_or_save(cache_dir: str, key: str, compute) -> tuple[Dataset, dict]:
    """The dataset saved in `cache_dir` under `key`, or `compute(workdir) -> (dataset, metadata)` saved there
    atomically (a temporary folder, `workdir`, renamed into place; what `compute` writes in `workdir` besides is
    removed) and loaded back. `metadata["reused"]` says which."""
    reused = _load_if_key(cache_dir, key)
    if reused is not None:
        return reused
    os.makedirs(os.path.dirname(os.path.abspath(cache_dir)), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(cache_dir)), prefix=".teacher-cache-")
    try:
        cached, meta = compute(tmp)
        meta = {"key": key, **meta}
        cached.save_to_disk(os.path.join(tmp, "data"))
        del cached
        for name in os.listdir(tmp):
            if name != "data":
                path = os.path.join(tmp, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        write_json_atomic(os.path.join(tmp, CACHE_META), meta)
        if os.path.exists(cache_dir):
            shutil.rmtree(cache_dir)
        os.replace(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta["reused"] = False
    return load_from_disk(os.path.join(cache_dir, "data")), meta


# ---- encoder-decoder teachers (Whisper): the frozen encoder's output and the teacher's transcripts --------------

ENCODER_CACHE_FORMAT = 1


@torch.no_grad()
def compute_encoder_outputs(
    model: torch.nn.Module,
    dataset: Dataset,
    features_fn,
    batch_size: int = 16,
    store_encoder: bool = True,
    pseudo_labels: dict | None = None,
) -> Dataset:
    """One pass of an encoder-decoder `model` over `dataset`: its encoder runs once per row.

    `features_fn(rows: dict of columns) -> input_features tensor` makes the encoder's input from a batch of rows.
    With `store_encoder`, each row gets `encoder_last_hidden_state`, the encoder's last hidden state (`[frames, D]`,
    float16 `encode_array` bytes; `SpeechSeq2SeqDistillationCollator` hands it to both models as `encoder_outputs`).
    With `pseudo_labels` (``{"prompt_ids": [...], "eos_token_id": E, "pad_token_id": P, **generate keyword
    arguments}``), the `labels` column is replaced by the model's own greedy transcript of the row, generated in the
    same pass (one encoder run; distil-whisper's pseudo-labels): the generated tokens after the decoder prompt
    (Whisper's `generate` returns them without it; a prompt it does return is cut), up to the first E or P, then E.
    """
    from datasets import Value

    model.eval()
    device = next(model.parameters()).device
    encoder = model.get_encoder()
    stored, labels = [], []
    gen = dict(pseudo_labels or {})
    prompt, eos = list(gen.pop("prompt_ids", [])), gen.pop("eos_token_id", None)
    pad = gen.pop("pad_token_id", eos)
    seen: list[torch.Tensor] = []
    # Whisper's `generate` decodes wrongly from given `encoder_outputs` (transformers 5.x: it takes the long-form path
    # and repeats tokens), so transcripts are generated from the features and the encoder's output is read on the way.
    hook = encoder.register_forward_hook(lambda module, args, output: seen.append(output.last_hidden_state))
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc="Caching encoder outputs" if store_encoder
                          else "Teacher transcripts"):
            rows = dataset[start : start + batch_size]
            features = features_fn(rows).to(device)
            seen.clear()
            if pseudo_labels is not None:
                out = model.generate(features, **gen)
                for seq in out.tolist():
                    seq = seq[len(prompt):] if prompt and seq[: len(prompt)] == prompt else seq
                    ends = [i for i, t in enumerate(seq) if t in (eos, pad)]
                    labels.append(seq[: ends[0] if ends else len(seq)] + [eos])
            else:
                encoder(features)
            if store_encoder:
                hidden = seen[0]
                if hidden.shape[0] != features.shape[0]:
                    raise RuntimeError(f"encoder output of {hidden.shape[0]} rows for a batch of {features.shape[0]}")
                stored.extend(encode_array(h) for h in hidden.half().cpu().numpy())
    finally:
        hook.remove()
    out = dataset
    if pseudo_labels is not None:
        out = out.remove_columns("labels").add_column("labels", labels)
    if store_encoder:
        out = out.add_column(CACHED_ENCODER, stored, feature=Value("large_binary"))
    return out


def load_or_compute_encoder_cache(
    cache_dir: str,
    teacher_name: str,
    dataset: Dataset,
    teacher_loader,
    features_fn,
    batch_size: int = 16,
    store_encoder: bool = True,
    pseudo_labels: dict | None = None,
    shard_batches: int = 8,
) -> tuple[Dataset, dict]:
    """`compute_encoder_outputs` of the teacher over `dataset`, saved in `cache_dir` and reused by a run with the same
    teacher, rows and options (a second or resumed run), like `load_or_compute_teacher_cache`.

    The pass is long (Whisper base's transcripts of 960 clips: 18 min on a 2-core CPU), so it is saved as it goes,
    `shard_batches` batches at a time, in ``<cache_dir>.partial``: a pass killed from outside and started again with
    the same key computes only the shards it had not saved, and ends with the rows of an uninterrupted pass (shards
    start on batch boundaries, so every batch is the one an uninterrupted pass makes).

    A pass for pseudo-labels alone (``store_encoder=False``: a student whose encoder differs, e.g. a shorter window) is
    served by a saved pass of the same teacher, rows and options that kept the encoder's outputs too: the transcripts
    are the same, so only its encoder column is dropped."""
    if shard_batches < 1:
        raise ValueError(f"shard_batches must be 1 or more, got {shard_batches}")
    fingerprint = content_fingerprint(dataset)

    def parts_of(encoder: bool) -> dict:
        return json.loads(json.dumps({"teacher": teacher_name, "data": fingerprint, "encoder": encoder,
                                      "pseudo_labels": pseudo_labels, "format": ENCODER_CACHE_FORMAT}, default=str))

    def key_of(encoder: bool) -> str:
        return hashlib.sha256(json.dumps(parts_of(encoder), sort_keys=True).encode()).hexdigest()[:16]

    key = key_of(store_encoder)
    _log_key_difference(cache_dir, parts_of(store_encoder))
    if pseudo_labels is not None and not store_encoder:
        fuller = _load_if_key(cache_dir, key_of(True))
        if fuller is not None:
            data, meta = fuller
            logger.info("Pseudo-labels read from the encoder-output pass cached in %s", cache_dir)
            return data.remove_columns(CACHED_ENCODER), {**meta, "encoder_outputs": False,
                                                         "read_from_encoder_pass": True}
    partial_dir = os.path.normpath(os.path.abspath(cache_dir)) + ".partial"
    teacher = None

    def rows(start: int, stop: int) -> Dataset:
        nonlocal teacher
        if teacher is None:
            teacher = teacher_loader()
        return compute_encoder_outputs(teacher, dataset.select(range(start, stop)), features_fn, batch_size,
                                       store_encoder, pseudo_labels)

    def compute(workdir: str):
        cached = _compute_in_shards(partial_dir, key, len(dataset), batch_size * shard_batches, rows)
        return cached, {"teacher": teacher_name, "encoder_outputs": store_encoder,
                        "pseudo_labels": pseudo_labels is not None, "format": ENCODER_CACHE_FORMAT,
                        "num_rows": len(cached), "key_parts": parts_of(store_encoder)}

    result = _load_or_save(cache_dir, key, compute)
    shutil.rmtree(partial_dir, ignore_errors=True)  # the whole cache is saved: its shards are not needed
    return result


def _log_key_difference(cache_dir: str, parts: dict) -> None:
    """Say which of the key's parts (teacher, data, options) differ from the cache saved in `cache_dir`, so a
    recomputation of a long pass is explained, not only announced."""
    try:
        with open(os.path.join(cache_dir, CACHE_META)) as fh:
            saved = json.load(fh).get("key_parts")
    except (OSError, ValueError):
        return
    if not saved:
        return
    differ = {k: (saved.get(k), v) for k, v in parts.items() if saved.get(k) != v and k != "encoder"}
    if differ:
        logger.info("The cache in %s was made with another %s: %s", cache_dir, ", ".join(sorted(differ)), differ)


_PARTIAL_META = "partial.json"


def _compute_in_shards(partial_dir: str, key: str, num_rows: int, shard_rows: int, compute_rows) -> Dataset:
    """`compute_rows(start, stop) -> Dataset` over rows ``[0, num_rows)`` in shards of `shard_rows`, each saved in
    `partial_dir` (atomically: written beside, then renamed) as soon as it is computed; shards saved there before
    under the same `key` and shard size are loaded instead of computed. Returns the shards concatenated, in order."""
    from datasets import concatenate_datasets

    meta_path = os.path.join(partial_dir, _PARTIAL_META)
    want = {"key": key, "shard_rows": shard_rows, "num_rows": num_rows}
    if os.path.isdir(partial_dir):
        try:
            with open(meta_path) as fh:
                found = json.load(fh)
        except (OSError, ValueError):
            found = None
        if found != want:
            logger.info("Partial cache in %s is of another pass (%s): starting over", partial_dir, found)
            shutil.rmtree(partial_dir)
    os.makedirs(partial_dir, exist_ok=True)
    write_json_atomic(meta_path, want)
    starts = list(range(0, num_rows, shard_rows))
    if not starts:
        return compute_rows(0, 0)
    paths = [os.path.join(partial_dir, f"shard-{i:05d}") for i in range(len(starts))]
    saved = sum(os.path.isdir(p) for p in paths)
    if saved:
        logger.info("Resuming the pass from %s: %d of %d shards (%d rows each) already saved", partial_dir, saved,
                    len(starts), shard_rows)
    shards = []
    for start, path in zip(starts, paths):
        if not os.path.isdir(path):
            part = compute_rows(start, min(start + shard_rows, num_rows))
            tmp = path + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            part.save_to_disk(tmp)
            os.replace(tmp, path)
        shards.append(load_from_disk(path))
    return concatenate_datasets(shards) if len(shards) > 1 else shards[0]


def drop_teacher_inputs(dataset: Dataset) -> Dataset:
    """Once outputs are cached, the teacher's own token columns are dead weight."""
    cols = [c for c in dataset.column_names if c.startswith(TEACHER_PREFIX) and c not in CACHED_KEYS]
    return dataset.remove_columns(cols) if cols else dataset
