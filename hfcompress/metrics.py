"""Task metrics through `evaluate`, with the metric modules shipped in the package (never fetched from the Hub).

``evaluate.load("accuracy")`` downloads its script from the Hub, which fails offline; the modules under
`hfcompress.metric_modules` (``accuracy``, ``f1``, ``wer``, ``entity_f1``) are `evaluate.Metric` subclasses loaded from their local
folder by `load_metric`, once per process, so they work with ``HF_HUB_OFFLINE=1``. ``evaluate.load`` copies each
script into ``HF_MODULES_CACHE`` (default ``~/.cache/huggingface/modules``), so that folder must be writable (set
``HF_HOME`` or ``HF_MODULES_CACHE`` where ``HOME`` is read-only); the metrics keep their inputs in memory, no cache
file is written.

`compute_classification_metrics` has the signature `Trainer(compute_metrics=...)` expects; every script uses it.
The functions keep the conventions they had before `evaluate` (empty inputs: accuracy NaN, F1 0).
"""

from __future__ import annotations

import logging

import numpy as np

from .metric_modules import metric_module_path

logger = logging.getLogger(__name__)

_METRICS: dict = {}  # name -> loaded evaluate.EvaluationModule, one per process


def load_metric(name: str):
    """The local `evaluate` metric module `name` (``accuracy``, ``f1`` or ``wer``), loaded on first use and cached.

    Loaded with ``evaluate.load(<package folder>, keep_in_memory=True)``: no Hub access, no cache file per call.
    `evaluate` is imported here, not at the top, so that ``import hfcompress.metrics`` stays cheap.
    """
    metric = _METRICS.get(name)
    if metric is None:
        import evaluate

        path = metric_module_path(name)
        try:
            metric = evaluate.load(path, keep_in_memory=True)
        except OSError as e:  # evaluate copies the script into HF_MODULES_CACHE, even when it is already there
            raise OSError(f"could not load the local metric module {name!r}: evaluate needs a writable "
                          f"{evaluate.config.HF_MODULES_CACHE} (set HF_HOME or HF_MODULES_CACHE to a writable "
                          f"folder): {e}") from e
        _METRICS[name] = metric
        logger.debug("loaded metric module %s from %s", name, path)
    return metric


def _paired(predictions, references) -> tuple[np.ndarray, np.ndarray]:
    """Both as arrays, checked to have the same shape."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    if predictions.shape != references.shape:
        raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
    return predictions, references


def accuracy(predictions, references) -> float:
    """Fraction of predictions equal to their reference (NaN when there are none)."""
    predictions, references = _paired(predictions, references)
    if not len(references):
        return float("nan")
    return float(load_metric("accuracy").compute(predictions=predictions.ravel(), references=references.ravel())["accuracy"])


def f1_per_class(predictions, references, num_classes: int | None = None) -> np.ndarray:
    """One-vs-rest F1 of each class ``0 .. k - 1`` (``k = num_classes`` or the largest label plus one); 0 where a
    class is neither predicted nor present, all zeros when there are no predictions."""
    predictions, references = _paired(predictions, references)
    if not predictions.size:
        return np.zeros(num_classes or 1)
    out = load_metric("f1").compute(predictions=predictions.ravel(), references=references.ravel(), average=None,
                                    num_classes=num_classes)
    return np.asarray(out["f1"], dtype=float)


def f1(predictions, references, average: str = "binary", pos_label: int = 1, num_classes: int | None = None) -> float:
    """F1 as in scikit-learn: ``binary`` (of `pos_label`) or ``macro`` (unweighted mean over classes)."""
    if average not in ("binary", "macro"):
        raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")
    predictions, references = _paired(predictions, references)
    if not predictions.size:
        per_class = f1_per_class(predictions, references, num_classes)
        return float(per_class[pos_label] if average == "binary" else per_class.mean())
    out = load_metric("f1").compute(predictions=predictions.ravel(), references=references.ravel(), average=average,
                                    pos_label=pos_label, num_classes=num_classes)
    return float(out["f1"])


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


def error_rates(predictions, references) -> dict[str, float]:
    """Corpus-level word and character error rates of transcriptions, ``{"wer": ..., "cer": ...}``.

    Word-level (whitespace tokens) and character-level Levenshtein distances summed over the corpus, divided by the
    number of reference words and characters (see ``metric_modules/wer/wer.py``).
    """
    out = load_metric("wer").compute(predictions=list(predictions), references=list(references))
    return {"wer": float(out["wer"]), "cer": float(out["cer"])}


def entity_metrics(predictions, references) -> dict:
    """Entity-level precision / recall / F1 (seqeval's default mode) of tag-name sequences, overall and per entity
    type, through the local ``entity_f1`` module (see ``metric_modules/entity_f1/entity_f1.py``). Flat keys:
    ``precision``, ``recall``, ``f1``, ``accuracy`` (over tags), then ``<type>_precision`` / ``_recall`` / ``_f1``
    / ``_number`` for each type."""
    out = load_metric("entity_f1").compute(predictions=[list(p) for p in predictions],
                                           references=[list(r) for r in references])
    flat = {k: float(out[f"overall_{k}"]) for k in ("precision", "recall", "f1", "accuracy")}
    for kind, scores in sorted((k, v) for k, v in out.items() if isinstance(v, dict)):
        flat.update({f"{kind}_{m}": (int(v) if m == "number" else float(v)) for m, v in scores.items()})
    return flat


def qa_metrics(predictions, references) -> dict:
    """Exact match and F1 (SQuAD v1.1 / v2.0, in [0, 1]) of predicted answers against each question's reference
    answers (an empty list: no answer), through the local ``squad`` module; ``has_answer_*`` / ``no_answer_*`` apart."""
    return dict(load_metric("squad").compute(predictions=list(predictions), references=[list(r) for r in references]))
