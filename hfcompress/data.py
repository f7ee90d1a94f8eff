"""Datasets for text classification: the embedded Rotten Tomatoes default, local files, or Hub ids.

Every loader returns a `datasets.DatasetDict` with `train`/`validation`/`test` splits. Class names become a
`ClassLabel` so they travel with the data and can be checked against a model's `id2label`.

Users' own data (`load_text_classification`), accepted as:

- one file: `.csv`, `.tsv`, `.json`, `.jsonl` (JSON Lines) or `.parquet`; it is the train split;
- a folder of split files named `train`, `validation` (or `dev`/`valid`/`val`) and `test`, with any of those
  extensions (`train.csv`, `dev.jsonl`, `test-00000-of-00001.parquet`); files in split-named subfolders
  (`train/part0.csv`) or in a `data/` subfolder are found too;
- a folder written by `DatasetDict.save_to_disk` (or `Dataset.save_to_disk`: then it is the train split);
- otherwise a Hub dataset id.

CSV/TSV cells are read as written: only an empty cell is missing (`NA`, `null`, `None` stay text). Both use the
usual CSV quoting (what Python's `csv` and pandas write): a cell that starts with `"` must be a quoted cell.

Policy on incomplete rows: a row whose text is missing, empty or only whitespace, or whose label is missing, is
DROPPED, with one `logging` warning per split that says how many rows went and from which file. A split left
with no rows is an error. Every other problem with the user's data (a missing file, an empty file, a wrong
column, a class the train split lacks, a single class, float labels) raises `UserInputError` with one message
naming the argument or file, what was found and what was expected.
"""

from __future__ import annotations

import bz2
import csv
import io
import logging
import os
import re

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

from .assets import asset_path, canonical_name, resolve_data_path
from .errors import UserInputError
from .fingerprint import content_fingerprint  # noqa: F401  (here before it moved to the ground floor)

logger = logging.getLogger(__name__)

ROTTEN_TOMATOES_LABELS = ["rotten", "fresh"]  # 0 = negative, 1 = positive, as in the Hub's rotten_tomatoes


