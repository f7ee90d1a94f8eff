"""The scripts' argument groups and runs, as data: `SCRIPTS[name]` is what `scripts/<name>.py` parses (one
`HfArgumentParser` over `groups`) and runs (`run(*parsed)`). The scripts are thin wrappers over it, and a recipe
(`scripts/compress.py`) runs its stages through the very same entries, so a stage accepts exactly the options of the
script of the same name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..distill import DistillationArguments
from ..hub import PushArguments
from ..lora import LoraArguments
from .arguments import DataArguments, ModelArguments, ScriptTrainingDefaults, SpeechArguments
from .lowrank import LowRankArguments
from .prune import PruningArguments
from .qat import QATArguments
from .report import ReportArguments
from .share import WeightSharingArguments


@dataclass
class DistillScriptArguments(ScriptTrainingDefaults, DistillationArguments):
    """Distillation options, and training defaults sized for the offline default on a 2-core CPU."""

    _method_group_name = "Distillation"

    # The default recipe is the 3-block recipe measured best (on validation) in benchmarks/results/distill.json:
    # a student cut from the fine-tuned teacher, logit KD + hidden states (uniform layer map) + MiniLM-v2 attention
    # relations of the last block, all terms together, from cached teacher outputs. A Whisper teacher (sequence-to-
    # sequence) distils logits and labels only: there these defaults are 0, and a value the user sets is an error.
    hidden_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of hidden-state distillation (0 turns it off). Default: 1 for text classifiers, 0 "
                  "with a Whisper teacher."},
    )
    relation_weight: float | None = field(
        default=None,
        metadata={"help": "Weight of MiniLM-v2 self-attention relation distillation (q-q, k-k, v-v; 0 turns it off). "
                  "Works across widths and head counts. Default: 1 for text classifiers, 0 with a Whisper teacher."},
    )
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs of distillation."})

    def __post_init__(self):
        # Which terms are at the script's text default (the sequence-to-sequence run turns those off).
        self._mode_defaults = tuple(n for n in ("hidden_weight", "relation_weight") if getattr(self, n) is None)
        for name in self._mode_defaults:
            setattr(self, name, 1.0)
        super().__post_init__()


@dataclass
class PruneModelArguments(ModelArguments):
    student_num_layers: int = field(
        default=0,
        metadata={"help": "Depth of the model to prune when it is built from the teacher: 0 = all blocks (a full "
                  "copy of the teacher, the default); k = k evenly spaced blocks (prune a shallower student)."},
    )


@dataclass
class PruneScriptArguments(ScriptTrainingDefaults, PruningArguments):
    """Pruning and distillation options, with training defaults sized for the offline default on a 2-core CPU."""

    _method_group_name = "Pruning and distillation"

    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs of pruning (warm-up, ramp, cool-down)."})
    logging_steps: float = field(default=25, metadata={"help": "Log every N steps (loss, sparsity_target, sparsity)."})


@dataclass
class LowRankModelArguments(ModelArguments):
    student_num_layers: int = field(
        default=0,
        metadata={"help": "Depth of the model to factorize when it is built from the teacher: 0 = all blocks (a full "
                  "copy of the teacher, the default); k = k evenly spaced blocks."},
    )


@dataclass
class LowRankScriptArguments(ScriptTrainingDefaults, LowRankArguments):
    """Low-rank and distillation options, training defaults sized for the offline default on a 2-core CPU."""

    _method_group_name = "Low rank and distillation"

    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs of training the factors."})


@dataclass
class FullCopyModelArguments(ModelArguments):
    student_num_layers: int = field(
        default=0,
        metadata={"help": "Depth of the model to compress when it is built from the teacher: 0 = all blocks (a full "
                  "copy of the teacher, the default); k = k evenly spaced blocks."},
    )


@dataclass
class ShareScriptArguments(ScriptTrainingDefaults, WeightSharingArguments):
    """Weight-sharing and distillation options, training defaults sized for the offline default on a 2-core CPU."""

    _method_group_name = "Weight sharing and distillation"

    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs of training the shared values."})


@dataclass
class QATScriptArguments(ScriptTrainingDefaults, QATArguments):
    """Quantization-aware training and distillation options: TernaryBERT's recipe (distillation of logits and hidden
    states, no hard labels), training defaults sized for the offline default on a 2-core CPU."""

    _method_group_name = "Quantization-aware training and distillation"

    alpha: float = field(default=1.0, metadata={"help": "Weight of logit distillation in [0, 1]; the hard-label loss "
                                                        "gets 1 - alpha (TernaryBERT: distillation only)."})
    hidden_weight: float = field(default=1.0, metadata={"help": "Weight of hidden-state distillation (0 turns it off)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs of quantization-aware training."})


def _distill(model_args, data_args, args, lora_args, report, push, speech):
    from .distill import run_distillation
    from .lora import lora_methods

    return run_distillation(model_args, data_args, args, methods=lora_methods(lora_args), report=report, push=push,
                            speech=speech)


def _prune(model_args, data_args, args, report, push, speech=None):
    from .prune import run_pruning

    return run_pruning(model_args, data_args, args, report=report, push=push, speech=speech)


def _lowrank(model_args, data_args, args, report, push):
    from .lowrank import run_lowrank

    return run_lowrank(model_args, data_args, args, report=report, push=push)


def _share(model_args, data_args, args, report, push):
    from .share import run_weight_sharing

    return run_weight_sharing(model_args, data_args, args, report=report, push=push)


def _qat(model_args, data_args, args, report, push):
    from .qat import run_qat

    return run_qat(model_args, data_args, args, report=report, push=push)


def _quantize(model_args, data_args, quant, run, report, hub, push):
    from .quantize import run_quantization

    return run_quantization(model_args, data_args, quant, run, report, hub, push)


@dataclass(frozen=True)
class Script:
    """One script: its argument groups (in `--help` order) and the run they feed."""

    name: str
    groups: tuple
    run: Callable
    trains: bool  # runs a Trainer (all processes take part), or works on the main process only
    description: str = ""  # the first line of the command's --help


def _quantize_groups() -> tuple:
    from ..hub import HubArguments, PushArguments
    from ..quantize.config import QuantizationConfig
    from .quantize import CompressArguments, QuantizeModelArguments

    return (QuantizeModelArguments, DataArguments, QuantizationConfig, CompressArguments, ReportArguments, HubArguments,
            PushArguments)


def distill_script() -> Script:
    # SpeechArguments last (the speech run reads it by type, like every group)
    return Script("distill", (ModelArguments, DataArguments, DistillScriptArguments, LoraArguments, ReportArguments,
                              PushArguments, SpeechArguments), _distill, True,
                  "Distil a sequence classifier, or a Whisper speech recognizer, into a smaller student.")


def prune_script() -> Script:
    return Script("prune", (PruneModelArguments, DataArguments, PruneScriptArguments, ReportArguments, PushArguments,
                            SpeechArguments), _prune, True,
                  "Prune a sequence classifier while it learns from a teacher: single weights (magnitude / movement), "
                  "or whole attention heads, FFN neurons and blocks cut out of the model (--granularity structured).")


def lowrank_script() -> Script:
    return Script("lowrank", (LowRankModelArguments, DataArguments, LowRankScriptArguments, ReportArguments,
                              PushArguments), _lowrank, True,
                  "Factorize a classifier's projections by truncated SVD and train the factors back with "
                  "distillation from the unfactorized model.")


def share_script() -> Script:
    return Script("share", (FullCopyModelArguments, DataArguments, ShareScriptArguments, ReportArguments,
                            PushArguments), _share, True,
                  "Share weights (Deep Compression: k values per matrix by k-means, 4-bit indices for k = 16) and "
                  "train the shared values with distillation from the unshared model.")


def qat_script() -> Script:
    return Script("qat", (FullCopyModelArguments, DataArguments, QATScriptArguments, ReportArguments, PushArguments),
                  _qat, True,
                  "Quantization-aware training with distillation from the full-precision model: ternary (TernaryBERT), "
                  "binary or int8 (Q8BERT) weights per row, 8-bit activations, packed 2/1/8-bit checkpoints.")


def quantize_script() -> Script:
    return Script("quantize", _quantize_groups(), _quantize, False,
                  "Quantize a trained classifier (after distillation, pruning, vocabulary trimming or low rank) and "
                  "measure it against the model it came from: accuracy, size of the whole checkpoint, CPU latency, "
                  "peak memory.")


def script(name: str) -> Script:
    """The script called `name` (distill, prune, lowrank, quantize, or a registered method's command): the script
    of the method whose stage it is (`hfcompress.registry`)."""
    from ..registry import stage_method

    method = stage_method(name)
    if method is None or method.script is None:
        raise KeyError(name)
    return method.resolve_script()


def script_names() -> list[str]:
    """The commands: every registered stage whose script carries its own name (``lora`` runs ``distill``)."""
    from ..registry import methods

    return [m.stage for m in methods() if m.stage and m.resolve_script().name == m.stage]


def command_main(name: str, description: str | None = None) -> Callable:
    """`main(argv)` of the command `name`: one `HfArgumentParser` over the script's groups (flags and/or a YAML/JSON
    `--config`), logging set up, then its run. What `hfcompress <name>` and `scripts/<name>.py` both call."""

    def main(argv=None):
        from ..cli import parse_args, setup_logging

        entry = script(name)
        parsed = parse_args(entry.groups, argv, description=description or entry.description)
        setup_logging(next((g for g in parsed if hasattr(g, "get_process_log_level")), None))
        return entry.run(*parsed)

    main.__name__ = f"{name}_main"
    return main
