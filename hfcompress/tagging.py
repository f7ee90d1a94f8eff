"""Data for token classification (NER, chunking, POS): word-level tags read from files, checked, split, and aligned
to a tokenizer's sub-tokens.

Accepted inputs (`load_token_classification`):

- a CoNLL-style file (`.conll`, `.txt`, `.bio`, `.iob`): one token per line, the token in the first column and its
  tag in the last (columns split by tabs or spaces), a blank line between sentences, ``-DOCSTART-`` lines skipped;
- JSON Lines (`.json`, `.jsonl`) with a list of tokens and a list of tags per row (`--tokens_column`,
  `--tags_column`, default ``tokens`` / ``tags``);
- a folder of split files named train / validation (dev, valid, val) / test in either format;
- a folder written by `DatasetDict.save_to_disk`, whose tag column is a list of names or of `ClassLabel` ids.

Tags are names in the BIO (IOB2), IOB1 or IO schemes: ``O`` or ``B-<type>`` / ``I-<type>``. Anything else is a
`UserInputError` naming the file and line (row). The tag names become the label ids in order (``O`` first, then
sorted): they travel into the model's ``id2label``. A tag in validation or test that train lacks is an error.
Missing validation / test splits are carved out of train by sentence (10% each, seeded).

Sub-tokens: each word's tag labels the first sub-token of the word; the other sub-tokens get -100 (ignored by the
loss and the metric), or the word's tag with ``label_all_subtokens`` (an ``B-x`` becoming ``I-x`` after the first).
Special tokens get -100. A sentence longer than `max_length` sub-tokens is truncated, never refused: the words cut
off are not trained on and not scored, and the number of truncated sentences is logged as one warning per split.
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Sequence, Value

from .assets import resolve_data_path
from .errors import UserInputError

logger = logging.getLogger(__name__)

CONLL_EXTS = (".conll", ".txt", ".bio", ".iob")
JSON_EXTS = (".json", ".jsonl")
_SPLITS = {"train": "train", "validation": "validation", "dev": "validation", "valid": "validation",
           "val": "validation", "test": "test"}
_TAG = re.compile(r"^(O|[BIES]-\S+)$")
DOCSTART = "-DOCSTART-"


def valid_tag(tag: str) -> bool:
    """True for ``O`` and ``B-<type>`` / ``I-<type>`` (also ``E-``/``S-`` of the BIOES scheme)."""
    return bool(_TAG.match(tag))


def entity_type(tag: str) -> str | None:
    return None if tag == "O" else tag[2:]


def read_conll(path: str) -> Dataset:
    """Sentences of a CoNLL-style file as a `Dataset` with ``tokens`` and ``tags`` (lists of strings)."""
    tokens, tags, sentences = [], [], []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                if tokens:
                    sentences.append((tokens, tags))
                    tokens, tags = [], []
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            cols = [c.strip() for c in cols]
            if cols[0] == DOCSTART:
                continue
            if len(cols) < 2:
                raise UserInputError(f"data file {path}, line {number}: {line!r} has one column; expected a token and "
                                     "its tag (separated by a tab or spaces), or a blank line between sentences")
            tag = cols[-1]
            if not valid_tag(tag):
                raise UserInputError(f"data file {path}, line {number}: tag {tag!r} (of token {cols[0]!r}) is not in "
                                     "the BIO/IOB2/IO schemes; expected 'O' or 'B-<type>' / 'I-<type>'")
            tokens.append(cols[0])
            tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    if not sentences:
        raise UserInputError(f"data file {path} holds no sentences; expected lines of 'token<TAB>tag' with a blank "
                             "line between sentences")
    return Dataset.from_dict({"tokens": [s[0] for s in sentences], "tags": [s[1] for s in sentences]})


def read_tagged_jsonl(path: str, tokens_column: str, tags_column: str) -> Dataset:
    """JSON Lines (or one JSON list) of rows holding a token list and a tag list of the same length."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if not text.strip():
        raise UserInputError(f"data file {path} is empty; expected one JSON object per line with "
                             f"{tokens_column!r} and {tags_column!r} lists")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise UserInputError(f"data file {path}: not JSON Lines ({e})") from e
    tokens, tags = [], []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or tokens_column not in row or tags_column not in row:
            found = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise UserInputError(f"data file {path}, row {i}: expected columns {tokens_column!r} and {tags_column!r} "
                                 f"(see --tokens_column / --tags_column); found {found}")
        tk, tg = row[tokens_column], row[tags_column]
        if not isinstance(tk, list) or not isinstance(tg, list) or len(tk) != len(tg):
            raise UserInputError(f"data file {path}, row {i}: {tokens_column!r} and {tags_column!r} must be lists of "
                                 f"the same length; got {len(tk) if isinstance(tk, list) else type(tk).__name__} "
                                 f"tokens and {len(tg) if isinstance(tg, list) else type(tg).__name__} tags")
        tokens.append([str(t) for t in tk])
        tags.append(tg)
    return Dataset.from_dict({"tokens": tokens, "tags": tags})


