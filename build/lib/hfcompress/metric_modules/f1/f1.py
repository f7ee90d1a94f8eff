"""F1 as a local `evaluate` metric module, with scikit-learn's definitions of ``binary`` and ``macro``.

Per class ``c`` (one-vs-rest): ``F1_c = 2 TP / (2 TP + FP + FN)``, and 0 where the denominator is 0 (a class
neither predicted nor present). ``binary`` is ``F1_{pos_label}``; ``macro`` is the unweighted mean over the classes
``0 .. num_classes - 1``; ``None`` returns the per-class list. Loaded with ``evaluate.load(<this folder>)`` (see
`hfcompress.metrics.load_metric`), so nothing comes from the Hub.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "F1 score, the harmonic mean of precision and recall: 2 TP / (2 TP + FP + FN), per class or averaged."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels, as many as `predictions`.
    average (`str` or `None`, defaults to `'binary'`): `'binary'` (F1 of `pos_label`), `'macro'` (unweighted mean of
        the per-class F1) or `None` (the per-class F1 as a list).
    pos_label (`int`, defaults to 1): the positive class of `'binary'`.
    num_classes (`int`, optional): number of classes; defaults to the largest label seen plus one.
Returns:
    f1 (`float`, or `list` of `float` when `average` is `None`): in [0, 1].
Raises:
    ValueError: no predictions, not as many predictions as references, or an unknown `average`.
Examples:
    >>> f1 = evaluate.load("hfcompress/metric_modules/f1")
    >>> f1.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])
    {'f1': 0.8}
"""

_CITATION = ""


def f1_per_class(predictions: np.ndarray, references: np.ndarray, num_classes=None) -> np.ndarray:
    """One-vs-rest F1 of each class ``0 .. k - 1``, ``k = num_classes`` or the largest label plus one."""
    k = num_classes or int(max(predictions.max(initial=0), references.max(initial=0))) + 1
    f1 = np.zeros(k)
    for c in range(k):
        tp = np.sum((predictions == c) & (references == c))
        fp = np.sum((predictions == c) & (references != c))
        fn = np.sum((predictions != c) & (references == c))
        denom = 2 * tp + fp + fn
        f1[c] = 2 * tp / denom if denom else 0.0
    return f1


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    """F1 of integer class predictions: binary, macro or per class."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            format="numpy",
        )

    def _compute(self, predictions, references, average="binary", pos_label=1, num_classes=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
        if not len(references):
            raise ValueError("F1 of no predictions is undefined: got empty predictions and references")
        if average not in ("binary", "macro", None):
            raise ValueError(f"average must be 'binary', 'macro' or None, got {average!r}")
        per_class = f1_per_class(predictions, references, num_classes)
        if average == "binary":
            return {"f1": float(per_class[pos_label])}
        if average == "macro":
            return {"f1": float(per_class.mean())}
        return {"f1": per_class.tolist()}
