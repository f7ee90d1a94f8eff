"""Data for extractive question answering: SQuAD-style files read and checked, long contexts split into overlapping
windows with answers mapped to token positions by offsets, and the windows' start/end logits turned back into answer
text.

Accepted inputs (`load_qa`):

- SQuAD JSON (v1.1 / v2.0): ``{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text",
  "answer_start"}], "is_impossible"}]}]}]}``;
- JSON Lines, one question per row: ``context`` (or ``passage``), ``question``, and ``answers`` (``{"text": [...],
  "answer_start": [...]}`` or a list of ``{"text", "answer_start"}``) or ``answer`` (the text only: its start is
  found by search, case-insensitively, and the rows whose answer is not in their context are counted in one warning:
  they are dropped from train and kept, scored on their text, in validation and test); an empty answer, or
  ``"unknown"``, is a question without an answer in the context (SQuAD v2);
- a folder of split files (train / dev|validation / test) in either format.

Rows become ``{id, context, question, answers: {text: [...], answer_start: [...]}}``. An ``answer_start`` outside its
context, or one whose text is not at that place, is a `UserInputError` naming the row. Missing validation / test
splits are carved out of train by question (10% each, seeded); note that questions of one context may then land in
different splits.

Windows (`prepare_train_features`): question first, the context cut into windows of ``max_length`` tokens that
overlap by ``doc_stride`` tokens (``truncation="only_second"``). A window's labels are the token start and end of the
answer when the answer lies wholly inside it, else the CLS token (0, 0): unanswerable there (SQuAD v2 style).
`postprocess` picks, per question, the best span of all its windows (``n_best`` starts x ends, at most
``max_answer_length`` tokens, inside the context), or no answer where the CLS score beats the best span by more than
``null_threshold`` (questions without an answer allowed only when the data has some).
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
from datasets import Dataset, DatasetDict

from .assets import resolve_data_path
from .errors import UserInputError

logger = logging.getLogger(__name__)

NO_ANSWER = ("", "unknown")
_SPLITS = {"train": "train", "validation": "validation", "dev": "validation", "valid": "validation",
           "val": "validation", "test": "test"}


def _rows_of_squad(data: dict, where: str) -> list[dict]:
    rows = []
    for article in data.get("data", []):
        for p, para in enumerate(article.get("paragraphs", [])):
            context = para.get("context")
            if not isinstance(context, str):
                raise UserInputError(f"{where}: paragraph {p} of {article.get('title', '?')!r} has no context text")
            for qa in para.get("qas", []):
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                rows.append({"id": str(qa.get("id", len(rows))), "context": context, "question": qa["question"],
                             "answers": {"text": [a["text"] for a in answers],
                                         "answer_start": [int(a["answer_start"]) for a in answers]}})
    return rows


def _answers_of(row: dict, where: str, i: int, counts: dict) -> dict:
    answers = row.get("answers")
    if isinstance(answers, dict):
        return {"text": list(answers.get("text", [])), "answer_start": [int(s) for s in answers.get("answer_start", [])]}
    if isinstance(answers, list):
        return {"text": [a["text"] for a in answers], "answer_start": [int(a["answer_start"]) for a in answers]}
    if "answer" not in row:
        raise UserInputError(f"{where}, row {i}: no 'answers' and no 'answer'; expected answers with text and "
                             "answer_start, or the answer text")
    text = str(row["answer"]).strip()
    if text.lower() in NO_ANSWER:
        return {"text": [], "answer_start": []}
    context = row["context"]
    start = context.find(text)
    if start < 0:
        m = re.search(re.escape(text), context, flags=re.IGNORECASE)
        start = m.start() if m else -1
    if start < 0:
        counts["missed"] += 1
        return {"text": [text], "answer_start": [-1]}  # scored on its text; no position to train on
    counts["found"] += 1
    return {"text": [context[start:start + len(text)]], "answer_start": [start]}


def _read_file(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if not text.strip():
        raise UserInputError(f"data file {path} is empty")
    stripped = text.lstrip()
    if stripped.startswith("{") and '"data"' in stripped[:2000] and "\n{" not in stripped[:2000].strip():
        try:
            return _rows_of_squad(json.loads(text), f"data file {path}")
        except json.JSONDecodeError:
            pass
    rows, counts = [], {"found": 0, "missed": 0}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserInputError(f"data file {path}, line {i}: not JSON ({e})") from e
        if "context" not in row and "passage" in row:
            row["context"] = row["passage"]
        missing = [k for k in ("context", "question") if not isinstance(row.get(k), str)]
        if missing:
            raise UserInputError(f"data file {path}, line {i}: no {missing[0]!r} text; expected 'context' (or "
                                 f"'passage') and 'question'; found {sorted(row)}")
        rows.append({"id": str(row.get("id", f"{os.path.basename(path)}:{i}")), "context": row["context"],
                     "question": row["question"], "answers": _answers_of(row, f"data file {path}", i, counts)})
    if counts["missed"]:
        logger.warning("%s: %d of %d answers given as text only are not found in their context (case ignored); "
                       "those questions are kept for scoring on their text and not trained on", path, counts["missed"],
                       counts["missed"] + counts["found"])
    return rows


def _check(rows: list[dict], where: str) -> None:
    for i, r in enumerate(rows, 1):
        for text, start in zip(r["answers"]["text"], r["answers"]["answer_start"]):
            if start == -1:
                continue
            if not 0 <= start < len(r["context"]) or start + len(text) > len(r["context"]):
                raise UserInputError(f"{where}, question {i} ({r['id']}): answer_start {start} lies beyond its "
                                     f"context of {len(r['context'])} characters")
            if r["context"][start:start + len(text)] != text:
                raise UserInputError(f"{where}, question {i} ({r['id']}): the context at answer_start {start} reads "
                                     f"{r['context'][start:start + len(text)]!r}, not the answer {text!r}")


def looks_like_qa(name_or_path: str) -> bool:
    """SQuAD JSON, JSON Lines with a question and a context/passage, or a folder whose train file is one of them."""
    path = os.path.expanduser(resolve_data_path(name_or_path))
    if os.path.isdir(path):
        train = [f for f in os.listdir(path) if os.path.splitext(f)[0].lower() == "train"
                 and f.endswith((".json", ".jsonl"))]
        return bool(train) and looks_like_qa(os.path.join(path, train[0]))
    if not (os.path.isfile(path) and path.endswith((".json", ".jsonl"))):
        return False
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096)
    if '"paragraphs"' in head and '"qas"' in head:
        return True
    try:
        row = json.loads(head.splitlines()[0])
    except (json.JSONDecodeError, IndexError):
        return False
    if not (isinstance(row, dict) and "question" in row and ("context" in row or "passage" in row)):
        return False
    # an answer span (text, or answers with starts); a yes/no answer (BoolQ's true/false, as JSON booleans or as
    # the strings "True"/"False" of the real BoolQ file) is classification
    answer = row.get("answer")
    yes_no = isinstance(answer, str) and answer.strip().lower() in ("true", "false", "yes", "no")
    return isinstance(row.get("answers"), (dict, list)) or (isinstance(answer, str) and not yes_no)


def load_qa(name_or_path: str, seed: int = 42, validation_size: float = 0.1, test_size: float = 0.1) -> DatasetDict:
    """Train/validation/test splits of ``{id, context, question, answers}`` (see the module docstring);
    `name_or_path` may name an offline data asset (``disfl-qa``)."""
    path = os.path.expanduser(resolve_data_path(name_or_path))
    if os.path.isfile(path):
        files = {"train": path}
    elif os.path.isdir(path):
        files = {}
        for entry in sorted(os.listdir(path)):
            stem, ext = os.path.splitext(entry)
            if _SPLITS.get(stem.lower()) and ext in (".json", ".jsonl"):
                files[_SPLITS[stem.lower()]] = os.path.join(path, entry)
        if "train" not in files:
            raise UserInputError(f"dataset folder {path} has no train.json / train.jsonl")
    else:
        raise UserInputError(f"dataset {name_or_path!r}: no such file or folder; extractive QA reads SQuAD JSON or "
                             "JSON Lines with context, question and answers")
    splits = {}
    for split, f in files.items():
        rows = _read_file(f)
        if not rows:
            raise UserInputError(f"data file {f} holds no questions")
        _check(rows, f"data file {f}")
        splits[split] = rows
    missing = [s for s in ("validation", "test") if s not in splits]
    if missing:
        rows = splits["train"]
        order = np.random.default_rng(seed).permutation(len(rows))
        n_val = int(round(len(rows) * validation_size)) if "validation" in missing else 0
        n_test = int(round(len(rows) * test_size)) if "test" in missing else 0
        if len(rows) - n_val - n_test < 1 or any(n < 1 for s, n in (("validation", n_val), ("test", n_test))
                                                 if s in missing):
            raise UserInputError(f"{files['train']}: {len(rows)} questions are too few to carve validation and test "
                                 "splits out of; give more or dev/test files")
        if "validation" in missing:
            splits["validation"] = [rows[i] for i in sorted(order[:n_val])]
        if "test" in missing:
            splits["test"] = [rows[i] for i in sorted(order[n_val:n_val + n_test])]
        splits["train"] = [rows[i] for i in sorted(order[n_val + n_test:])]
    # train: only the questions whose answer has a place in the context (or that have none)
    train = [r for r in splits["train"] if -1 not in r["answers"]["answer_start"]]
    return DatasetDict({s: Dataset.from_list(train if s == "train" else splits[s])
                        for s in ("train", "validation", "test")})


def has_unanswerable(dataset: DatasetDict) -> bool:
    return any(not a["text"] for split in dataset.values() for a in split["answers"])


def prepare_features(examples: dict, tokenizer, max_length: int, doc_stride: int, labels: bool = True,
                     prefix: str = "") -> dict:
    """Windows of a batch of questions (see the module docstring): model inputs (named with `prefix`), and with
    `labels` the ``labels`` ``[start, end]`` of each window; always ``example_id`` and the context's
    ``offset_mapping`` (None outside the context) for `postprocess`."""
    questions = [q.lstrip() for q in examples["question"]]
    enc = tokenizer(questions, examples["context"], truncation="only_second", max_length=max_length,
                    stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding=False)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets = enc.pop("offset_mapping")
    out = {f"{prefix}{k}": v for k, v in enc.items()}
    out["example_id"], out["offset_mapping"] = [], []
    if labels:
        out["labels"] = []
    for i, offs in enumerate(offsets):
        seq = enc.sequence_ids(i)
        sample = sample_map[i]
        out["example_id"].append(examples["id"][sample])
        out["offset_mapping"].append([o if seq[k] == 1 else None for k, o in enumerate(offs)])
        if not labels:
            continue
        answers = examples["answers"][sample]
        cls = 0
        if not answers["answer_start"]:
            out["labels"].append([cls, cls])
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        ctx = [k for k, s in enumerate(seq) if s == 1]
        if not ctx or offs[ctx[0]][0] > start_char or offs[ctx[-1]][1] < end_char:
            out["labels"].append([cls, cls])  # the answer is not (wholly) in this window
            continue
        start = max(k for k in ctx if offs[k][0] <= start_char)  # the token the answer starts in
        end = min(k for k in ctx if offs[k][1] >= end_char)  # the token it ends in
        out["labels"].append([start, max(start, end)])
    return out


def postprocess(examples: Dataset, features: Dataset, start_logits, end_logits, n_best: int = 20,
                max_answer_length: int = 30, null_threshold: float = 0.0, allow_no_answer: bool = False) -> dict:
    """``{example id: answer text}`` from the windows' logits (rows of `start_logits` / `end_logits` follow
    `features`; padding beyond a window's length is ignored)."""
    by_example: dict[str, list[int]] = {}
    for i, eid in enumerate(features["example_id"]):
        by_example.setdefault(eid, []).append(i)
    offsets_all = features["offset_mapping"]
    answers = {}
    for ex in examples:
        best_text, best_score, null_score = "", -np.inf, np.inf
        for i in by_example.get(ex["id"], []):
            offsets = offsets_all[i]
            s_log, e_log = np.asarray(start_logits[i])[: len(offsets)], np.asarray(end_logits[i])[: len(offsets)]
            null_score = min(null_score, float(s_log[0] + e_log[0]))
            for s in np.argsort(s_log)[::-1][:n_best]:
                for e in np.argsort(e_log)[::-1][:n_best]:
                    if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(s_log[s] + e_log[e])
                    if score > best_score:
                        best_score = score
                        best_text = ex["context"][offsets[s][0]:offsets[e][1]]
        if allow_no_answer and (best_score == -np.inf or null_score - best_score > null_threshold):
            best_text = ""
        answers[ex["id"]] = best_text
    return answers
