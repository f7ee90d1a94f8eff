"""Exact match and F1 of extractive answers, SQuAD v1.1 / v2.0 definitions, as a local `evaluate` metric module.

Both compare normalised answers: lower-cased, punctuation removed, the articles a/an/the removed, whitespace collapsed
(the official evaluation script's `normalize_answer`). Exact match: the normalised prediction equals a normalised
reference. F1: token overlap of the two normalised answers (precision and recall over their whitespace tokens). Each
question takes its best reference; the scores are means over questions, in [0, 1]. A question without an answer
(its references empty, SQuAD v2) scores 1 on both when the prediction is empty and 0 otherwise; ``has_answer_*`` and
``no_answer_*`` give the two groups apart, with their counts.
"""

import collections
import re
import string

import datasets
import evaluate

_DESCRIPTION = "Exact match and token F1 of extractive answers (SQuAD v1.1 / v2.0), best over each question's references."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one predicted answer per question ("" for no answer).
    references (`list` of `list` of `str`): the reference answers of each question ([] when it has none).
Returns:
    exact_match, f1 (`float`, in [0, 1]), total, and has_answer_* / no_answer_* for the two groups of questions.
Examples:
    >>> squad = evaluate.load("hfcompress/metric_modules/squad")
    >>> squad.compute(predictions=["the Eiffel tower"], references=[["Eiffel Tower"]])["exact_match"]
    1.0
"""

_CITATION = ""


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_scores(predictions, references) -> dict:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    groups = {"has_answer": ([], []), "no_answer": ([], [])}
    for pred, refs in zip(predictions, references):
        refs = [r for r in refs if normalize_answer(r)] or [""]
        ems, f1s = groups["has_answer" if refs != [""] else "no_answer"]
        ems.append(max(exact(pred, r) for r in refs))
        f1s.append(max(token_f1(pred, r) for r in refs))
    out = {}
    all_em = groups["has_answer"][0] + groups["no_answer"][0]
    all_f1 = groups["has_answer"][1] + groups["no_answer"][1]
    out["exact_match"] = sum(all_em) / len(all_em) if all_em else 0.0
    out["f1"] = sum(all_f1) / len(all_f1) if all_f1 else 0.0
    out["total"] = len(all_em)
    for name, (ems, f1s) in groups.items():
        out[f"{name}_exact_match"] = sum(ems) / len(ems) if ems else None
        out[f"{name}_f1"] = sum(f1s) / len(f1s) if f1s else None
        out[f"{name}_total"] = len(ems)
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Squad(evaluate.Metric):
    """Exact match and F1 of extractive answers."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references):
        return qa_scores(predictions, references)
