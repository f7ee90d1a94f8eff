"""`RunRecord`: what a run did, with which settings, and what `hfcompress.report` measured. Every script writes its
summary JSON from one of these; model cards (a later release) are rendered from it, so no number is typed."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field

from ..files import write_json_atomic
from ..hardware import cpu_info
from ..tokens import command_line, redact


def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return _jsonable(obj.to_dict())
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def environment() -> dict:
    """Library versions and hardware, recorded with every run."""
    import torch
    import transformers

    import hfcompress

    env = {
        "hfcompress": hfcompress.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_info(),  # model and the int8/bf16 instruction sets: what a speedup here depends on
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import datasets

        env["datasets"] = datasets.__version__
    except ImportError:  # pragma: no cover
        pass
    return env


def main_metric(data: dict | None) -> str:
    """The metric a run is judged by: its task's (a record's ``data["metric"]``: a tagger's or a reader's F1), else
    accuracy (a classifier)."""
    return (data or {}).get("metric") or "accuracy"


@dataclass
class RunRecord:
    """One run, as data.

    Attributes:
        task: what ran (``"distill"``, later ``"prune"``, ``"quantize"``, ...).
        command: the command line.
        settings: every argument group, by name (``{"model": {...}, "data": {...}, "training": {...}}``).
        methods: per compression method, its resolved configuration and what it reached
            (``{"distillation": {...}}``).
        data: dataset name, split sizes, label names.
        models: per role (``"student"``, ``"teacher"``, ...): path, parameters, size on disk, and any other
            measurement of `hfcompress.report`.
        training: runtime, loss, steps, resume information.
        metrics: per model role and split, the task metrics (``{"student": {"test": {...}}}``).
        artifacts: where the run wrote what (model folder, checkpoints, caches).
        comparison: the base model and the result, both loaded from disk and measured side by side by
            `hfcompress.report.measure.compare_checkpoints` (what a model card shows).
        stages: for a recipe, what each stage measured, in order.
        lineage: the earlier runs that made this run's input, from the original base model on (one entry per stage,
            `hfcompress.report.lineage`), read from the input folder's ``hfcompress_record.json``.
        base_model_id: the Hub id of the original base model, when the user gave it (``--base_model_id``).
    """

    task: str
    command: str = field(default_factory=command_line)  # secrets (--hub_token) redacted
    settings: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    comparison: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)
    lineage: list = field(default_factory=list)
    base_model_id: str | None = None
    environment: dict = field(default_factory=environment)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def metric(self) -> str:
        """`main_metric` of this run."""
        return main_metric(self.data)

    def add_settings(self, **groups) -> None:
        for name, value in groups.items():
            self.settings[name] = _jsonable(value)

    def to_dict(self) -> dict:
        return redact(_jsonable({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}))

    def save(self, path: str) -> None:
        """Write the record as JSON, atomically (a crash never leaves half a file)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "RunRecord":
        with open(path) as fh:
            data = json.load(fh)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
