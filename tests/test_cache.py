"""Teacher-output caching: same result as running the teacher on the fly, reuse without recomputation, teachers
with another tokenizer."""

from contextlib import nullcontext

import pytest
import torch
from conftest import make_dataset, make_tokenizer, tiny_bert, tiny_mpnet

from hfcompress import DistillationArguments, DistillationDataCollator, DistillationTrainer
from hfcompress.run.data import cache_teacher_on_train, tokenize_for_distillation


def _train(tmp_path, name, train, collator, teacher=None, teacher_config=None, hidden_layers=None, hidden=False):
    args = DistillationArguments(
        output_dir=str(tmp_path / name), per_device_train_batch_size=8, max_steps=6, report_to="none",
        save_strategy="no", seed=3, use_cpu=True, alpha=0.8, hidden_weight=1.0 if hidden else 0.0,
        layer_map="1:2,2:4" if hidden else None,
    )
    trainer = DistillationTrainer(model=tiny_bert(seed=0), args=args, teacher_model=teacher, teacher_config=teacher_config,
                                  cached_hidden_layers=hidden_layers, train_dataset=train, data_collator=collator)
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _setup(teacher_tok, hidden, tmp_path, calls=None):
    student_tok = make_tokenizer()
    data = make_dataset(n_train=48)
    tokenized, separate = tokenize_for_distillation(data, student_tok, teacher_tok, "text", "label", 32)
    collator = DistillationDataCollator(student_tok, teacher_tok if separate else None)
    teacher = tiny_mpnet(seed=1)

    def loader():
        if calls is not None:
            calls.append(1)
        return teacher

    cached, meta = cache_teacher_on_train(tokenized, "tiny-teacher", loader, collator, str(tmp_path / "cache"),
                                          [2, 4] if hidden else None, separate, 16, lambda desc=None: nullcontext())
    return tokenized, cached, meta, collator, teacher, separate


@pytest.mark.parametrize("teacher_tokenizer", ["same", "other"])
@pytest.mark.parametrize("hidden", [False, True])
def test_cached_and_online_distillation_agree(tmp_path, teacher_tokenizer, hidden):
    # "other": MPNet-style special tokens and shifted ids, so the teacher must read its own teacher_input_ids.
    t_tok = make_tokenizer() if teacher_tokenizer == "same" else make_tokenizer("<s>", "</s>", offset=4)
    tokenized, cached, meta, collator, teacher, separate = _setup(t_tok, hidden, tmp_path)
    assert separate == (teacher_tokenizer == "other")
    assert "teacher_logits" in cached["train"].column_names
    assert not any(c.startswith("teacher_input") for c in cached["train"].column_names)
    online = _train(tmp_path, "online", tokenized["train"], collator, teacher=teacher, hidden=hidden)
    from_cache = _train(tmp_path, "cached", cached["train"], collator, teacher_config=teacher.config,
                        hidden_layers=meta["hidden_layers"], hidden=hidden)
    # Logits are cached in float32 (exact up to padding); hidden states in float16 (close, not exact).
    atol = 2e-4 if hidden else 1e-5
    for k in online:
        assert torch.allclose(online[k], from_cache[k], atol=atol), k
    moved = max((online[k] - tiny_bert(seed=0).state_dict()[k]).abs().max().item() for k in online)
    assert moved > 1e-4, "training must have changed the student"


def test_cache_is_reused_not_recomputed(tmp_path):
    calls = []
    _, cached1, meta1, *_ = _setup(make_tokenizer(), False, tmp_path, calls)
    _, cached2, meta2, *_ = _setup(make_tokenizer(), False, tmp_path, calls)
    assert len(calls) == 1 and meta1["reused"] is False and meta2["reused"] is True
    assert cached1["train"]["teacher_logits"] == cached2["train"]["teacher_logits"]


