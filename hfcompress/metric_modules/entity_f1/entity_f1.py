"""Entity-level precision, recall and F1 of tag sequences, as a local `evaluate` metric module (no Hub, no seqeval).

The definitions are seqeval's default mode (the CoNLL-2000 ``conlleval`` script's): tags are ``O``, ``B-<type>``,
``I-<type>`` (also ``E-``/``S-``); a chunk starts at ``B``/``S``, at an ``I``/``E`` after ``O`` or after a chunk of
another type (IOB1 and IO sequences are read so), and ends before ``O``, ``B``/``S`` or a change of type. An entity
is ``(type, first word, last word)`` within its sentence; a predicted entity counts only when type and both ends equal
a reference entity. Precision = correct / predicted entities, recall = correct / reference entities, F1 their
harmonic mean (0 where undefined), overall and per type; accuracy is over tags. The output keys follow the Hub's
``seqeval`` module: ``overall_precision``, ``overall_recall``, ``overall_f1``, ``overall_accuracy`` and one entry per
type, ``{"precision", "recall", "f1", "number"}`` (``number``: reference entities of the type).
"""

import datasets
import evaluate

_DESCRIPTION = "Entity-level precision, recall and F1 of BIO/IOB/IO tag sequences (seqeval's default mode), per type."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `str`): predicted tags, one list per sentence.
    references (`list` of `list` of `str`): reference tags, as many per sentence as predicted.
Returns:
    overall_precision, overall_recall, overall_f1, overall_accuracy (`float`), and per entity type a dict with
    precision, recall, f1 and number (the type's reference entities).
Examples:
    >>> metric = evaluate.load("hfcompress/metric_modules/entity_f1")
    >>> metric.compute(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "I-PER", "O"]])["overall_f1"]
    1.0
"""

_CITATION = ""


def _split(tag):
    if tag in ("O", "", None):
        return "O", "_"
    prefix, _, kind = tag.partition("-")
    return prefix, kind or "_"


def _ends(prev_tag, tag, prev_type, kind):
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag != "O" and prev_type != kind


def _starts(prev_tag, tag, prev_type, kind):
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and prev_type != kind


def get_entities(tags):
    """``(type, start, end)`` (inclusive) of each chunk of one sentence's tags."""
    chunks, prev_tag, prev_type, begin = [], "O", "_", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = _split(tag)
        if _ends(prev_tag, prefix, prev_type, kind):
            chunks.append((prev_type, begin, i - 1))
        if _starts(prev_tag, prefix, prev_type, kind):
            begin = i
        prev_tag, prev_type = prefix, kind
    return chunks


def _prf(correct, predicted, true):
    p = correct / predicted if predicted else 0.0
    r = correct / true if true else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def entity_scores(predictions, references):
    """The metric's result (see the module docstring) as a plain function."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predicted sentences but {len(references)} references")
    true_set, pred_set, right, total = set(), set(), 0, 0
    for i, (p, r) in enumerate(zip(predictions, references)):
        if len(p) != len(r):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags but {len(r)} reference tags")
        true_set.update((i, *e) for e in get_entities(r))
        pred_set.update((i, *e) for e in get_entities(p))
        right += sum(a == b for a, b in zip(p, r))
        total += len(r)
    correct = true_set & pred_set
    out = {}
    for kind in sorted({e[1] for e in true_set | pred_set}):
        t = sum(e[1] == kind for e in true_set)
        pr = sum(e[1] == kind for e in pred_set)
        c = sum(e[1] == kind for e in correct)
        precision, recall, f1 = _prf(c, pr, t)
        out[kind] = {"precision": precision, "recall": recall, "f1": f1, "number": t}
    precision, recall, f1 = _prf(len(correct), len(pred_set), len(true_set))
    out.update(overall_precision=precision, overall_recall=recall, overall_f1=f1,
               overall_accuracy=right / total if total else 0.0)
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EntityF1(evaluate.Metric):
    """Entity-level precision / recall / F1 of tag sequences."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("string")),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references):
        return entity_scores(predictions, references)