def stratified_split(
    labels: np.ndarray, validation_size: float, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a stratified train/validation/test split, deterministic for a seed."""
    if not (0 <= validation_size < 1 and 0 <= test_size < 1 and validation_size + test_size < 1):
        raise UserInputError(
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
    text_pair_column: str | None = None,
) -> DatasetDict:
    """Load a text-classification dataset from the embedded default, a local file/folder, or a Hub id.

    `text_pair_column` (sentence pairs: question/passage, premise/hypothesis): a second text column, checked like the
    first (present in every split, strings); a row whose second text is missing or empty is dropped too.

    Missing validation/test splits are carved out of train (stratified, seeded by `seed`). Everything that can be
    wrong with the data is checked here, before any model is built, and raises `UserInputError` (see the module
    docstring for the accepted layouts and the dropped-rows policy).

    Labels:

    - class names (a string column, `Value("string")` or `Value("large_string")`, surrounding whitespace ignored)
      become a `ClassLabel` whose names are the train split's classes, sorted; every split is encoded with those
      same names in the same order. A class in validation/test that train lacks is an error.
    - integers stay plain integers (no `ClassLabel`): they are ids 0..K-1 with K = the largest train id + 1, so
      a teacher's own `id2label` names still apply. Negative ids, and ids in validation/test that train lacks,
      are errors. (A CSV integer column with empty cells reads as floats: whole-number floats count as ids.)
    - an existing `ClassLabel` (a saved or Hub dataset) keeps its names; -1 means unlabelled (row dropped).
    - booleans (JSON true/false; pandas reads a CSV column of True/False so) are class names "False"/"True".
    - anything else (fractional floats, i.e. regression targets; lists) is an error.

    The train split needs at least 2 classes.
    """
    if canonical_name(name_or_path) == "rotten-tomatoes" and not os.path.exists(name_or_path):
        dsd = load_rotten_tomatoes(seed=seed, validation_size=validation_size, test_size=test_size)
    else:
        raw, sources = _read_raw(name_or_path)
        raw = _prepare_splits(raw, sources, text_column, label_column, text_pair_column)
        dsd = _ensure_splits(raw, label_column, seed, validation_size, test_size)
        for split, size in (("validation", validation_size), ("test", test_size)):
            if split not in raw and size > 0 and len(dsd[split]) == 0:
                raise UserInputError(
                    f"dataset {name_or_path!r}: carving a {size:.0%} {split} split out of train's "
                    f"{len(raw['train'])} rows left it empty; expected enough rows per class (or a {split} file)"
                )
    validate_columns(dsd, text_column, label_column, text_pair_column)
    return dsd


_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "dev": "validation", "valid": "validation",
                  "val": "validation", "test": "test"}
_EXTS_TEXT = ", ".join(_FORMATS)


def _root_cause(exc: BaseException) -> str:
    """The innermost exception of a chain, as `Type: message` (datasets wraps the useful one many frames down)."""
    seen = set()
    while id(exc) not in seen and (exc.__cause__ or exc.__context__) is not None:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


def _looks_like_file(name: str) -> bool:
    """A name with a file extension (`data.csv`, `news.txt`) or a path shape no Hub id has."""
    ext = os.path.splitext(name)[1][1:]
    return (
        (0 < len(ext) <= 8 and ext.isalpha())
        or os.path.isabs(name)
        or name.startswith((".", "~"))
        or name.count("/") > 1
        or "\\" in name
    )


def _read_raw(name_or_path: str) -> tuple[dict[str, Dataset], dict[str, str]]:
    """The splits as found (split -> Dataset, split names not yet normalised) and where each came from."""
    path = os.path.expanduser(resolve_data_path(name_or_path))  # an offline data asset's name: its file
    if os.path.isfile(path):
        return {"train": _read_files([path])}, {"train": f"file {path}"}
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")):
            from datasets import load_from_disk

            try:
                loaded = load_from_disk(path)
            except Exception as e:
                raise UserInputError(
                    f"dataset {name_or_path!r}: could not load the saved dataset folder: {_root_cause(e)}"
                ) from e
            if isinstance(loaded, Dataset):
                loaded = DatasetDict(train=loaded)
            return dict(loaded), {s: f"saved dataset {path}, split {s!r}" for s in loaded}
        files = _split_files(path)
        return {s: _read_files(f) for s, f in files.items()}, {s: _describe_files(f) for s, f in files.items()}
    if _looks_like_file(name_or_path):
        raise UserInputError(
            f"dataset {name_or_path!r}: no such file or folder (looked for {os.path.abspath(path)}); expected a "
            f"data file ({_EXTS_TEXT}), a folder of train/validation/test files, or a Hub dataset id"
        )
    try:
        loaded = load_dataset(name_or_path)
    except Exception as e:
        raise UserInputError(
            f"dataset {name_or_path!r}: not a file or folder here, and loading it as a Hub dataset id failed: "
            f"{type(e).__name__}: {e}"
        ) from e
    if isinstance(loaded, Dataset):
        loaded = DatasetDict(train=loaded)
    return dict(loaded), {s: f"Hub dataset {name_or_path}, split {s!r}" for s in loaded}


def read_raw_splits(name_or_path: str) -> tuple[dict[str, Dataset], dict[str, str]]:
    """A file, a folder of split files, a saved dataset folder or a Hub id, read as found: `(split -> Dataset, split ->
    where it came from)`, split names not normalised, no column checked (the speech loader reads its data so)."""
    return _read_raw(name_or_path)


def split_alias(name: str) -> str | None:
    """`train`, `validation` (also dev/valid/val) or `test` for a split name, else None."""
    return _SPLIT_ALIASES.get(name.lower())


def _describe_files(files: list[str]) -> str:
    return f"file {files[0]}" if len(files) == 1 else f"files {', '.join(files)}"


def _split_files(folder: str) -> dict[str, list[str]]:
    """Data files of a folder by split: `train.csv`, `dev.jsonl`, shards like `train-00000-of-00002.parquet`, all
    data files of a split-named subfolder (`train/a.csv`), and the same inside a `data/` subfolder (the Hub's
    layout). Other files (`train_old.csv`, `notes.txt`) are ignored."""
    found: dict[str, list[str]] = {}
    named: dict[str, set[str]] = {}  # split -> names that claimed it (to refuse both dev.csv and validation.csv)

    def split_of(stem: str) -> str | None:
        m = re.fullmatch(r"([a-z]+)(-\d.*)?", stem.lower())
        return _SPLIT_ALIASES.get(m.group(1)) if m else None

    def scan(root: str) -> None:
        for entry in sorted(os.listdir(root)):
            full = os.path.join(root, entry)
            stem, ext = os.path.splitext(entry)
            if os.path.isfile(full) and ext.lower() in _FORMATS and split_of(stem):
                found.setdefault(split_of(stem), []).append(full)
                named.setdefault(split_of(stem), set()).add(re.split(r"-", stem.lower())[0])
            elif os.path.isdir(full) and entry.lower() in _SPLIT_ALIASES:
                inner = sorted(
                    os.path.join(full, f) for f in os.listdir(full)
                    if os.path.isfile(os.path.join(full, f)) and os.path.splitext(f)[1].lower() in _FORMATS
                )
                if inner:
                    found.setdefault(_SPLIT_ALIASES[entry.lower()], []).extend(inner)
                    named.setdefault(_SPLIT_ALIASES[entry.lower()], set()).add(entry.lower() + "/")

    scan(folder)
    if not found and os.path.isdir(os.path.join(folder, "data")):
        scan(os.path.join(folder, "data"))
    if not found:
        listing = sorted(os.listdir(folder))
        raise UserInputError(
            f"dataset folder {folder} holds no recognisable data files: expected files named train, validation "
            f"(or dev/valid/val) and test with an extension among {_EXTS_TEXT} (e.g. train.csv), a saved "
            f"DatasetDict, or a path to one file; the folder holds {listing if listing else 'nothing'}"
        )
    for split, files in found.items():
        exts = {os.path.splitext(f)[1].lower().replace(".jsonl", ".json") for f in files}
        if len(exts) > 1 or len(named[split]) > 1:
            raise UserInputError(
                f"dataset folder {folder}: several files claim the {split} split: "
                f"{[os.path.relpath(f, folder) for f in files]}; expected one file per split (or shards of one "
                "name and format, like train-00000-of-00002.csv)"
            )
    if "train" not in found:
        raise UserInputError(
            f"dataset folder {folder} has no train file (found "
            f"{'; '.join(f'{s}: {_describe_files(f)}' for s, f in found.items())}); "
            f"expected a file named train with an extension among {_EXTS_TEXT}"
        )
    return found


def _file_is_blank(path: str) -> bool:
    """True if the file has no content but whitespace (reads only up to the first other character)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            if chunk.strip():
                return False
    return True


def _has_data_line(path: str) -> bool:
    """True if a CSV/TSV has a non-blank line after its header (a header-only file has none)."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = (line for line in fh if line.strip())
        next(lines, None)
        return next(lines, None) is not None


def _read_files(files: list[str]) -> Dataset:
    """One split from one file (or shards of one format), with the file named in any error."""
    ext = os.path.splitext(files[0])[1].lower()
    fmt = _FORMATS.get(ext)
    if fmt is None:
        raise UserInputError(
            f"data file {files[0]}: unsupported file type {ext or '(no extension)'}; expected one of {_EXTS_TEXT}"
        )
    for f in files:
        if fmt != "parquet" and _file_is_blank(f):
            expected = "a header line and rows" if fmt == "csv" else "one JSON object per line (or a JSON list)"
            raise UserInputError(f"data file {f} is empty ({os.path.getsize(f)} bytes); expected {expected}")
        if fmt == "csv" and not _has_data_line(f):
            raise UserInputError(
                f"data file {f} holds only a header line and no rows; expected at least one data row"
            )
    kwargs = {}
    if fmt == "csv":
        # Only an empty cell is missing: with pandas' defaults a class or a text "NA"/"None"/"null" would vanish.
        kwargs = {"keep_default_na": False, "na_values": [""], "sep": "\t" if ext == ".tsv" else ","}
    try:
        ds = load_dataset(fmt, data_files={"train": files}, split="train", **kwargs)
    except Exception as e:
        cause = _root_cause(e)
        if "corresponds to no data" in cause:
            raise UserInputError(f"data {_describe_files(files)} holds no rows; expected at least one row") from e
        raise UserInputError(f"could not read {_describe_files(files)} as {ext.lstrip('.')}: {cause}") from e
    if len(ds) == 0:
        raise UserInputError(f"data {_describe_files(files)} holds no rows; expected at least one row")
    return ds


def _dtype(feature) -> str:
    return feature.dtype if isinstance(feature, Value) else type(feature).__name__


def _is_text(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _is_int(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))


def _is_float(feature) -> bool:
    return isinstance(feature, Value) and feature.dtype.startswith(("float", "double", "half"))


def _column(ds: Dataset, column: str):
    """A column as a pyarrow array (indices mapping applied, no Python objects for every row)."""
    import pyarrow as pa

    col = ds.with_format("arrow")[column]
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _missing_mask(ds: Dataset, column: str, kind: str) -> np.ndarray:
    """Rows whose cell counts as missing: null, and for text an empty/whitespace string, for ClassLabel -1,
    for floats NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = _column(ds, column)
    if pa.types.is_null(col.type):
        return np.ones(len(col), dtype=bool)
    missing = pc.is_null(col, nan_is_null=pa.types.is_floating(col.type))
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        missing = pc.or_(missing, pc.equal(pc.utf8_trim_whitespace(col), ""))
    elif kind == "classlabel":
        missing = pc.or_(missing, pc.less(col, 0))
    return np.asarray(missing.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)


def _label_kind(feature) -> str | None:
    if isinstance(feature, ClassLabel):
        return "classlabel"
    if _is_text(feature):
        return "text"
    if isinstance(feature, Value) and feature.dtype == "bool":
        return "bool"  # pandas reads a CSV column of True/False as booleans: they are class names
    if _is_int(feature):
        return "int"
    if _is_float(feature):
        return "float"
    if isinstance(feature, Value) and feature.dtype == "null":
        return "null"
    return None


def _prepare_splits(
    raw: dict[str, Dataset], sources: dict[str, str], text_column: str, label_column: str,
    text_pair_column: str | None = None,
) -> DatasetDict:
    """Normalise split names, check the columns, drop incomplete rows and encode the labels (one scheme for all
    splits, taken from train)."""
    out: dict[str, Dataset] = {}
    src: dict[str, str] = {}
    for split, ds in raw.items():
        target = _SPLIT_ALIASES.get(split.lower())
        if target is None:
            logger.info("Ignoring split %r of %s: only train/validation/test are used", split, sources[split])
            continue
        if target in out:
            raise UserInputError(
                f"two splits map to {target!r}: {src[target]} and {sources[split]}; expected one {target} split"
            )
        out[target], src[target] = ds, sources[split]
    if "train" not in out:
        raise UserInputError(f"dataset has no train split (found {sorted(raw)}); expected a split or file named train")

    kinds: dict[str, str] = {}
    text_columns = [("text", text_column)] + ([("text_pair", text_pair_column)] if text_pair_column else [])
    for split, ds in out.items():
        cols = ds.column_names
        for role, col in (*text_columns, ("label", label_column)):
            if col not in cols:
                raise UserInputError(
                    f"{role.replace('_', ' ')} column {col!r} not found in split {split!r}; columns are {cols} (in "
                    f"{src[split]}); expected --{role}_column to name one of them"
                )
        for role, col in text_columns:
            tfeat = ds.features[col]
            # A column with no text at all (all cells empty: pandas types it float64) is left to the dropped-rows check.
            if not _is_text(tfeat) and not _missing_mask(ds, col, "text").all():
                raise UserInputError(
                    f"{role.replace('_', ' ')} column {col!r} of split {split!r} ({src[split]}) holds {_dtype(tfeat)} "
                    f"values; expected strings (text): check --{role}_column"
                )
        lfeat = ds.features[label_column]
        kind = _label_kind(lfeat)
        if kind is None:
            raise UserInputError(
                f"label column {label_column!r} of split {split!r} ({src[split]}) holds {_dtype(lfeat)} values; "
                "expected class names (strings) or integer class ids"
            )
        kinds[split] = kind

    # Drop incomplete rows, one warning per split.
    for split, ds in list(out.items()):
        no_text = _missing_mask(ds, text_column, "text")
        if text_pair_column:
            no_text = no_text | _missing_mask(ds, text_pair_column, "text")
        no_label = _missing_mask(ds, label_column, kinds[split])
        drop = no_text | no_label
        if len(ds) == 0:
            raise UserInputError(f"split {split!r} ({src[split]}) has no rows; expected labelled text")
        if drop.all():
            raise UserInputError(
                f"split {split!r} ({src[split]}) has no usable rows: all {len(ds)} have an empty or missing text in "
                f"column {' or '.join(repr(c) for _, c in text_columns)} or a missing label in column "
                f"{label_column!r}; expected labelled text"
            )
        if drop.any():
            logger.warning(
                "Dropped %d of %d rows of split %r (%s): %d with an empty or missing text in column %s, %d with a "
                "missing label in column %r",
                int(drop.sum()), len(ds), split, src[split], int(no_text.sum()),
                " or ".join(repr(c) for _, c in text_columns), int(no_label.sum()), label_column,
            )
            out[split] = ds.select(np.flatnonzero(~drop))

    if kinds["train"] in ("text", "classlabel", "bool"):
        return _encode_names(out, src, kinds, label_column)
    return _check_ids(out, src, kinds, label_column)


def encode_labels(
    splits: dict[str, Dataset], sources: dict[str, str], label_column: str, seed: int = 42,
    validation_size: float = 0.1, test_size: float = 0.1,
) -> DatasetDict:
    """The label rules of `load_text_classification` for splits whose inputs are not text (audio): the label column
    checked and encoded (class names -> a sorted `ClassLabel`, integer ids kept), rows without a label dropped with
    one warning per split, and a missing validation/test split carved out of train (stratified, seeded)."""
    kinds: dict[str, str] = {}
    out = dict(splits)
    for split, ds in out.items():
        if label_column not in ds.column_names:
            raise UserInputError(
                f"label column {label_column!r} not found in split {split!r}; columns are {ds.column_names} (in "
                f"{sources[split]}); expected --label_column to name one of them"
            )
        kind = _label_kind(ds.features[label_column])
        if kind is None:
            raise UserInputError(
                f"label column {label_column!r} of split {split!r} ({sources[split]}) holds "
                f"{_dtype(ds.features[label_column])} values; expected class names (strings) or integer class ids"
            )
        kinds[split] = kind
        missing = _missing_mask(ds, label_column, kind)
        if missing.all():
            raise UserInputError(f"split {split!r} ({sources[split]}) has no labelled rows in column {label_column!r}")
        if missing.any():
            logger.warning("Dropped %d of %d rows of split %r (%s) with a missing label in column %r",
                           int(missing.sum()), len(ds), split, sources[split], label_column)
            out[split] = ds.select(np.flatnonzero(~missing))
    if kinds["train"] in ("text", "classlabel", "bool"):
        encoded = _encode_names(out, sources, kinds, label_column)
    else:
        encoded = _check_ids(out, sources, kinds, label_column)
    return _ensure_splits(encoded, label_column, seed, validation_size, test_size)


def _names_of(ds: Dataset, column: str, kind: str) -> list[str]:
    """A label column as class names (stripped strings; a ClassLabel's ids through its names)."""
    if kind == "classlabel":
        names = ds.features[column].names
        return [names[i] for i in _column(ds, column).to_pylist()]
    return [str(v).strip() for v in _column(ds, column).to_pylist()]


def _encode_names(
    out: dict[str, Dataset], src: dict[str, str], kinds: dict[str, str], label_column: str
) -> DatasetDict:
    train_feat = out["train"].features[label_column]
    train_values = _names_of(out["train"], label_column, kinds["train"])
    present = sorted(set(train_values))
    # A ClassLabel keeps its names and their order; class names from text are sorted.
    names = list(train_feat.names) if kinds["train"] == "classlabel" else present
    if len(present) < 2:
        raise UserInputError(
            f"label column {label_column!r} of the train split ({src['train']}) holds only one class, {present[0]!r}; "
            "expected at least 2 classes"
        )
    target = ClassLabel(names=names)
    name2id = {n: i for i, n in enumerate(names)}
    for split, ds in out.items():
        kind = kinds[split]
        if kind not in ("text", "classlabel", "bool", "int"):  # ints/booleans compare as their str()
            raise UserInputError(
                f"label column {label_column!r} holds class names in the train split ({src['train']}) but "
                f"{_dtype(ds.features[label_column])} values in split {split!r} ({src[split]}); "
                "expected class names in every split"
            )
        values = train_values if split == "train" else _names_of(ds, label_column, kind)
        unseen = sorted(set(values) - set(present))
        if unseen:
            raise UserInputError(
                f"split {split!r} ({src[split]}) holds {len(unseen)} class(es) that the train split ({src['train']}) "
                f"lacks: {unseen}; expected only the train classes {present}"
            )
        if kind == "classlabel" and list(ds.features[label_column].names) == names:
            continue
        features = ds.features.copy()
        features[label_column] = target
        old_names = list(ds.features[label_column].names) if kind == "classlabel" else None

        def encode(batch, old_names=old_names, name2id=name2id):
            if old_names is not None:
                return {label_column: [name2id[old_names[v]] for v in batch[label_column]]}
            return {label_column: [name2id[str(v).strip()] for v in batch[label_column]]}

        out[split] = ds.map(encode, batched=True, features=features, desc=f"Encoding {split} labels")
    return DatasetDict(out)


def _check_ids(out: dict[str, Dataset], src: dict[str, str], kinds: dict[str, str], label_column: str) -> DatasetDict:
    ids: dict[str, np.ndarray] = {}
    for split, ds in out.items():
        kind = kinds[split]
        if kind not in ("int", "float"):
            raise UserInputError(
                f"label column {label_column!r} holds integer class ids in the train split ({src['train']}) but "
                f"{'class names' if kind in ('text', 'classlabel', 'bool') else _dtype(ds.features[label_column])} "
                f"in split {split!r} ({src[split]}); expected the same kind of label in every split"
            )
        values = _column(ds, label_column).to_numpy(zero_copy_only=False)
        if kind == "float":
            fractional = values[values != np.floor(values)]
            if len(fractional):
                raise UserInputError(
                    f"label column {label_column!r} of split {split!r} ({src[split]}) holds fractional numbers "
                    f"(e.g. {float(fractional[0])}); expected class names or integer class ids "
                    "(regression is not supported)"
                )
        values = values.astype(np.int64)
        if (values < 0).any():
            raise UserInputError(
                f"label column {label_column!r} of split {split!r} ({src[split]}) holds negative ids "
                f"{sorted(set(values[values < 0].tolist()))}; expected class ids 0..K-1 (or class names)"
            )
        ids[split] = values
    present = sorted(set(ids["train"].tolist()))
    if len(present) < 2:
        raise UserInputError(
            f"label column {label_column!r} of the train split ({src['train']}) holds only one class, {present[0]}; "
            "expected at least 2 classes"
        )
    k = present[-1] + 1
    for split, values in ids.items():
        unseen = sorted(set(values.tolist()) - set(present))
        if unseen:
            raise UserInputError(
                f"split {split!r} ({src[split]}) holds {len(unseen)} class id(s) that the train split "
                f"({src['train']}) lacks: {unseen}; expected only the train ids {present}"
            )
    if len(present) < k:
        logger.warning(
            "The train split (%s) has integer labels up to %d but no rows of class id(s) %s: the model gets %d outputs",
            src["train"], k - 1, sorted(set(range(k)) - set(present)), k,
        )
    for split, ds in out.items():
        if ds.features[label_column] != Value("int64"):
            out[split] = ds.cast_column(label_column, Value("int64"))
    return DatasetDict(out)


def _ensure_splits(raw: DatasetDict, label_column: str, seed: int, validation_size: float, test_size: float) -> DatasetDict:
    if "train" not in raw:
        raise UserInputError(f"dataset has no 'train' split; splits: {list(raw)}")
    out = dict(raw)
    if "validation" not in out and "dev" in out:
        out["validation"] = out.pop("dev")
    missing_val, missing_test = "validation" not in out, "test" not in out
    if missing_val or missing_test:
        train = out["train"]
        if label_column not in train.column_names:
            raise UserInputError(
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


def validate_columns(dsd: DatasetDict, text_column: str, label_column: str | None,
                     text_pair_column: str | None = None) -> None:
    for split, ds in dsd.items():
        cols = ds.column_names
        for role, col in (("text", text_column), ("text pair", text_pair_column), ("label", label_column)):
            if col is not None and col not in cols:
                raise UserInputError(f"{role} column {col!r} not found in split {split!r}; columns are {cols}"
                                     + (" (see --text_pair_column)" if role == "text pair" else ""))


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
    truncation_side: str = "right",
    text_pair_column: str | None = None,
    pair_truncation: str = "only_second",
):
    """Tokenize `text_column` (no padding: the collator pads per batch). With `prefix="teacher_"` the outputs are
    stored as `teacher_input_ids`/`teacher_attention_mask`, so a teacher with another tokenizer reads its own ids.

    With `text_pair_column`, each row's two texts are tokenized together as one pair (``[CLS] a [SEP] b [SEP]``,
    token type ids where the model has them); a pair longer than `max_length` is cut as `pair_truncation` says
    (``only_second``: the second text only, the default for question/passage).

    Texts longer than `max_length` tokens are cut: `truncation_side="right"` keeps the beginning of a text,
    `"left"` keeps its end. The side is set on the tokenizer for this call only and restored afterwards.
    """
    if truncation_side not in ("right", "left"):
        raise UserInputError(f"truncation_side must be 'right' or 'left', got {truncation_side!r}")

    def fn(batch):
        if text_pair_column:
            enc = tokenizer(batch[text_column], batch[text_pair_column], truncation=pair_truncation,
                            max_length=max_length)
        else:
            enc = tokenizer(batch[text_column], truncation=True, max_length=max_length)
        return {f"{prefix}{k}": v for k, v in enc.items()}

    if text_pair_column and pair_truncation in ("only_second", "only_first"):
        # the text kept whole leaving no room for the one that is cut is one clear error, now
        splits = dataset.items() if isinstance(dataset, DatasetDict) else [("", dataset)]
        kept, cut = (text_column, text_pair_column) if pair_truncation == "only_second" else (text_pair_column,
                                                                                               text_column)
        names = {text_column: f"first text ({text_column})", text_pair_column: f"second text ({text_pair_column})"}
        for name, split in splits:
            check_first_texts_fit(tokenizer, split[kept], split[cut], max_length, what=names[kept], second=names[cut],
                                  where=f"{name} split, " if name else "", truncation=pair_truncation)
    previous = tokenizer.truncation_side
    tokenizer.truncation_side = truncation_side  # before map(): it is part of the tokenizer hashed into the cache key
    try:
        return dataset.map(fn, batched=True, desc=f"Tokenizing{' for ' + prefix.rstrip('_') if prefix else ''}")
    finally:
        tokenizer.truncation_side = previous


def check_first_texts_fit(tokenizer, firsts, seconds, max_length: int, stride: int = 0, what: str = "question",
                          second: str = "passage", where: str = "", argument: str = "--max_length",
                          truncation: str = "only_second") -> None:
    """Under ``only_second`` truncation only the second text of a pair is cut, so a first text (a question) that
    leaves no room for any of the second one, with the special tokens, makes the tokenizer fail with its own error
    (``Sequence to truncate too short``; with a window stride, a panic). Refused here instead, naming the first such
    row and `argument`: for each pair longer than `max_length`, the first text must leave more than `stride` tokens
    (at least 1) for the second. For ``only_first`` truncation pass the texts the other way round (`firsts` = the
    texts that are kept whole) with ``truncation="only_first"``."""
    firsts = list(firsts)
    if not firsts:
        return
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(firsts, add_special_tokens=False)["input_ids"]]
    suspects = [i for i, n in enumerate(lengths) if max_length - n - specials <= stride]
    if not suspects:
        return
    seconds = list(seconds)
    second_lengths = tokenizer([seconds[i] for i in suspects], add_special_tokens=False)["input_ids"]
    for i, ids in zip(suspects, second_lengths):
        n = lengths[i]
        if n + specials + len(ids) <= max_length:  # fits whole: nothing is cut
            continue
        room = max_length - n - specials
        need = f"more than {'--' if argument.startswith('--') else ''}doc_stride {stride}" if stride else "at least 1"
        raise UserInputError(
            f"{where}row {i + 1}: the {what} is {n} tokens long ({firsts[i][:60]!r}{'...' if len(firsts[i]) > 60 else ''}"
            f"); with {specials} special tokens it leaves {room} of {argument} {max_length} for the {second}, which "
            f"needs {need}: only the {second} is cut ({truncation} truncation). Raise {argument} (to at least "
            f"{n + specials + stride + 1}) or shorten the {what}")


def set_input_length(tokenizer, max_length: int | None):
    """Make `tokenizer` (saved beside a model) say the input length the model was trained and evaluated at:
    ``model_max_length`` (what ``truncation=True`` cuts to, in a pipeline too) and the ``max_length`` some tokenizer
    configs carry (sentence-transformers' 128). Returns the tokenizer."""
    if tokenizer is None or not max_length:
        return tokenizer
    tokenizer.model_max_length = int(max_length)
    init = getattr(tokenizer, "init_kwargs", None)
    if isinstance(init, dict):
        init["model_max_length"] = int(max_length)
        if "max_length" in init:
            init["max_length"] = int(max_length)
    return tokenizer
