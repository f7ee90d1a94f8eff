"""hfcompress: compression for the Hugging Face stack, as Trainer subclasses and callbacks.

`import hfcompress` is cheap and quiet: the public names below are imported on first use (PEP 562), so neither
torch nor transformers is loaded until you touch one of them. Importing `transformers.Trainer` /
`TrainingArguments` pulls in peft, and peft pulls in bitsandbytes, whose CPU backend logs a harmless
"Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'" warning;
`_quiet_optional_backends` demotes that one record to DEBUG (it stays visible with DEBUG logging).
"""

from __future__ import annotations

import importlib
import logging

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "DistillationArguments": ".distill",
    "DistillationCallback": ".distill",
    "DistillationConfig": ".distill",
    "DistillationDataCollator": ".distill",
    "DistillationLoss": ".distill",
    "DistillationTrainer": ".distill",
    "init_student_from_teacher": ".distill",
    "Pruner": ".prune",
    "PruningArguments": ".run.prune",
    "PruningCallback": ".prune",
    "PruningConfig": ".prune",
    "StructuredPruner": ".prune",
    "load_sparse": ".prune",
    "load_structured": ".prune",
    "save_structured": ".prune",
    "save_dense": ".prune",
    "save_sparse": ".prune",
    "RunRecord": ".report.record",
    "LoraArguments": ".lora",
    "apply_lora": ".lora",
    "load_lora": ".lora",
    "merge_lora": ".lora",
    "LowRankConfig": ".lowrank",
    "factorize": ".lowrank",
    "load_lowrank": ".lowrank",
    "save_lowrank": ".lowrank",
    "QuantizationConfig": ".quantize",
    "OnnxModelForSequenceClassification": ".quantize",
    "export_onnx": ".quantize",
    "quantize_onnx": ".quantize",
    "quantize_dynamic_int8": ".quantize",
    "load_quantized": ".quantize",
    "VocabTrimConfig": ".vocab",
    "trim_vocabulary": ".vocab",
    "load_model": ".loading",
    "run_distillation": ".run",
}

__all__ = list(_LAZY)

# subpackages reachable as attributes after a bare `import hfcompress` (e.g. `hfcompress.distill`)
_SUBMODULES = ("arch", "assets", "cli", "commands", "data", "distill", "errors", "loading", "lora", "lowrank", "metrics",
               "prune", "quantize", "report", "run", "vocab")


class _DemoteToDebug(logging.Filter):
    """Turn known-harmless warnings of optional backends into DEBUG records (shown only if DEBUG is enabled)."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and str(record.msg).startswith(self.prefixes):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _quiet_optional_backends() -> None:
    # bitsandbytes >= 0.48 CPU backend: the optional `kernels` package is absent, it falls back to its own code.
    bnb_cpu = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DemoteToDebug) for f in bnb_cpu.filters):
        bnb_cpu.addFilter(_DemoteToDebug(("Failed to load CPU gemm_4bit_forward from kernels-community",)))


_quiet_optional_backends()


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