def test_cache_key_changes_with_options(tmp_path):
    calls = []
    _setup(make_tokenizer(), False, tmp_path, calls)
    _setup(make_tokenizer(), True, tmp_path, calls)  # hidden states asked for: recomputed
    assert len(calls) == 2


def test_cache_rows_follow_their_examples(tmp_path):
    """Each row carries its own teacher logits: shuffling the dataset keeps them paired."""
    tokenized, cached, _, collator, teacher, _ = _setup(make_tokenizer(), False, tmp_path)
    shuffled = cached["train"].shuffle(seed=0).select(range(5))
    batch = collator([dict(r) for r in shuffled])
    with torch.no_grad():
        ref = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(batch["teacher_logits"], ref, atol=1e-5)


def test_training_from_cache_without_teacher_needs_all_outputs(tmp_path):
    tokenized, *_ , collator, teacher, _ = _setup(make_tokenizer(), False, tmp_path)
    with pytest.raises(ValueError, match="found none of the cached teacher columns .* and no teacher model"):
        _train(tmp_path, "x", tokenized["train"], collator, teacher_config=teacher.config)


def test_teacher_runs_longest_rows_first_and_rows_keep_their_order(tmp_path):
    """The pass batches rows of like length (less padding), then puts every row back in its place."""
    from hfcompress.distill.cache import compute_teacher_outputs

    tok = make_tokenizer()
    tokenized, *_ = tokenize_for_distillation(make_dataset(n_train=40), tok, tok, "text", "label", 32)
    train = tokenized["train"]
    teacher = tiny_mpnet(seed=1).eval()
    widths = []
    hook = teacher.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]),
                                             with_kwargs=True)
    collator = DistillationDataCollator(tok)
    out = compute_teacher_outputs(teacher, train, lambda f: tok.pad(f, return_tensors="pt"), batch_size=8)
    hook.remove()
    lengths = [len(x) for x in train["input_ids"]]
    assert len(set(lengths)) > 3 and len(widths) == 5
    assert widths == sorted(widths, reverse=True) and widths[-1] < max(lengths)  # longest first: less padding
    assert out["input_ids"] == train["input_ids"]  # the rows' own order
    batch = collator([dict(out[i]) for i in range(len(out))])
    with torch.no_grad():
        ref = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(batch["teacher_logits"], ref, atol=1e-5)


def test_content_fingerprint_reads_the_rows_not_how_they_were_made():
    """Caches are keyed by `content_fingerprint`: equal rows give one key whatever made them (a `map` whose function
    captures another object, a concatenation in several chunks), other rows another key. Before, the key carried the
    datasets fingerprint of the transform history in the table's metadata: a Whisper student given a shorter window
    (its own tokenizer object) missed the teacher's 18-minute pseudo-label pass of the same rows."""
    from datasets import Dataset, concatenate_datasets

    from hfcompress.fingerprint import content_fingerprint

    base = Dataset.from_dict({"text": ["a b", "c", "d e f", "g"]})

    class Tok:  # two objects that label alike but hash apart in datasets' transform fingerprint
        def __init__(self, name):
            self.name = name

        def __call__(self, text):
            return [len(w) for w in text.split()]

    one = base.map(lambda r, t=Tok("one"): {"labels": t(r["text"])})
    two = base.map(lambda r, t=Tok("two"): {"labels": t(r["text"])})
    assert one._fingerprint != two._fingerprint  # datasets sees two histories ...
    chunked = concatenate_datasets([two.select(range(2)), two.select(range(2, 4))])
    assert len(chunked.with_format("arrow")[:].column("text").chunks) == 2
    assert content_fingerprint(one) == content_fingerprint(two) == content_fingerprint(chunked)  # ... one content
    other = base.map(lambda r: {"labels": [len(r["text"])]})
    assert content_fingerprint(other) != content_fingerprint(one)
    assert content_fingerprint(one.select([1, 0, 2, 3])) != content_fingerprint(one)  # the order is content
