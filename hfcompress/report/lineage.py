"""A compressed model's lineage: the chain of runs from the original base model to it, carried in the model folder.

Every run that measures its result writes its record (a `RunRecord` as a dict, secrets redacted) beside the model as
``hfcompress_record.json``. The next run reads it from its input folder (the model it compresses or measures against)
and keeps the earlier runs as its record's ``lineage``, one compact entry per stage, so a model that was distilled,
then pruned, then quantized by three separate commands has a card naming the original base model and every stage with
its method, settings and measured effect, exactly as a recipe's card does. `hfcompress push` re-renders the card from
the same file with the Hub id in its loading code.
"""

from __future__ import annotations

import json
import logging
import os

from ..files import write_json_atomic

logger = logging.getLogger(__name__)

RECORD_NAME = "hfcompress_record.json"


DATASET_IDS = {"rotten-tomatoes": "cornell-movie-review-data/rotten_tomatoes"}


def dataset_id(dataset: str | None) -> str | None:
    """The Hub id of a dataset given as an offline asset name or a Hub id (a local file or folder has none)."""
    if not dataset:
        return None
    if dataset in DATASET_IDS:
        return DATASET_IDS[dataset]
    if not os.path.exists(dataset) and dataset.count("/") == 1:
        return dataset
    return None


def hub_id(source: str | None) -> str | None:
    """The Hub id of a base model given as an offline asset name or a Hub id (a local folder has none)."""
    if not source:
        return None
    from ..assets import ASSETS

    name = os.path.basename(os.path.normpath(source))
    known = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2", "mpnet-base": "sentence-transformers/all-mpnet-base-v2",
             "whisper-tiny-en": "openai/whisper-tiny.en"}
    if name in known and name in ASSETS:
        return known[name]
    if not os.path.exists(source) and source.count("/") == 1:
        return source
    return None


def _measured(comparison: dict | None, summary: dict | None = None) -> dict:
    """What a stage measured against its own base: metric, size, speed (None where it did not measure)."""
    if summary:  # a recipe's stage: its main metric (a tagger's or a reader's F1) beside accuracy
        return {k: summary.get(k) for k in ("accuracy", "size_mb", "speedup", "metric", summary.get("metric"))
                if k is not None}
    if not comparison:
        return {}
    model = comparison.get("model", {})
    return {"accuracy": model.get("metrics", {}).get("accuracy"), "accuracy_delta_points":
            comparison.get("accuracy_delta_points"), "size_mb": model.get("size_mb"),
            "size_ratio": comparison.get("size_ratio"), "speedup": comparison.get("speedup"),
            "split": comparison.get("split"), "against": (comparison.get("base") or {}).get("source")}


def record_seed(record: dict):
    """The seed a run trained or sampled with (None for a run that used no randomness of its own)."""
    settings = record.get("settings", {})
    for group in ("training", "steps", "recipe", "run"):
        seed = (settings.get(group) or {}).get("seed")
        if seed is not None:
            return seed
    return None


def record_max_length(record: dict):
    """The input length (tokens) the run tokenized its data with."""
    settings = record.get("settings", {})
    for group in ("data", "recipe"):
        value = (settings.get(group) or {}).get("max_length")
        if value is None and group == "recipe":
            value = ((settings.get(group) or {}).get("data") or {}).get("max_length")
        if value is not None:
            return value
    return None


def entries_of(record: dict) -> list[dict]:
    """The lineage a model made by `record` hands on: the record's own lineage, then its stages (a recipe) or the
    run itself."""
    chain = list(record.get("lineage") or [])
    base = (record.get("comparison") or {}).get("base") or {}
    base_source = base.get("source") or base.get("path")
    common = {"dataset": (record.get("data") or {}).get("dataset"), "seed": record_seed(record),
              "max_length": record_max_length(record), "command": record.get("command")}
    base_id = record.get("base_model_id") or hub_id(base_source)
    if record.get("stages"):
        for s in record["stages"]:
            chain.append({"run": s.get("name"), "stage": s.get("method"), "methods": s.get("methods") or {},
                          "base": base_source, "base_model_id": base_id, "measured": _measured(None, s.get("measured")),
                          "measured_against": "the recipe's base", **common})
    else:
        chain.append({"run": record.get("task"), "stage": record.get("task"), "methods": record.get("methods") or {},
                      "base": base_source, "base_model_id": base_id, "measured": _measured(record.get("comparison")),
                      "measured_against": "its input", **common})
    return chain


def read_lineage(folder: str | None) -> list[dict]:
    """The lineage a model in `folder` carries (empty when it was not made by hfcompress, or has no record)."""
    if not folder or not os.path.isfile(os.path.join(folder, RECORD_NAME)):
        return []
    try:
        with open(os.path.join(folder, RECORD_NAME)) as fh:
            return entries_of(json.load(fh))
    except (OSError, ValueError) as exc:
        logger.warning("Could not read the lineage of %s (%s): the card starts from that model", folder, exc)
        return []


def original_base_id(lineage: list[dict]) -> str | None:
    """The Hub id of the model the chain started from, where known."""
    return next((e.get("base_model_id") for e in lineage if e.get("base_model_id")), None)


def write_model_record(record: dict, model_dir: str) -> str:
    """Write `record` (a dict, secrets already redacted) as the model folder's ``hfcompress_record.json``."""
    path = os.path.join(model_dir, RECORD_NAME)
    write_json_atomic(path, record)
    return path


def read_model_record(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, RECORD_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        return json.load(fh)
