import json
import os

import numpy as np
import pytest
from conftest import make_tokenizer, save_tiny_assets, tiny_bert

from hfcompress import assets
from hfcompress.data import load_text_classification, stratified_split
from hfcompress.metrics import accuracy, compute_classification_metrics, f1
from hfcompress.run.finetune import has_task_head, prepare_teacher


def test_stratified_split_is_deterministic_and_stratified():
    labels = np.array([0] * 700 + [1] * 300)
    a = stratified_split(labels, 0.1, 0.2, seed=1)
    b = stratified_split(labels, 0.1, 0.2, seed=1)
    c = stratified_split(labels, 0.1, 0.2, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    train, val, test = a
    assert len(set(train) | set(val) | set(test)) == 1000 and len(train) + len(val) + len(test) == 1000
    assert (labels[val] == 1).mean() == pytest.approx(0.3) and (labels[test] == 1).mean() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="sum below 1"):
        stratified_split(labels, 0.6, 0.5, seed=0)


def test_local_json_dataset_with_string_labels(tmp_path):
    _, data = save_tiny_assets(tmp_path)
    dsd = load_text_classification(data)
    assert set(dsd) == {"train", "validation", "test"}
    assert dsd["train"].features["label"].names == ["neg", "pos"]
    assert sum(len(d) for d in dsd.values()) == 96
    with pytest.raises(ValueError, match="text column 'sentence' not found in split 'train'; columns are"):
        load_text_classification(data, text_column="sentence")


def test_metrics_match_definitions():
    preds, refs = [1, 0, 1, 1, 0, 1], [1, 0, 0, 1, 1, 1]
    assert accuracy(preds, refs) == pytest.approx(4 / 6)
    # binary F1 of class 1: tp=3, fp=1, fn=1
    assert f1(preds, refs) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert f1(preds, refs, "macro") == pytest.approx((0.75 + 0.5) / 2)
    from transformers import EvalPrediction

    logits = np.eye(2)[preds]
    m = compute_classification_metrics(EvalPrediction(predictions=logits, label_ids=np.array(refs)))
    assert m == {"accuracy": pytest.approx(4 / 6), "f1": pytest.approx(0.75)}


def test_asset_names_resolve_and_missing_assets_explain_themselves(tmp_path, monkeypatch):
    monkeypatch.setenv("HFCOMPRESS_HOME", str(tmp_path / "empty"))
    assert assets.resolve_model_path("bert-base-uncased") == "bert-base-uncased"  # Hub ids pass through
    assert assets.resolve_model_path(str(tmp_path)) == str(tmp_path)  # so do paths
    with pytest.raises(FileNotFoundError, match="python -m hfcompress.assets install minilm-l6"):
        assets.resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert assets.canonical_name("MPNet") == "mpnet-base" and assets.canonical_name("nope") is None


def test_teacher_head_detection(tmp_path):
    headless = tmp_path / "headless"
    model = tiny_bert()
    model.base_model.save_pretrained(headless)  # encoder only, like a sentence-embedding checkpoint
    make_tokenizer().save_pretrained(headless)
    headed = tmp_path / "headed"
    model.save_pretrained(headed)
    assert has_task_head(str(headed)) is True
    assert has_task_head(str(headless)) is False
    with pytest.raises(ValueError, match="no trained classification head .* fine-tuning is disabled"):
        prepare_teacher(str(headless), None, str(tmp_path / "ft"), finetune=False)
    with pytest.raises(ValueError, match="no labelled 'train'"):
        prepare_teacher(str(headless), None, str(tmp_path / "ft"))
    assert prepare_teacher(str(headed), None, str(tmp_path / "ft")) == str(headed)


def test_headless_teacher_is_finetuned_once_and_cached(tmp_path):
    from conftest import make_dataset

    from hfcompress.run.finetune import FinetuneConfig

    headless = tmp_path / "headless"
    tiny_bert().base_model.save_pretrained(headless)
    make_tokenizer().save_pretrained(headless)
    cfg = FinetuneConfig(max_steps=2, per_device_train_batch_size=8)
    out = prepare_teacher(str(headless), make_dataset(), str(tmp_path / "ft"), cfg)
    assert has_task_head(out)
    summary = json.load(open(os.path.join(out, "finetune_summary.json")))
    stamp = os.path.getmtime(os.path.join(out, "model.safetensors"))
    prepare_teacher(str(headless), make_dataset(), str(tmp_path / "ft"), cfg)  # same key: the cached fine-tune is reused
    assert os.path.getmtime(os.path.join(out, "model.safetensors")) == stamp
    assert summary["reused"] is False and "validation_metrics" in summary


def test_head_learning_rate_trains_the_new_head_at_its_own_rate_and_keeps_earlier_cache_keys(tmp_path):
    """`FinetuneConfig.head_learning_rate`: the new head (everything outside the encoder) trains at its own peak
    rate, the encoder at `learning_rate`; weight decay is split as the plain Trainer splits it; a fine-tune without
    it keeps the cache key it had before the setting existed."""
    from conftest import make_dataset

    from hfcompress.run.finetune import FinetuneConfig, _cache_key, config_for_key

    headless = tmp_path / "headless"
    tiny_bert().base_model.save_pretrained(headless)
    make_tokenizer().save_pretrained(headless)
    from transformers import AutoModelForSequenceClassification

    trained = {}
    for name, head_lr in (("slow", None), ("fast", 1e-2)):  # the same seed: both heads start from the same draw
        cfg = FinetuneConfig(max_steps=3, per_device_train_batch_size=8, learning_rate=1e-9,
                             head_learning_rate=head_lr, warmup_ratio=0.0)
        out = prepare_teacher(str(headless), make_dataset(), str(tmp_path / name), cfg)
        trained[name] = AutoModelForSequenceClassification.from_pretrained(out).state_dict()
    moved = {k: (trained["fast"][k] - v).abs().max().item() for k, v in trained["slow"].items()
             if v.is_floating_point()}
    body = max(v for k, v in moved.items() if k.startswith("bert."))
    head = max(v for k, v in moved.items() if k.startswith("classifier."))
    assert body < 1e-6 < 1e-3 < head, (body, head)  # the encoder trained at 1e-9 in both, the head at 1e-2 in one

    # the optimizer's groups, read off a Trainer built as the fine-tune builds it
    from transformers import TrainingArguments

    from hfcompress.run.finetune import HeadRateTrainer

    model = tiny_bert()
    trainer = HeadRateTrainer(model=model, args=TrainingArguments(str(tmp_path / "t"), learning_rate=1e-4,
                                                                  weight_decay=0.01, report_to=[]),
                              head_learning_rate=5e-3)
    opt = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    decay = set(trainer.get_decay_parameter_names(model))
    for group in opt.param_groups:
        for p in group["params"]:
            n = names[id(p)]
            assert group["lr"] == (5e-3 if not n.startswith("bert.") else 1e-4), n
            assert group["weight_decay"] == (0.01 if n in decay else 0.0), n
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)

    plain = FinetuneConfig()
    assert "head_learning_rate" not in config_for_key(plain)
    data = make_dataset()
    assert _cache_key("m", data, plain, "text", "label") != _cache_key("m", data, cfg, "text", "label")
    with pytest.raises(ValueError, match="head_learning_rate"):
        FinetuneConfig(head_learning_rate=0)
