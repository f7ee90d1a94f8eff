"""The last steps of every script's run: measure the result against its base (`report.measure.compare_checkpoints`,
both loaded from disk), draw the plots, write the model card beside the model, and push to the Hub or write the dry
run. One place, so distill, prune, lowrank, quantize and recipes report alike."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from ..errors import UserInputError
from ..extras import has_extra
from ..report.card import write_card
from ..report.lineage import original_base_id, read_lineage, write_model_record
from ..report.measure import MeasureConfig, compare_checkpoints
from ..report.plot import SCHEDULE_PNG, TRADEOFF_PNG, schedule_plot, tradeoff_plot

logger = logging.getLogger(__name__)


@dataclass
class ReportArguments:
    """What a run measures and publishes after it has saved its model."""

    _argument_group_name = "Measurement, model card and Hub"

    measure: bool = field(
        default=True,
        metadata={"help": "Measure the saved model against its base (the teacher, or the model it was compressed "
                  "from), both reloaded from disk: metrics on the test split, parameters, size of the whole "
                  "checkpoint, CPU latency, peak memory; then write the model card and plot. --no_measure skips all "
                  "of it (and the card)."},
    )
    measure_memory: bool = field(
        default=True, metadata={"help": "Measure peak memory of a fresh process loading each model (adds ~10 s)."}
    )
    latency_rounds: int = field(
        default=3, metadata={"help": "Rounds of interleaved latency measurement (base, model, base, model, ...)."}
    )
    latency_threads: int = field(
        default=2, metadata={"help": "CPU threads for the latency measurement (PyTorch and ONNX Runtime alike)."}
    )
    latency_batch_size: int = field(default=32, metadata={"help": "Batch size of the latency measurement."})
    latency_seq_len: int | None = field(
        default=None, metadata={"help": "Tokens per row of the latency measurement (default: the run's --max_length, "
                                "the length the model is trained and evaluated at)."})
    base_model_id: str | None = field(
        default=None, metadata={"help": "Hub id of the original base model, for the card's `base_model` metadata "
                                "(default: read from the input model's lineage, or known for the offline assets)."})

    def __post_init__(self):
        for name in ("latency_rounds", "latency_threads", "latency_batch_size", "latency_seq_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UserInputError(f"--{name} must be at least 1, got {getattr(self, name)}")

    def measure_config(self, max_length: int | None = None) -> MeasureConfig:
        """The measurement settings; latency rows are `max_length` tokens long unless --latency_seq_len says."""
        return MeasureConfig(threads=self.latency_threads, rounds=self.latency_rounds, memory=self.measure_memory,
                             batch_size=self.latency_batch_size,
                             seq_len=self.latency_seq_len or max_length or 128)


def hub_settings_of(*argument_groups, output_dir: str):
    """The run's Hub settings (from `TrainingArguments` or `hub.HubArguments`, plus `hub.PushArguments`), checked now,
    before any work; None when nothing is to be pushed. A Trainer never pushes by itself: the run pushes its
    final model folder, with card and plots, in one commit."""
    from ..hub import check_hub_settings, hub_settings

    merged = {}
    for group in argument_groups:
        if group is None:
            continue
        for key in ("push_to_hub", "hub_model_id", "hub_private_repo", "hub_token", "hub_revision", "push_dry_run"):
            if hasattr(group, key) and getattr(group, key) not in (None, False):
                merged[key] = getattr(group, key)
    from types import SimpleNamespace

    settings = hub_settings(SimpleNamespace(**merged))
    if settings is not None:
        settings = check_hub_settings(settings, output_dir)
    for group in argument_groups:  # the Trainer must not create a repo or push checkpoints on its own
        if group is not None and getattr(group, "push_to_hub", False) and hasattr(group, "hub_strategy"):
            group.push_to_hub = False
    return settings


def compare_on_eval_split(model_dir: str, base_dir: str, base_source: str | None, dataset, data_args,
                          report: ReportArguments, variants: dict[str, str] | None = None, evaluate=None) -> dict:
    """`compare_checkpoints` of `model_dir` against `base_dir` on the test split (validation if there is none).
    `evaluate(model, tokenizer, split)`: the task's own evaluation (default: a text classifier's, on the split's
    text and label columns)."""
    split = "test" if "test" in dataset else "validation"
    common = dict(split=split, max_length=data_args.max_length, config=report.measure_config(data_args.max_length),
                  variants=variants)
    if evaluate is not None:
        comparison = compare_checkpoints(base_dir, model_dir, None, None, rows=len(dataset[split]),
                                         evaluate=lambda model, tokenizer, role: evaluate(model, tokenizer, split),
                                         **common)
    else:
        pairs = dataset[split][data_args.text_pair_column] if getattr(data_args, "text_pair_column", None) else None
        comparison = compare_checkpoints(base_dir, model_dir, dataset[split][data_args.text_column],
                                         dataset[split][data_args.label_column], text_pairs=pairs,
                                         pair_truncation=getattr(data_args, "pair_truncation", "only_second"),
                                         **common)
    comparison["base"]["source"] = base_source
    return comparison


def measure_against_teacher(adapter, run, record, model_dir: str, report: ReportArguments, log_history=None) -> dict:
    """A text run's measurement (classifier, tagger, reader): the saved model against its teacher, both from disk,
    scored by the task adapter's `evaluation` (None: a classifier's accuracy), then the card."""
    return measure_and_card(record, model_dir, run.teacher_path, run.model_args.teacher_model, run.dataset,
                            run.data_args, report, run_name=os.path.basename(os.path.normpath(run.run_dir)),
                            log_history=log_history,
                            evaluate=adapter.evaluation(run.dataset, run.data_args, run.args.per_device_eval_batch_size))


def measure_and_card(record, model_dir: str, base_dir: str, base_source: str | None, dataset, data_args,
                     report: ReportArguments, run_name: str | None = None, log_history=None,
                     variants: dict[str, str] | None = None, base_model: str | None = None,
                     before_card=None, evaluate=None) -> dict:
    """Compare `model_dir` with `base_dir` on the test split (validation if there is none), store the comparison in
    `record`, draw the plots beside the model and write its card. `variants` (name -> model folder: a recipe's
    earlier stages) are measured in the same session and drawn on the plot; `before_card(record, comparison)` lets
    the caller add what the card should also say (a recipe's stages). Returns the comparison."""
    comparison = compare_on_eval_split(model_dir, base_dir, base_source, dataset, data_args, report, variants,
                                       evaluate)
    split = comparison["split"]
    record.comparison = comparison
    if not record.lineage:
        record.lineage = read_lineage(base_dir)
    record.base_model_id = base_model or report.base_model_id or original_base_id(record.lineage)
    if before_card is not None:
        before_card(record, comparison)
    points = [
        {"name": os.path.basename(os.path.normpath(base_source or base_dir)),
         "accuracy": comparison["base"]["metrics"].get("accuracy"), "size_mb": comparison["base"]["size_mb"],
         "latency_ms": comparison["base"]["latency_ms"], "base": True},
        *({"name": name, "accuracy": v["metrics"].get("accuracy"), "size_mb": v["size_mb"],
           "latency_ms": v["latency_ms"]} for name, v in comparison["variants"].items()),
        {"name": run_name or "this model", "accuracy": comparison["model"]["metrics"].get("accuracy"),
         "size_mb": comparison["model"]["size_mb"], "latency_ms": comparison["model"]["latency_ms"]},
    ]
    if has_extra("plots"):
        record.artifacts["plot"] = tradeoff_plot(points, os.path.join(model_dir, TRADEOFF_PNG),
                                                 title=f"{run_name or 'model'} against its base ({split} split)")
        if log_history:
            path = schedule_plot(log_history, os.path.join(model_dir, SCHEDULE_PNG))
            if path:
                record.artifacts["schedule_plot"] = path
    else:
        logger.info("No plots beside the card (matplotlib is not installed): pip install 'hfcompress[plots]'")
    record.artifacts["card"] = write_card(record.to_dict(), model_dir, model_name=run_name)
    write_model_record(record.to_dict(), model_dir)
    c = comparison
    metric = record.metric
    delta = (c["changes"].get(f"metric_{metric}") or {}).get("delta")
    logger.info("Measured against %s: %s %s %s (%s points), %.2fx smaller, %.2fx faster; card %s",
                base_source or base_dir, split, metric, c["model"]["metrics"].get(metric),
                None if delta is None else f"{100 * delta:+.2f}", c["size_ratio"], c["speedup"],
                record.artifacts["card"])
    return comparison


def publish(record, model_dir: str, run_dir: str, settings) -> dict | None:
    """Push the model folder (weights, config, tokenizer, card, plots) in one commit, or write the dry run."""
    if settings is None:
        return None
    from ..hub import push
    from ..report.card import card_for_repo

    card_for_repo(model_dir, settings.repo_id)
    result = push(model_dir, settings, run_dir, commit_message=f"hfcompress: {record.task} ({record.command})"[:200])
    record.artifacts["hub"] = result
    return result
