"""The local `evaluate` metric modules (hfcompress/metric_modules): they load offline and give hand-computed numbers,
and `hfcompress.metrics` keeps the outputs it had when it computed them with numpy."""

import math
import socket

import evaluate
import numpy as np
import pytest
from transformers import EvalPrediction

from hfcompress.metric_modules import METRIC_MODULES, metric_module_path
from hfcompress.metrics import accuracy, compute_classification_metrics, error_rates, f1, f1_per_class, load_metric

# 3 classes. Per class (tp, fp, fn): 0 -> (2, 0, 0), F1 1; 1 -> (1, 1, 1), F1 0.5; 2 -> (1, 1, 1), F1 0.5.
PREDS3, REFS3 = [0, 1, 2, 2, 1, 0], [0, 1, 1, 2, 2, 0]
# 2 classes. Class 1: tp 3, fp 1, fn 1 -> F1 6 / 8; class 0: tp 1, fp 1, fn 1 -> F1 0.5. 4 of 6 right.
PREDS2, REFS2 = [1, 0, 1, 1, 0, 1], [1, 0, 0, 1, 1, 1]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", METRIC_MODULES)
def test_each_module_loads_from_the_package_without_network(name, no_network):
    metric = evaluate.load(metric_module_path(name), keep_in_memory=True)
    assert isinstance(metric, evaluate.Metric) and metric.name == name
    assert set(metric.features) == {"predictions", "references"}
    assert load_metric(name) is load_metric(name), "loaded once, then cached"
    with pytest.raises(ValueError, match="no local metric module"):
        metric_module_path("bleu")


def test_accuracy_and_f1_modules_match_hand_computation(no_network):
    acc, f1m = load_metric("accuracy"), load_metric("f1")
    assert acc.compute(predictions=PREDS2, references=REFS2) == {"accuracy": pytest.approx(4 / 6)}
    assert f1m.compute(predictions=PREDS2, references=REFS2) == {"f1": pytest.approx(6 / 8)}
    assert f1m.compute(predictions=PREDS2, references=REFS2, pos_label=0) == {"f1": pytest.approx(0.5)}
    assert f1m.compute(predictions=PREDS3, references=REFS3, average="macro") == {"f1": pytest.approx(2 / 3)}
    assert f1m.compute(predictions=PREDS3, references=REFS3, average=None)["f1"] == pytest.approx([1, 0.5, 0.5])
    # a 4th class that never occurs counts as F1 0 in the macro mean
    assert f1m.compute(predictions=PREDS3, references=REFS3, average="macro", num_classes=4)["f1"] == pytest.approx(0.5)


def test_wer_module_word_and_character_error_rates(no_network):
    wer = load_metric("wer")
    out = wer.compute(predictions=["a b x d"], references=["a b c d"])
    assert out["wer"] == pytest.approx(0.25)  # 1 substitution / 4 words
    assert out["cer"] == pytest.approx(1 / 7)  # 1 substitution / 7 characters ("a b c d", spaces count)
    # corpus level, summed before dividing. Words: helo/hello 1 substitution, "d" 1 insertion, over 2 + 3 reference
    # words. Characters: 1 deletion ("l") over 11, then "a b c d" (runs of spaces collapsed) vs "a b c": 2 insertions
    # over 5.
    out = error_rates(["helo world", "a b  c d"], ["hello world", "a b c"])
    assert out["wer"] == pytest.approx((1 + 1) / (2 + 3))
    assert out["cer"] == pytest.approx((1 + 2) / (11 + 5))
    # 1 substitution + 2 insertions over 1 word; 1 substitution + 4 insertions over 1 character: rates above 1
    assert error_rates(["x y z"], ["a"]) == {"wer": pytest.approx(3.0), "cer": pytest.approx(5.0)}


def test_empty_and_mismatched_inputs_are_clear_errors(no_network):
    for name, good in (("accuracy", [1]), ("f1", [1]), ("wer", ["a"])):
        metric = load_metric(name)
        with pytest.raises(ValueError, match="empty predictions and references"):
            metric.compute(predictions=[], references=[])
        with pytest.raises(ValueError, match=r"Mismatch in the number of predictions \(1\) and references \(2\)"):
            metric.compute(predictions=good, references=good * 2)
    with pytest.raises(ValueError, match="references hold no word"):
        load_metric("wer").compute(predictions=["a"], references=[" "])
    with pytest.raises(ValueError, match="average must be"):
        load_metric("f1").compute(predictions=[1], references=[1], average="micro")
    # the public functions keep their pre-evaluate conventions
    with pytest.raises(ValueError, match="differ in shape"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="differ in shape"):
        f1([1, 0], [1])
    with pytest.raises(ValueError, match="average must be 'binary' or 'macro'"):
        f1(PREDS2, REFS2, "micro")
    assert math.isnan(accuracy([], []))
    assert f1([], [], num_classes=2) == 0.0 and f1([], [], "macro", num_classes=3) == 0.0
    assert np.array_equal(f1_per_class([], []), np.zeros(1))


def test_public_functions_and_trainer_metrics_match_hand_computation():
    assert accuracy(PREDS3, REFS3) == pytest.approx(4 / 6)
    assert f1(PREDS2, REFS2) == pytest.approx(6 / 8)
    assert f1(PREDS2, REFS2, "macro") == pytest.approx((6 / 8 + 0.5) / 2)
    assert f1(PREDS3, REFS3, "macro") == pytest.approx(2 / 3)
    assert f1_per_class(PREDS3, REFS3).tolist() == pytest.approx([1, 0.5, 0.5])
    assert f1_per_class(PREDS3, REFS3, num_classes=4).tolist() == pytest.approx([1, 0.5, 0.5, 0])

    m3 = compute_classification_metrics(EvalPrediction(predictions=np.eye(3)[PREDS3], label_ids=np.array(REFS3)))
    assert m3 == {"accuracy": pytest.approx(4 / 6), "f1_macro": pytest.approx(2 / 3)}
    logits2 = np.eye(2)[PREDS2]
    m2 = compute_classification_metrics(EvalPrediction(predictions=(logits2, logits2 * 0), label_ids=np.array(REFS2)))
    assert m2 == {"accuracy": pytest.approx(4 / 6), "f1": pytest.approx(6 / 8)}
    assert all(type(v) is float for v in (*m2.values(), *m3.values()))


def _numpy_reference(logits, labels):
    """What `compute_classification_metrics` computed before it went through `evaluate` (its numpy code, verbatim)."""
    preds, k = logits.argmax(-1), logits.shape[-1]
    per_class = np.zeros(k)
    for c in range(k):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        denom = 2 * tp + fp + fn
        per_class[c] = 2 * tp / denom if denom else 0.0
    out = {"accuracy": float((preds == labels).mean())}
    out.update({"f1": float(per_class[1])} if k == 2 else {"f1_macro": float(per_class.mean())})
    return out


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_trainer_metrics_identical_to_the_numpy_code_they_replace(num_classes):
    rng = np.random.default_rng(num_classes)
    logits = rng.normal(size=(1275, num_classes)).astype(np.float32)
    labels = rng.integers(0, num_classes, 1275)
    got = compute_classification_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert got == _numpy_reference(logits, labels)  # bit for bit, same keys
