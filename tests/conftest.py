"""Tiny randomly initialised models and a small synthetic text dataset, so the suite runs in minutes offline."""

from __future__ import annotations

import csv
import os

# Before anything imports transformers' Trainer machinery (and through it bitsandbytes, which on a CPU with
# AVX512-BF16 asks the Hub for a kernel at import): offline, and hfcompress first, which keeps bitsandbytes to its
# own CPU code, as it does for users.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import hfcompress  # noqa: E402, F401

# isort: split
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


def command_fails(script_name: str, argv: list[str], tmp_path, fresh_process: bool = False) -> str:
    """Run ``scripts/<script_name>.py`` as its command line does (`hfcompress.cli.run_script`) on a user's mistake: it
    must end with exit status 2 and exactly one error line on stderr, no traceback. Returns the error line.

    In this process by default (the same `run_script` wrapper, without an interpreter start per case); with
    `fresh_process` as a real ``python scripts/...`` subprocess, so one case of each table still checks the command
    end to end."""
    import contextlib
    import io
    import subprocess
    import sys

    from hfcompress.cli import run_script

    if fresh_process:
        env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
        res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", f"{script_name}.py"), *argv], env=env,
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        code, err = res.returncode, res.stderr
    else:
        stream, home = io.StringIO(), os.environ.get("HFCOMPRESS_HOME")
        os.environ["HFCOMPRESS_HOME"] = str(tmp_path / "home")
        try:
            with contextlib.redirect_stderr(stream), pytest.raises(SystemExit) as exit_info:
                run_script(load_script(script_name).main, argv)
        finally:
            if home is None:
                os.environ.pop("HFCOMPRESS_HOME", None)
            else:
                os.environ["HFCOMPRESS_HOME"] = home
        code, err = exit_info.value.code, stream.getvalue()
    assert code == 2, f"exit {code}:\n{err[-3000:]}"
    assert "Traceback" not in err, "a user's mistake ends with one line, not a traceback:\n" + err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and err.count("error:") == 1, err[-3000:]
    return errors[0]


def whole_and_resumed(tmp_path, tokenizer, make_callback, seed=2):
    """A plain `Trainer` with the callback `make_callback()` trains a tiny classifier for 4 steps (checkpoints every
    2), and again resumed from the first run's checkpoint-2 in another folder: (uninterrupted model, resumed model),
    for a method's resume test."""
    from transformers import Trainer, TrainingArguments

    data = make_dataset().map(lambda b: tokenizer(b["text"], truncation=True), batched=True).remove_columns("text")

    def train(out, resume=None):
        model = tiny_bert(seed=seed)
        args = TrainingArguments(str(out), max_steps=4, save_steps=2, save_strategy="steps", report_to=[],
                                 per_device_train_batch_size=16, learning_rate=1e-2, use_cpu=True,
                                 logging_strategy="no", seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=data["train"], processing_class=tokenizer,
                          callbacks=[make_callback()])
        trainer.train(resume_from_checkpoint=resume)
        return model

    whole = train(tmp_path / "whole")
    return whole, train(tmp_path / "resumed", resume=str(tmp_path / "whole" / "checkpoint-2"))


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


def card_loading_code(card_text: str, heading: str = "## How to load it") -> str:
    """The first ```python block after `heading` in a rendered card."""
    rest = card_text.split(heading, 1)[1]
    return rest.split("```python\n", 1)[1].split("```", 1)[0]


def check_publishable_card(model_dir, run_dir=None, local_path=None, run_code=True):
    """Read ``<model_dir>/README.md`` as the Hub does and check that a user could publish it as it is:

    * the metadata parses (`huggingface_hub.ModelCard.load`): pipeline tag, library, tags, a model-index result per
      metric, `base_model` a Hub id (or absent), its relation one of the Hub's;
    * classes, input length and seed are those of the run's record (``hfcompress_record.json`` beside the model), and
      the accuracy shown is the measured one;
    * its loading code runs in a fresh process, with ``PATH = ...`` (the one line the card says to change) pointing
      at `local_path` (default: the model folder), and classifies two texts (tags a sentence; answers a question) without a pipeline complaint.

    Returns the `ModelCard`."""
    import json
    import re
    import subprocess
    import sys

    from huggingface_hub import ModelCard

    model_dir = str(model_dir)
    card = ModelCard.load(os.path.join(model_dir, "README.md"))
    data = card.data
    assert data.pipeline_tag in ("text-classification", "token-classification", "question-answering")
    assert data.library_name in ("transformers", "onnx")
    assert "hfcompress" in data.tags and data.eval_results, data
    for result in data.eval_results:
        assert result.task_type == data.pipeline_tag and isinstance(result.metric_value, float)
    if data.base_model is not None:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", data.base_model), data.base_model
        assert data.base_model_relation in ("finetune", "quantized", "adapter", "merge"), data.base_model_relation
    with open(os.path.join(model_dir, "hfcompress_record.json")) as fh:
        record = json.load(fh)
    assert "<redacted>" not in card.text or "--hub_token <redacted>" in card.text
    if "# the Hub repository" in card.text:  # published: no folder of the machine that made it
        from hfcompress.files import local_paths

        leaked = [p for p in local_paths(record) if p.count("/") > 2 and p in card.content]
        assert not leaked, leaked
    config = json.load(open(os.path.join(model_dir, "config.json")))
    reader = data.pipeline_tag == "question-answering"  # no classes: start and end logits
    for i, label in ({} if reader else config["id2label"]).items():
        assert f"{i} = `{label}`" in card.text, (i, label)
    max_length = (record["settings"].get("data") or {}).get("max_length")
    tagger = data.pipeline_tag == "token-classification"
    if max_length:
        assert f"up to {max_length} tokens" in card.text
        assert tagger or f"max_length={max_length}" in card.text  # (the token pipeline truncates by itself)
        tok_config = json.load(open(os.path.join(model_dir, "tokenizer_config.json")))
        assert tok_config.get("model_max_length") == max_length, tok_config.get("model_max_length")
        assert tok_config.get("max_length", max_length) == max_length
    metric = (record.get("data") or {}).get("metric") or "accuracy"
    value = record["comparison"]["model"]["metrics"][metric]
    assert f"{value:.4f}" in card.text and "seed None" not in card.text and "{'" not in card.text
    if run_code:
        code = card_loading_code(card.text)
        path_line = next(line for line in code.splitlines() if line.startswith("PATH = "))
        code = code.replace(path_line, f"PATH = {str(local_path or model_dir)!r}")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "warning"}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             cwd=str(run_dir or model_dir), timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "is not supported for" not in res.stderr, res.stderr[-2000:]
        labels = set((config.get("id2label") or {}).values())
        printed = res.stdout.strip().splitlines()[-1]
        if reader:  # answer_questions: one answer (a span of the context) per question
            assert printed.startswith("['") and printed.endswith("']"), printed
        elif tagger:  # the entities found (a tiny random tagger may find none)
            assert printed.startswith("[") and ("'entity_group'" in printed or printed == "[]"), printed
        else:
            assert any(f"'label': '{label}'" in printed for label in labels), printed
    return card
