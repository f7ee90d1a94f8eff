"""Tiny randomly initialised models and a small synthetic text dataset, so the suite runs in minutes offline."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    MPNetConfig,
    PreTrainedTokenizerFast,
    TrainerCallback,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["good", "great", "fine", "superb", "bad", "awful", "dull", "poor", "movie", "plot", "the", "a", "very", "not"]
LABELS = ["neg", "pos"]


def make_tokenizer(cls_token="[CLS]", sep_token="[SEP]", offset=0) -> PreTrainedTokenizerFast:
    """A word-level tokenizer; `offset` shifts ordinary ids (like MPNet's vocabulary vs MiniLM's)."""
    specials = ["[PAD]", "[UNK]", cls_token, sep_token]
    vocab = {t: i for i, t in enumerate(specials)}
    for i, w in enumerate(WORDS):
        vocab[w] = len(specials) + offset + i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls_token} $A {sep_token}", special_tokens=[(cls_token, vocab[cls_token]), (sep_token, vocab[sep_token])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token=cls_token, sep_token=sep_token
    )


def tiny_bert(num_layers=2, hidden=32, heads=4, seed=0, vocab=64, labels=LABELS):
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
        intermediate_size=hidden * 2, max_position_embeddings=64, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return AutoModelForSequenceClassification.from_config(cfg)


def tiny_mpnet(num_layers=4, hidden=48, heads=4, seed=1, vocab=64, labels=LABELS):
    torch.manual_seed(seed)
    cfg = MPNetConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
        intermediate_size=hidden * 2, max_position_embeddings=66, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
    )
    return AutoModelForSequenceClassification.from_config(cfg)


def make_texts(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for _ in range(n):
        k = int(torch.randint(3, 9, (1,), generator=g))
        words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)]
        score = sum(w in ("good", "great", "fine", "superb") for w in words) - sum(
            w in ("bad", "awful", "dull", "poor") for w in words
        )
        texts.append(" ".join(words))
        labels.append(int(score >= 0))
    return texts, labels


def make_dataset(n_train=64, n_eval=16) -> DatasetDict:
    feats = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    tr, ev = make_texts(n_train, 0), make_texts(n_eval, 1)
    return DatasetDict(
        train=Dataset.from_dict({"text": tr[0], "label": tr[1]}, features=feats),
        validation=Dataset.from_dict({"text": ev[0], "label": ev[1]}, features=feats),
        test=Dataset.from_dict({"text": ev[0], "label": ev[1]}, features=feats),
    )


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def dataset():
    return make_dataset()


class GradCapture(TrainerCallback):
    """Copies every gradient (the model's, and `extra_module`'s, e.g. distillation projections) just before the first
    optimizer step; keeps every log (`logs`) and the logged training losses (`losses`)."""

    def __init__(self, extra_module=None):
        self.grads, self.extra, self.losses, self.logs = None, extra_module, [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            named = list(model.named_parameters())
            if self.extra is not None:
                named += [(f"kd.{n}", p) for n, p in self.extra.named_parameters()]
            self.grads = {n: p.grad.detach().clone() for n, p in named if p.grad is not None}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.logs.append(dict(logs))
            if "loss" in logs:
                self.losses.append(logs["loss"])


def load_script(name: str):
    """`scripts/<name>.py` as a module (registered in sys.modules, so its dataclasses resolve), to call its `main` in
    this process or read its argument groups."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"{name}_script", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def save_tiny_assets(root, teacher_kind="bert", teacher_offset=0):
    """Write a tiny teacher (with a trained-looking task head), its tokenizer and a JSON dataset to `root`.
    Returns (teacher_dir, data_file)."""
    import json

    root = str(root)
    teacher_dir = os.path.join(root, "teacher")
    if teacher_kind == "bert":
        tok, model = make_tokenizer(), tiny_bert(num_layers=4, seed=3)
    else:
        tok, model = make_tokenizer("<s>", "</s>", offset=teacher_offset), tiny_mpnet(num_layers=4, seed=3)
    model.save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)
    texts, labels = make_texts(96, 5)
    data_file = os.path.join(root, "data.json")
    with open(data_file, "w") as fh:
        for t, l in zip(texts, labels):
            fh.write(json.dumps({"text": t, "label": LABELS[l]}) + "\n")
    return teacher_dir, data_file


def write_csv(path, data, header=("text", "label"), delimiter=","):
    """A CSV/TSV file as a user writes one (header row, then `data` rows); returns the path as a string."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(header)
        w.writerows(data)
    return str(path)


def write_reviews_csv(path, n=64, seed=7):
    """`make_texts(n, seed)` as a user's CSV with class names (neg/pos) as labels; returns the path."""
    texts, labels = make_texts(n, seed)
    return write_csv(path, [(t, LABELS[l]) for t, l in zip(texts, labels)])


# The first lines of a script run in a fresh interpreter where hfcompress cannot be imported (only the saved folder,
# torch and transformers): the loading-without-hfcompress checks of low rank, structured pruning and speech models.
NO_HFCOMPRESS = r"""
import sys
sys.modules["hfcompress"] = None          # as if it were not installed
try:
    import hfcompress  # noqa: F401
    raise SystemExit("hfcompress is importable")
except ImportError:
    pass
"""
