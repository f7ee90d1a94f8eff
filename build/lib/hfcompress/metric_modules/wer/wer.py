"""Word and character error rates as a local `evaluate` metric module, with a plain Levenshtein distance.

``WER = sum of word-level edit distances (substitutions + deletions + insertions) / total reference words``, over
the whole corpus (not a mean of per-sentence rates), words being whitespace-separated tokens. ``CER`` is the same on
characters, after stripping each text and collapsing runs of whitespace to one space (spaces count as characters),
as the Hub's ``cer`` metric does. No ``jiwer`` needed. Loaded with ``evaluate.load(<this folder>)`` (see
`hfcompress.metrics.load_metric`), so nothing comes from the Hub.
"""

import datasets
import evaluate

_DESCRIPTION = "Word error rate (WER) and character error rate (CER) of transcriptions against references."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): transcriptions.
    references (`list` of `str`): reference transcriptions, as many as `predictions`.
Returns:
    wer (`float`): word-level edit distance summed over the corpus / number of reference words (can exceed 1).
    cer (`float`): character-level edit distance summed over the corpus / number of reference characters.
Raises:
    ValueError: no predictions, not as many predictions as references, or references without any word.
Examples:
    >>> wer = evaluate.load("hfcompress/metric_modules/wer")
    >>> wer.compute(predictions=["a b x d"], references=["a b c d"])
    {'wer': 0.25, 'cer': 0.14285714285714285}
"""

_CITATION = ""


def edit_distance(reference, hypothesis) -> int:
    """Levenshtein distance between two sequences (unit cost for substitution, deletion and insertion)."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def _normalise_chars(text: str) -> str:
    """Strip, and collapse every run of whitespace to one space."""
    return " ".join(text.split())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Wer(evaluate.Metric):
    """Corpus-level WER and CER."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        if not len(references):
            raise ValueError("error rates of no transcriptions are undefined: got empty predictions and references")
        word_errors = sum(edit_distance(r.split(), p.split()) for p, r in zip(predictions, references))
        words = sum(len(r.split()) for r in references)
        if not words:
            raise ValueError("the references hold no word: WER and CER are undefined")
        char_errors = sum(edit_distance(_normalise_chars(r), _normalise_chars(p)) for p, r in zip(predictions, references))
        chars = sum(len(_normalise_chars(r)) for r in references)
        return {"wer": word_errors / words, "cer": char_errors / chars}
