"""Classification metrics computed locally (``evaluate.load("accuracy")`` needs the Hub).

`compute_classification_metrics` has the signature `Trainer(compute_metrics=...)` expects; every script uses it.
"""

from __future__ import annotations

import numpy as np


def accuracy(predictions, references) -> float:
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
    return float((predictions == references).mean()) if len(references) else float("nan")


def f1_per_class(predictions, references, num_classes: int | None = None) -> np.ndarray:
    predictions, references = np.asarray(predictions), np.asarray(references)
    k = num_classes or int(max(predictions.max(initial=0), references.max(initial=0))) + 1
    f1 = np.zeros(k)
    for c in range(k):
        tp = np.sum((predictions == c) & (references == c))
        fp = np.sum((predictions == c) & (references != c))
        fn = np.sum((predictions != c) & (references == c))
        denom = 2 * tp + fp + fn
        f1[c] = 2 * tp / denom if denom else 0.0
    return f1


def f1(predictions, references, average: str = "binary", pos_label: int = 1, num_classes: int | None = None) -> float:
    """F1 as in scikit-learn: ``binary`` (of `pos_label`) or ``macro`` (unweighted mean over classes)."""
    per_class = f1_per_class(predictions, references, num_classes)
    if average == "binary":
        return float(per_class[pos_label])
    if average == "macro":
        return float(per_class.mean())
    raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")


def compute_classification_metrics(eval_pred) -> dict[str, float]:
    """`compute_metrics` for `Trainer`: accuracy and F1 (binary for 2 classes, else macro)."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    preds = np.asarray(logits).argmax(-1)
    labels = np.asarray(labels)
    num_classes = np.asarray(logits).shape[-1]
    out = {"accuracy": accuracy(preds, labels)}
    if num_classes == 2:
        out["f1"] = f1(preds, labels, "binary", num_classes=2)
    else:
        out["f1_macro"] = f1(preds, labels, "macro", num_classes=num_classes)
    return out