def _read_file(path: str, tokens_column: str, tags_column: str) -> Dataset:
    ext = os.path.splitext(path)[1].lower()
    if ext in CONLL_EXTS:
        return read_conll(path)
    if ext in JSON_EXTS:
        return read_tagged_jsonl(path, tokens_column, tags_column)
    raise UserInputError(f"data file {path}: unsupported file type {ext or '(no extension)'} for token "
                         f"classification; expected CoNLL-style {', '.join(CONLL_EXTS)} or JSON Lines "
                         f"{', '.join(JSON_EXTS)}")


def _is_saved(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def _split_files(folder: str) -> dict[str, str]:
    found = {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        split = _SPLITS.get(stem.lower())
        if split and ext.lower() in CONLL_EXTS + JSON_EXTS:
            if split in found:
                raise UserInputError(f"dataset folder {folder}: several files claim the {split} split: "
                                     f"{os.path.basename(found[split])}, {entry}")
            found[split] = os.path.join(folder, entry)
    if "train" not in found:
        raise UserInputError(f"dataset folder {folder} has no train file; expected train{CONLL_EXTS[0]} or "
                             f"train.jsonl (and dev/validation, test), or a saved DatasetDict")
    return found


def looks_tagged(name_or_path: str, tokens_column: str = "tokens", tags_column: str = "tags") -> bool:
    """Whether the data is token-tagged, judged cheaply: a CoNLL-style file, a JSON Lines file whose first row has
    the token and tag lists, a folder of such files, or a saved dataset with both columns."""
    path = os.path.expanduser(resolve_data_path(name_or_path))
    if os.path.isdir(path):
        if _is_saved(path):
            for root, _, files in os.walk(path):
                if "dataset_info.json" in files:
                    with open(os.path.join(root, "dataset_info.json")) as fh:
                        feats = json.load(fh).get("features") or {}
                    return tokens_column in feats and tags_column in feats
            return False
        try:
            return looks_tagged(_split_files(path)["train"], tokens_column, tags_column)
        except UserInputError:
            return False
    if not os.path.isfile(path):
        return False
    ext = os.path.splitext(path)[1].lower()
    if ext in (".conll", ".bio", ".iob"):
        return True
    if ext in JSON_EXTS or ext == ".txt":
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = next((line for line in fh if line.strip()), "")
        if ext == ".txt":  # CoNLL-style only if its first line is 'token<TAB or space>tag'
            cols = first.split()
            return len(cols) >= 2 and (valid_tag(cols[-1]) or cols[0] == DOCSTART)
        try:
            row = json.loads(first)
        except json.JSONDecodeError:
            return False
        return isinstance(row, dict) and isinstance(row.get(tokens_column), list) and tags_column in row
    return False


def _tag_names_of(ds: Dataset, column: str) -> list[str] | None:
    feat = ds.features.get(column)
    inner = getattr(feat, "feature", None)
    return list(inner.names) if isinstance(inner, ClassLabel) else None


def _check_tags(ds: Dataset, column: str, where: str) -> set[str]:
    seen = set()
    for i, row in enumerate(ds[column]):
        for tag in row:
            if tag not in seen:
                if not isinstance(tag, str) or not valid_tag(tag):
                    raise UserInputError(f"{where}, row {i + 1}: tag {tag!r} is not in the BIO/IOB2/IO schemes; "
                                         "expected 'O' or 'B-<type>' / 'I-<type>'")
                seen.add(tag)
    return seen


def tag_order(tags) -> list[str]:
    """Label order of a set of tag names: ``O`` first, then by entity type, B before I."""
    return sorted(set(tags), key=lambda t: (t != "O", entity_type(t) or "", t))


def load_token_classification(name_or_path: str, tokens_column: str = "tokens", tags_column: str = "tags",
                              seed: int = 42, validation_size: float = 0.1, test_size: float = 0.1) -> DatasetDict:
    """Splits with ``tokens`` (lists of words) and ``tags`` (`Sequence(ClassLabel)`, the tag names in
    `tag_order`), checked as the module docstring says. `name_or_path` may name an offline data asset
    (``wnut16-ner``)."""
    path = os.path.expanduser(resolve_data_path(name_or_path))
    if os.path.isfile(path):
        raw, where = {"train": _read_file(path, tokens_column, tags_column)}, {"train": f"data file {path}"}
    elif os.path.isdir(path) and _is_saved(path):
        from datasets import load_from_disk

        loaded = load_from_disk(path)
        loaded = {"train": loaded} if isinstance(loaded, Dataset) else dict(loaded)
        raw, where = {}, {}
        for split, ds in loaded.items():
            name = _SPLITS.get(split.lower())
            if name is None:
                continue
            missing = [c for c in (tokens_column, tags_column) if c not in ds.column_names]
            if missing:
                raise UserInputError(f"saved dataset {path}, split {split!r}: no column {missing[0]!r} (see "
                                     f"--tokens_column / --tags_column); columns are {ds.column_names}")
            names = _tag_names_of(ds, tags_column)
            ds = ds.select_columns([tokens_column, tags_column])
            if names is not None:  # ClassLabel ids back to names, so every source is checked and ordered alike
                ds = ds.map(lambda r: {"_t": [names[i] for i in r[tags_column]]}, remove_columns=[tags_column])
                ds = ds.rename_column("_t", tags_column)
            raw[name] = ds.rename_columns({tokens_column: "tokens", tags_column: "tags"}) if (
                tokens_column, tags_column) != ("tokens", "tags") else ds
            where[name] = f"saved dataset {path}, split {split!r}"
    elif os.path.isdir(path):
        files = _split_files(path)
        raw = {s: _read_file(f, tokens_column, tags_column) for s, f in files.items()}
        where = {s: f"data file {f}" for s, f in files.items()}
    else:
        raise UserInputError(f"dataset {name_or_path!r}: no such file or folder; token classification reads a "
                             f"CoNLL-style file ({', '.join(CONLL_EXTS)}), JSON Lines with {tokens_column!r}/"
                             f"{tags_column!r} lists, a folder of train/dev/test files, or a saved dataset")
    if "train" not in raw:
        raise UserInputError(f"dataset {name_or_path!r} has no train split; found {sorted(raw)}")
    seen = {s: _check_tags(ds, "tags", where[s]) for s, ds in raw.items()}
    names = tag_order(seen["train"] | {"O"})  # O always has an id (the pipeline and the metric read it)
    for split in ("validation", "test"):
        extra = sorted(seen.get(split, set()) - set(names))
        if extra:
            raise UserInputError(f"{where[split]}: tag {extra[0]!r} does not occur in the train split "
                                 f"({where['train']}); train's tags are {names}")
    missing = [s for s in ("validation", "test") if s not in raw]
    if missing:
        order = np.random.default_rng(seed).permutation(len(raw["train"]))
        n_val = int(round(len(order) * validation_size)) if "validation" in missing else 0
        n_test = int(round(len(order) * test_size)) if "test" in missing else 0
        if len(order) - n_val - n_test < 1 or ("validation" in missing and n_val < 1) or ("test" in missing and n_test < 1):
            raise UserInputError(f"{where['train']}: {len(order)} sentences are too few to carve validation and test "
                                 "splits out of; give more sentences or dev/test files")
        train = raw["train"]
        if "validation" in missing:
            raw["validation"] = train.select(sorted(order[:n_val]))
        if "test" in missing:
            raw["test"] = train.select(sorted(order[n_val:n_val + n_test]))
        raw["train"] = train.select(sorted(order[n_val + n_test:]))
    label = ClassLabel(names=names)
    out = {}
    for split in ("train", "validation", "test"):
        ds = raw[split]
        ids = [[label.str2int(t) for t in row] for row in ds["tags"]]
        out[split] = Dataset.from_dict({"tokens": ds["tokens"], "tags": ids},
                                       features=_features(label))
    return DatasetDict(out)


def _features(label: ClassLabel):
    from datasets import Features

    return Features({"tokens": Sequence(Value("string")), "tags": Sequence(label)})


def tag_names(dataset) -> list[str]:
    ds = next(iter(dataset.values())) if isinstance(dataset, DatasetDict) else dataset
    return list(ds.features["tags"].feature.names)


def inside_of(names: list[str]) -> list[int]:
    """For each tag id, the id a non-first sub-token of its word gets with ``label_all_subtokens``: ``B-x`` -> ``I-x``
    where ``I-x`` exists, every other tag itself."""
    index = {n: i for i, n in enumerate(names)}
    return [index.get("I-" + n[2:], i) if n.startswith("B-") else i for i, n in enumerate(names)]


def align_labels(word_ids: list, word_labels: list[int], label_all_subtokens: bool = False,
                 inside: list[int] | None = None) -> list[int]:
    """Sub-token labels from word labels: the first sub-token of each word gets the word's label; the others -100
    (or, with `label_all_subtokens`, the word's label mapped through `inside`); special tokens (word id None) -100."""
    out, previous = [], None
    for w in word_ids:
        if w is None:
            out.append(-100)
        elif w != previous:
            out.append(int(word_labels[w]))
        elif label_all_subtokens:
            lab = int(word_labels[w])
            out.append(inside[lab] if inside is not None else lab)
        else:
            out.append(-100)
        previous = w
    return out


def labelled_positions(labels: list[int]) -> list[int]:
    return [i for i, v in enumerate(labels) if v != -100]


def tokenize_tagged(dataset: DatasetDict, tokenizer, max_length: int, label_all_subtokens: bool = False,
                    prefix: str = "", with_labels: bool = True) -> DatasetDict:
    """Tokenize the word lists (``is_split_into_words``) into `prefix`-named model inputs and, with `with_labels`,
    sub-token ``labels`` (`align_labels`). Sentences cut at `max_length` are counted and logged per split."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserInputError(f"token classification needs a fast tokenizer (word ids of each sub-token); "
                             f"{type(tokenizer).__name__} is not one")
    inside = inside_of(tag_names(dataset))

    def fn(batch):
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        out = {f"{prefix}{k}": v for k, v in enc.items()}
        cut, labels = [], []
        for i, tags in enumerate(batch["tags"]):
            word_ids = enc.word_ids(i)
            words = [w for w in word_ids if w is not None]
            cut.append(bool(tags) and (not words or max(words) + 1 < len(tags)))
            if with_labels:
                labels.append(align_labels(word_ids, tags, label_all_subtokens, inside))
        out[f"{prefix}truncated"] = cut
        if with_labels:
            out[f"{prefix}labels"] = labels
        return out

    out = dataset.map(fn, batched=True, desc=f"Tokenizing words{' for ' + prefix.rstrip('_') if prefix else ''}")
    for split, ds in out.items():
        n = int(sum(ds[f"{prefix}truncated"]))
        if n:
            logger.warning("%s: %d of %d sentences are longer than --max_length %d sub-tokens (%s) and were cut; the "
                           "words past the cut are neither trained on nor scored", split, n, len(ds), max_length,
                           type(tokenizer).__name__)
    return out.remove_columns(f"{prefix}truncated")
