"""Teacher-output caching: run the teacher once over a dataset and store its outputs in the rows.

Each row carries its own teacher logits (and, if asked, selected hidden states), so shuffling, batching and
resuming keep them with their example. Because the teacher reads its own `teacher_input_ids`, a teacher with a
different tokenizer works: each model tokenizes the raw text itself. The cache is saved with `save_to_disk`
under a key of teacher + data + options; a run that finds the same key (a second run, a resumed one) loads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import torch
from datasets import Dataset, Sequence, Value, load_from_disk
from tqdm.auto import tqdm

from ..data import content_fingerprint
from .loss import CACHED_HIDDEN, CACHED_LOGITS, TEACHER_PREFIX

logger = logging.getLogger(__name__)

CACHE_META = "teacher_cache.json"


def cache_key(teacher_name: str, dataset: Dataset, hidden_layers: list[int], input_prefix: str) -> str:
    blob = json.dumps(
        {"teacher": teacher_name, "data": content_fingerprint(dataset), "hidden": list(hidden_layers), "prefix": input_prefix},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def compute_teacher_outputs(
    teacher: torch.nn.Module,
    dataset: Dataset,
    pad_fn,
    input_prefix: str = "",
    hidden_layers: list[int] | None = None,
    batch_size: int = 64,
) -> Dataset:
    """Add `teacher_logits` (float32) and, for `hidden_layers`, `teacher_hidden_states` (float16, unpadded
    `[L, T_i, D]` per row) to `dataset`.

    `pad_fn(list_of_features) -> dict of tensors` pads the teacher's inputs, read from the columns
    `{input_prefix}input_ids`, `{input_prefix}attention_mask` (and `token_type_ids` if present).
    """
    hidden_layers = list(hidden_layers or [])
    teacher.eval()
    device = next(teacher.parameters()).device
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if f"{input_prefix}{n}" in dataset.column_names]
    if "input_ids" not in names:
        raise ValueError(f"dataset has no {input_prefix}input_ids column to run the teacher on: {dataset.column_names}")
    logits_out: list[np.ndarray] = []
    hidden_out: list[list] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="Caching teacher outputs"):
        rows = dataset[start : start + batch_size]
        feats = [{n: rows[f"{input_prefix}{n}"][i] for n in names} for i in range(len(rows[f"{input_prefix}input_ids"]))]
        batch = {k: v.to(device) for k, v in pad_fn(feats).items()}
        res = teacher(**batch, output_hidden_states=bool(hidden_layers) or None)
        logits_out.extend(res.logits.float().cpu().numpy())
        if hidden_layers:
            lengths = batch["attention_mask"].sum(-1).tolist()
            stacked = torch.stack([res.hidden_states[j] for j in hidden_layers], 1).half().cpu().numpy()
            hidden_out.extend(stacked[i, :, : lengths[i]] for i in range(len(lengths)))
    out = dataset.add_column(CACHED_LOGITS, [x.tolist() for x in logits_out], feature=Sequence(Value("float32")))
    if hidden_layers:
        out = out.add_column(
            CACHED_HIDDEN,
            [x.tolist() for x in hidden_out],
            feature=Sequence(Sequence(Sequence(Value("float16")))),
        )
    return out


def load_or_compute_teacher_cache(
    cache_dir: str,
    teacher_name: str,
    dataset: Dataset,
    teacher_loader,
    pad_fn,
    input_prefix: str = "",
    hidden_layers: list[int] | None = None,
    batch_size: int = 64,
) -> tuple[Dataset, dict]:
    """The cached dataset from `cache_dir` if its key matches, else compute it (loading the teacher lazily through
    `teacher_loader()`), save it atomically and return it. Returns `(dataset, metadata)`."""
    hidden_layers = list(hidden_layers or [])
    key = cache_key(teacher_name, dataset, hidden_layers, input_prefix)
    meta_path = os.path.join(cache_dir, CACHE_META)
    if os.path.exists(meta_path):
        with open(meta_path) as fh:
            meta = json.load(fh)
        if meta.get("key") == key:
            logger.info("Loading teacher cache from %s (key %s)", cache_dir, key)
            meta["reused"] = True
            return load_from_disk(os.path.join(cache_dir, "data")), meta
        logger.info("Teacher cache in %s has another key (%s != %s): recomputing", cache_dir, meta.get("key"), key)
    teacher = teacher_loader()
    cached = compute_teacher_outputs(teacher, dataset, pad_fn, input_prefix, hidden_layers, batch_size)
    meta = {
        "key": key,
        "teacher": teacher_name,
        "hidden_layers": hidden_layers,
        "teacher_config": teacher.config.to_dict(),
        "num_rows": len(cached),
    }
    os.makedirs(os.path.dirname(os.path.abspath(cache_dir)), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(cache_dir)), prefix=".teacher-cache-")
    cached.save_to_disk(os.path.join(tmp, "data"))
    with open(os.path.join(tmp, CACHE_META), "w") as fh:
        json.dump(meta, fh, indent=2)
    if os.path.exists(cache_dir):
        shutil.rmtree(cache_dir)
    os.replace(tmp, cache_dir)
    meta["reused"] = False
    return load_from_disk(os.path.join(cache_dir, "data")), meta


def drop_teacher_inputs(dataset: Dataset) -> Dataset:
    """Once outputs are cached, the teacher's own token columns are dead weight."""
    cols = [c for c in dataset.column_names if c.startswith(TEACHER_PREFIX) and c not in (CACHED_LOGITS, CACHED_HIDDEN)]
    return dataset.remove_columns(cols) if cols else dataset
