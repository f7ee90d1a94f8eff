"""Datasets for text classification: the embedded Rotten Tomatoes default, local files, or Hub ids.

Every loader returns a `datasets.DatasetDict` with `train`/`validation`/`test` splits; the label column is a
`ClassLabel` so label names travel with the data and can be checked against a model's `id2label`.
"""

from __future__ import annotations

import bz2
import csv
import io
import logging
import os

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

from .assets import asset_path, canonical_name

logger = logging.getLogger(__name__)

ROTTEN_TOMATOES_LABELS = ["rotten", "fresh"]  # 0 = negative, 1 = positive, as in the Hub's rotten_tomatoes


def stratified_split(
    labels: np.ndarray, validation_size: float, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a stratified train/validation/test split, deterministic for a seed."""
    if not (0 <= validation_size < 1 and 0 <= test_size < 1 and validation_size + test_size < 1):
        raise ValueError(
            f"validation_size and test_size must be in [0, 1) and sum below 1, got {validation_size} and {test_size}"
        )
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * validation_size))
        n_test = int(round(len(idx) * test_size))
        val.append(idx[:n_val])
        test.append(idx[n_val : n_val + n_test])
        train.append(idx[n_val + n_test :])
    # Sorted within a split so the order does not depend on the class loop; the Trainer shuffles train itself.
    return tuple(np.sort(np.concatenate(part)) for part in (train, val, test))  # type: ignore[return-value]


def load_rotten_tomatoes(seed: int = 42, validation_size: float = 0.1, test_size: float = 0.1) -> DatasetDict:
    """The offline Rotten Tomatoes corpus: fresh/rotten snippets, duplicates dropped, stratified split.

    12,752 unique snippets (7,368 fresh / 5,384 rotten). With the defaults: 10,202 train, 1,275 validation,
    1,275 test.
    """
    path = asset_path("rotten-tomatoes")
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        reader = csv.DictReader(io.StringIO(fh.read()))
        texts, labels, seen = [], [], set()
        for row in reader:
            cat, text = row["category"], row["text"].strip()
            if cat not in ROTTEN_TOMATOES_LABELS or not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(ROTTEN_TOMATOES_LABELS.index(cat))
    labels_arr = np.asarray(labels)
    features = Features({"text": Value("string"), "label": ClassLabel(names=ROTTEN_TOMATOES_LABELS)})
    full = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    tr, va, te = stratified_split(labels_arr, validation_size, test_size, seed)
    return DatasetDict(train=full.select(tr), validation=full.select(va), test=full.select(te))


def load_text_classification(
    name_or_path: str = "rotten-tomatoes",
    text_column: str = "text",
    label_column: str = "label",
    seed: int = 42,
    validation_size: float = 0.1,
    test_size: float = 0.1,
) -> DatasetDict:
    """Load a text-classification dataset from the embedded default, a local file/folder, or a Hub id.

    Missing validation/test splits are carved out of train (stratified). The columns are checked here, before any
    model is built, so a wrong column name fails with one message that lists what the data has.
    """
    if canonical_name(name_or_path) == "rotten-tomatoes" and not os.path.exists(name_or_path):
        dsd = load_rotten_tomatoes(seed=seed, validation_size=validation_size, test_size=test_size)
    else:
        if os.path.isfile(name_or_path):
            ext = os.path.splitext(name_or_path)[1].lstrip(".").replace("jsonl", "json")
            raw = load_dataset(ext, data_files=name_or_path)
        elif os.path.isdir(name_or_path) and os.path.exists(os.path.join(name_or_path, "dataset_dict.json")):
            from datasets import load_from_disk

            raw = load_from_disk(name_or_path)
        else:
            raw = load_dataset(name_or_path)
        if isinstance(raw, Dataset):
            raw = DatasetDict(train=raw)
        first = next(iter(raw.values()))
        if label_column in first.column_names and first.features[label_column] == Value("string"):
            # String labels become a ClassLabel (names sorted), so names are checked against the models' id2label.
            raw = raw.class_encode_column(label_column)
        dsd = _ensure_splits(raw, label_column, seed, validation_size, test_size)
    validate_columns(dsd, text_column, label_column)
    return dsd


def _ensure_splits(raw: DatasetDict, label_column: str, seed: int, validation_size: float, test_size: float) -> DatasetDict:
    if "train" not in raw:
        raise ValueError(f"dataset has no 'train' split; splits: {list(raw)}")
    out = dict(raw)
    if "validation" not in out and "dev" in out:
        out["validation"] = out.pop("dev")
    missing_val, missing_test = "validation" not in out, "test" not in out
    if missing_val or missing_test:
        train = out["train"]
        if label_column not in train.column_names:
            raise ValueError(
                f"label column {label_column!r} not found in the dataset; columns: {train.column_names}"
            )
        labels = np.asarray(train[label_column])
        tr, va, te = stratified_split(
            labels, validation_size if missing_val else 0.0, test_size if missing_test else 0.0, seed
        )
        out["train"] = train.select(tr)
        if missing_val:
            out["validation"] = train.select(va)
        if missing_test:
            out["test"] = train.select(te)
    return DatasetDict(out)


def validate_columns(dsd: DatasetDict, text_column: str, label_column: str | None) -> None:
    for split, ds in dsd.items():
        cols = ds.column_names
        for role, col in (("text", text_column), ("label", label_column)):
            if col is not None and col not in cols:
                raise ValueError(f"{role} column {col!r} not found in split {split!r}; columns are {cols}")


def label_names(dataset: Dataset | DatasetDict, label_column: str = "label") -> list[str] | None:
    """Names of the classes if the label column is a ClassLabel, else None."""
    ds = next(iter(dataset.values())) if isinstance(dataset, DatasetDict) else dataset
    feat = ds.features.get(label_column)
    return list(feat.names) if isinstance(feat, ClassLabel) else None


def num_labels(dataset: Dataset | DatasetDict, label_column: str = "label") -> int:
    names = label_names(dataset, label_column)
    if names is not None:
        return len(names)
    ds = dataset["train"] if isinstance(dataset, DatasetDict) else dataset
    return int(max(ds[label_column])) + 1


def tokenize(
    dataset: Dataset | DatasetDict,
    tokenizer,
    text_column: str = "text",
    max_length: int = 128,
    prefix: str = "",
):
    """Tokenize `text_column` (no padding: the collator pads per batch). With `prefix="teacher_"` the outputs are
    stored as `teacher_input_ids`/`teacher_attention_mask`, so a teacher with another tokenizer reads its own ids.
    """

    def fn(batch):
        enc = tokenizer(batch[text_column], truncation=True, max_length=max_length)
        return {f"{prefix}{k}": v for k, v in enc.items()}

    return dataset.map(fn, batched=True, desc=f"Tokenizing{' for ' + prefix.rstrip('_') if prefix else ''}")


def content_fingerprint(dataset: Dataset) -> str:
    """A hash of a dataset's rows and features. Used to key caches of work done on a dataset: equal content gives
    an equal key whatever chain of transforms produced it (`Dataset._fingerprint` follows the transform history)."""
    import hashlib

    import pyarrow as pa

    h = hashlib.sha256(str(dataset.features).encode())
    table = dataset.with_format("arrow")[:]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()[:16]
