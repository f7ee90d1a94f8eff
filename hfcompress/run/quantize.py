"""A post-training compression run: take a trained classifier, token classifier (tagger) or extractive QA reader (an
asset fine-tuned once and cached, any folder, or what a distillation / pruning run wrote), optionally trim its
vocabulary to the data's tokens and factorize its projections, quantize it, save the result, and measure it against
the model it came from in the same process: the task's test metrics (accuracy; entity F1; exact match and F1), size
of the whole checkpoint folder, CPU latency, peak memory. The task is the one a distillation run would pick for this
model and data (`skeleton.task_for`: a ``...ForTokenClassification`` / ``...ForQuestionAnswering`` checkpoint, or
token-tagged / SQuAD-style data); its adapter loads the data and the model, and evaluates both from disk. `scripts/quantize.py` is a thin
parser over `run_quantization`; the benchmark calls it once per variant.

The methods live in their folders (`hfcompress.vocab`, `hfcompress.lowrank`, `hfcompress.quantize`); this module
only orders them and refuses orders that cannot work, before anything is loaded or trained.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace

from transformers import AutoTokenizer

from ..assets import resolve_model_path
from ..data import set_input_length
from ..errors import UserInputError
from ..loading import checkpoint_format, load_model, save_model
from ..lowrank import LowRankConfig, factorize
from ..quantize.config import QuantizationConfig
from ..report.lineage import read_lineage
from ..report.measure import count_parameters
from ..report.record import RunRecord
from ..vocab import VocabTrimConfig, trim_vocabulary
from . import steps
from .arguments import DataArguments, ModelArguments
from .methods import QUANTIZED_FORMATS
from .report import ReportArguments, hub_settings_of, measure_and_card, publish

logger = logging.getLogger(__name__)

REFERENCE_DIR = "reference"


@dataclass
class QuantizeModelArguments:
    _argument_group_name = "Model"

    model: str = field(
        default="minilm-l6",
        metadata={"help": "The trained model to compress (sequence classifier, token classifier or extractive QA "
                  "reader): an offline asset name (fine-tuned once on --dataset and cached if it has no task head, as "
                  "a teacher is), a checkpoint folder (plain, or written by hfcompress: structured, low-rank, sparse), "
                  "or a Hub id."},
    )
    finetune_epochs: float = field(default=2.0, metadata={"help": "Epochs of the one-time fine-tune of a headless model."})
    finetune_dir: str | None = field(
        default=None,
        metadata={"help": "Where that fine-tune is cached (default: $HFCOMPRESS_HOME/teachers/<name>-<dataset>, shared "
                  "with the other scripts' teachers)."},
    )


@dataclass
class CompressArguments:
    """The steps before quantization, each off unless asked, plus where the result goes."""

    _argument_group_name = "Vocabulary trimming and low rank (before quantization)"

    output_dir: str = field(default=None, metadata={"help": "Run folder: <output_dir>/model is the result."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Replace the result of an earlier run in --output_dir (refused without it)."},
    )
    vocab_trim: bool = field(
        default=False,
        metadata={"help": "Trim the vocabulary to the tokens of the training split (embeddings and tokenizer "
                  "rewritten; unseen words still tokenize, to pieces and characters)."},
    )
    vocab_min_count: int = field(default=1, metadata={"help": "Keep tokens seen at least this often in the training split."})
    vocab_max_size: int | None = field(default=None, metadata={"help": "Keep at most this many tokens (the most frequent)."})
    lowrank_rank: int | None = field(default=None, metadata={"help": "SVD: the same rank for every factorized layer."})
    lowrank_energy: float | None = field(
        default=None, metadata={"help": "SVD: per layer, the smallest rank keeping this fraction of the energy, in (0, 1]."}
    )
    lowrank_budget: float | None = field(
        default=None,
        metadata={"help": "SVD: the factorized layers keep this fraction of their parameters, ranks chosen across "
                  "layers by energy per parameter."},
    )
    lowrank_target_modules: str | None = field(
        default=None, metadata={"help": "Comma-separated layers to factorize (default: every block projection)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the one-time fine-tune and of calibration sampling."})

    def __post_init__(self):
        if self.vocab_min_count < 1:
            raise UserInputError(f"--vocab_min_count must be at least 1, got {self.vocab_min_count}")
        self.lowrank_config()  # rank / energy / budget checked now

    @property
    def lowrank(self) -> bool:
        return any(v is not None for v in (self.lowrank_rank, self.lowrank_energy, self.lowrank_budget))

    def lowrank_config(self) -> LowRankConfig | None:
        if not self.lowrank:
            return None
        targets = [t.strip() for t in self.lowrank_target_modules.split(",")] if self.lowrank_target_modules else None
        return LowRankConfig(target_modules=targets, rank=self.lowrank_rank, energy=self.lowrank_energy,
                             parameter_budget=self.lowrank_budget)

    def vocab_config(self) -> VocabTrimConfig:
        return VocabTrimConfig(min_count=self.vocab_min_count, max_vocab_size=self.vocab_max_size)


def check_plan(source_format: str, quant: QuantizationConfig, run: CompressArguments) -> None:
    """Orders of steps that cannot work, refused before anything is loaded."""
    if source_format in QUANTIZED_FORMATS:
        raise UserInputError(f"the model is already quantized ({source_format} checkpoint): a checkpoint is not "
                             "quantized twice; start from its full-precision source")
    if quant.quantization == "torch_int8" and (run.lowrank or source_format in ("structured", "lowrank")):
        raise UserInputError("--quantization torch_int8 saves through the family's own classes and cannot hold a "
                             "structurally pruned or low-rank model: use --quantization onnx_int8 (faster, and it "
                             "exports any of them)")
    if quant.is_bnb and (run.lowrank or source_format in ("structured", "lowrank")):
        raise UserInputError(f"--quantization {quant.quantization} loads through the family's own classes, which build "
                             "every block at full width: it cannot hold a structurally pruned or low-rank model; use "
                             "--quantization onnx_int8")
    if quant.quantization == "none" and not (run.lowrank or run.vocab_trim):
        raise UserInputError("--quantization none with no --vocab_trim and no --lowrank_*: nothing to do")


# the tasks other than sequence classification whose models these runs take (their adapters load and evaluate them)
SOURCE_TASKS = ("token-classification", "question-answering")


def source_task(model_args: QuantizeModelArguments, data_args: DataArguments):
    """The task adapter of a token classifier or extractive QA reader (chosen as a distillation run would choose it,
    from the model's architecture and the data), or None for a sequence classifier."""
    from .skeleton import Run, task_for

    adapter = task_for(ModelArguments(teacher_model=model_args.model), data_args, None)
    if adapter.name not in SOURCE_TASKS:
        return None
    adapter.check_inputs(Run(_as_teacher(model_args), data_args, None))  # its settings (--doc_stride...), now
    return adapter


def _as_teacher(model_args: QuantizeModelArguments) -> ModelArguments:
    return ModelArguments(teacher_model=model_args.model, teacher_finetune_epochs=model_args.finetune_epochs,
                          teacher_dir=model_args.finetune_dir)


def load_task_data(adapter, model_args: QuantizeModelArguments, data_args: DataArguments):
    """The dataset (train/validation/test), read as the task reads it."""
    if adapter is None:
        return steps.load_data(data_args)
    from .skeleton import Run

    return adapter.load_data(Run(_as_teacher(model_args), data_args, None))[0]


def load_source(model_args: QuantizeModelArguments, data_args: DataArguments, dataset, seed: int, adapter=None):
    """The model to compress (with a trained head) and its tokenizer; `adapter`: the task's (`source_task`), whose
    teacher loading (and one-time fine-tune of a headless model) is used for a plain checkpoint."""
    path = resolve_model_path(model_args.model)
    if os.path.isdir(path) and checkpoint_format(path) not in ("transformers",):
        return load_model(path), set_input_length(AutoTokenizer.from_pretrained(path), data_args.max_length), path
    as_teacher = _as_teacher(model_args)
    training = SimpleNamespace(seed=seed, bf16=False)  # what load_teacher reads of the training arguments
    if adapter is not None:
        from .skeleton import Run

        model, tokenizer, path = adapter.load_teacher(Run(as_teacher, data_args, training, dataset=dataset))
    else:
        model, tokenizer, path = steps.load_teacher(as_teacher, data_args, dataset, training)
    return model.eval(), set_input_length(tokenizer, data_args.max_length), path


def quantize_and_save(model, tokenizer, quant: QuantizationConfig, directory: str, work_dir: str,
                      calibration_texts=None) -> None:
    """Apply the quantizer and write the result to `directory` (files appear only once complete)."""
    if quant.quantization == "none":
        save_model(model, directory, tokenizer)
    elif quant.quantization == "torch_int8":
        from ..quantize.dynamic import quantize_dynamic_int8, save_dynamic_int8

        quantized = quantize_dynamic_int8(model, skip_modules=quant.skip_list, per_channel=quant.torch_per_channel)
        save_dynamic_int8(quantized, directory, tokenizer)
    elif quant.is_onnx:
        from ..quantize.onnx import export_onnx, quantize_onnx

        if quant.quantization == "onnx_fp32":
            export_onnx(model, directory, tokenizer, opset=quant.onnx_opset)
        else:
            exported = os.path.join(work_dir, "onnx_fp32")
            export_onnx(model, exported, tokenizer, opset=quant.onnx_opset)
            quantize_onnx(exported, directory, per_channel=quant.onnx_per_channel,
                          float_modules=quant.float_module_list)
    else:
        from ..quantize.bnb import load_quantized, save_quantized

        fp_dir = os.path.join(work_dir, "fp32")
        save_model(model, fp_dir, tokenizer)
        bits = 8 if quant.quantization == "bnb_8bit" else 4
        quantized = load_quantized(fp_dir, bits=bits, quant_type=quant.bnb_4bit_quant_type,
                                   double_quant=quant.bnb_4bit_use_double_quant, skip_modules=quant.skip_list,
                                   model_class=type(model))
        save_quantized(quantized, directory, tokenizer)


def compress_to(model, tokenizer, dataset, data_args: DataArguments, quant: QuantizationConfig,
                run: CompressArguments, model_dir: str, adapter=None) -> dict:
    """Trim / factorize a copy of `model` as `run` asks, quantize it and save it to `model_dir` (which appears only
    once complete); `model` itself is left as it is. Returns what each step reported, by method name. `adapter`: the
    task's (`source_task`; None: text classification), which says what the data's texts are."""
    from .skeleton import TaskAdapter

    info = {}
    compressed, comp_tok = copy.deepcopy(model), tokenizer
    if run.vocab_trim:
        texts = (adapter or TaskAdapter()).texts  # sentence pairs: both texts; QA: questions and contexts
        compressed, comp_tok, report = trim_vocabulary(
            compressed, tokenizer, texts(dataset, "train", data_args), run.vocab_config(),
            eval_texts=texts(dataset, "test", data_args) if "test" in dataset else None,
            source=f"{data_args.dataset} train split",
        )
        info["vocab_trim"] = dataclasses.asdict(report)
    if run.lowrank:
        info["lowrank"] = factorize(compressed, run.lowrank_config())
    info["parameters_before_quantization"] = count_parameters(compressed)
    info["quantization"] = quant.to_dict()
    parent = os.path.dirname(os.path.abspath(model_dir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".hfc-work-") as work:
        quantize_and_save(compressed, comp_tok, quant, os.path.join(work, "result"), work)
        os.replace(os.path.join(work, "result"), model_dir)
    return info


def run_quantization(model_args: QuantizeModelArguments, data_args: DataArguments, quant: QuantizationConfig,
                     run: CompressArguments, report: ReportArguments | None = None, hub_args=None, push=None,
                     task: str = "quantize") -> RunRecord:
    """Compress, measure against the source (`run.report.measure_and_card`), write the card and push if asked;
    returns the `RunRecord` also written to `<output_dir>/<task>_summary.json`."""
    if not run.output_dir:
        raise UserInputError("--output_dir is required")
    steps.check_output_dir(run.output_dir, run, task)
    report = report or ReportArguments()
    hub = hub_settings_of(hub_args, push, output_dir=run.output_dir)
    path = resolve_model_path(model_args.model)
    source_format = checkpoint_format(path) if os.path.isdir(path) else "transformers"
    check_plan(source_format, quant, run)
    adapter = source_task(model_args, data_args)
    dataset = load_task_data(adapter, model_args, data_args)
    model, tokenizer, source_path = load_source(model_args, data_args, dataset, run.seed, adapter)
    if quant.skip_list is not None:
        from ..quantize.dynamic import check_skip_patterns

        check_skip_patterns(model, quant.skip_list)

    os.makedirs(run.output_dir, exist_ok=True)
    model_dir = os.path.join(run.output_dir, steps.MODEL_DIR)
    record = RunRecord(task=task)
    record.add_settings(model=model_args, data=data_args, quantization=quant, steps=run, report=report)
    record.data = {"dataset": data_args.dataset, "splits": {s: len(d) for s, d in dataset.items()},
                   "pipeline_tag": "text-classification"}
    if adapter is not None:
        from .skeleton import Run

        record.data.update(adapter.record_data(Run(_as_teacher(model_args), data_args, None, dataset=dataset)))
    metric = record.metric

    if os.path.exists(model_dir):
        shutil.rmtree(model_dir)
    record.lineage = read_lineage(source_path)  # the stages that made the source, when hfcompress made it
    # The reference: the source as a user downloads it (weights, config, tokenizer), measured like the result, in a
    # work folder removed afterwards (the source itself stays where it is).
    with tempfile.TemporaryDirectory(dir=run.output_dir, prefix=".hfc-work-") as work:
        reference_dir = os.path.join(work, REFERENCE_DIR)
        save_model(model, reference_dir, tokenizer)
        info = compress_to(model, tokenizer, dataset, data_args, quant, run, model_dir, adapter)
        info.pop("parameters_before_quantization")
        record.methods.update(info)
        del model

        # Measured on what was saved, each loaded fresh from disk, by the one measurement every script uses.
        c = measure_and_card(record, model_dir, reference_dir, model_args.model, dataset, data_args, report,
                             run_name=os.path.basename(os.path.normpath(run.output_dir)),
                             evaluate=adapter.evaluation(dataset, data_args) if adapter is not None else None)
    record.models = {"reference": {**c["base"], "source": source_path, "format": source_format},
                     "compressed": c["model"]}
    delta = (c["changes"].get(f"metric_{metric}") or {}).get("delta")
    record.metrics = {"summary": {"split": c["split"], "accuracy_reference": c["base"]["metrics"].get("accuracy"),
                                  "accuracy": c["model"]["metrics"].get("accuracy"),
                                  "accuracy_delta_points": c["accuracy_delta_points"],
                                  "metric": metric, "metric_reference": c["base"]["metrics"].get(metric),
                                  "metric_value": c["model"]["metrics"].get(metric),
                                  "metric_delta_points": None if delta is None else 100 * delta,
                                  "size_ratio": c["size_ratio"], "speedup": c["speedup"]}}
    record.artifacts.update({"model": model_dir})
    record.save(os.path.join(run.output_dir, f"{task}_summary.json"))
    publish(record, model_dir, run.output_dir, hub)
    record.save(os.path.join(run.output_dir, f"{task}_summary.json"))
    s = record.metrics["summary"]
    logger.info("%s: %s %s %.4f (reference %.4f, %+.2f points), checkpoint %.1f MB (%.2fx smaller), %.2fx "
                "faster on %d threads; model in %s", quant.quantization, s["split"], metric, s["metric_value"],
                s["metric_reference"], s["metric_delta_points"], c["model"]["size_mb"], s["size_ratio"],
                s["speedup"], report.latency_threads, model_dir)
    return record


def follows(shape: str, args) -> str:
    """Recipe order rule of the ``quantize`` stage (`hfcompress.registry`): `check_plan` on what the previous stages
    leave; a quantized model comes out."""
    from ..registry import StageOrderError

    try:
        check_plan(shape, args.get(QuantizationConfig), args.get(CompressArguments))
    except UserInputError as exc:
        raise StageOrderError(str(exc)) from None
    return "quantized"
