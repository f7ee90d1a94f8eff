"""Accuracy as a local `evaluate` metric module: the fraction of predictions equal to their reference.

Loaded with ``evaluate.load(<this folder>)`` (see `hfcompress.metrics.load_metric`), so nothing comes from the Hub.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their reference, (TP + TN) / (TP + TN + FP + FN)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels, as many as `predictions`.
Returns:
    accuracy (`float`): in [0, 1].
Raises:
    ValueError: no predictions, or not as many predictions as references.
Examples:
    >>> accuracy = evaluate.load("hfcompress/metric_modules/accuracy")
    >>> accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Accuracy of integer class predictions."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            format="numpy",
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
        if not len(references):
            raise ValueError("accuracy of no predictions is undefined: got empty predictions and references")
        return {"accuracy": float((predictions == references).mean())}
