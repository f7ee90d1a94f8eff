"""hfcompress: compression for the Hugging Face stack, as Trainer subclasses and callbacks.

`import hfcompress` is cheap and quiet: the public names below are imported on first use (PEP 562), so neither
torch nor transformers is loaded until you touch one of them.

bitsandbytes (>= 0.48) asks the Hugging Face Hub for a compiled kernel (`kernels-community/quantization-bitsandbytes`,
through the `kernels` package that transformers requires) the moment it is imported on a CPU with AVX512-BF16, and
importing `transformers.Trainer` imports it (through peft) even when no quantization is wanted. Once hfcompress is
imported, bitsandbytes is imported without that download: it uses the CPU code of its own wheel (the same results;
only its fused bf16 4-bit matmul is not fetched), so no request leaves the machine and no message is printed. Set
`HFCOMPRESS_BNB_HUB_KERNELS=1` to let bitsandbytes fetch the kernel as it would without hfcompress.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import os
import sys

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "DistillationArguments": ".distill",
    "DistillationCallback": ".distill",
    "DistillationConfig": ".distill",
    "DistillationDataCollator": ".distill",
    "TokenDistillationCollator": ".distill",
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
    "FaithfulResumeCallback": ".checkpoints",
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
    "OnnxModelForQuestionAnswering": ".quantize",
    "OnnxModelForTokenClassification": ".quantize",
    "export_onnx": ".quantize",
    "quantize_onnx": ".quantize",
    "quantize_dynamic_int8": ".quantize",
    "load_quantized": ".quantize",
    "VocabTrimConfig": ".vocab",
    "trim_vocabulary": ".vocab",
    "WeightSharingCallback": ".share",
    "WeightSharingConfig": ".share",
    "share_weights": ".share",
    "load_shared": ".share",
    "save_shared": ".share",
    "QATCallback": ".qat",
    "QATConfig": ".qat",
    "apply_qat": ".qat",
    "load_qat": ".qat",
    "save_qat": ".qat",
    "load_model": ".loading",
    "run_distillation": ".run",
}

__all__ = list(_LAZY)

# subpackages reachable as attributes after a bare `import hfcompress` (e.g. `hfcompress.distill`)
_SUBMODULES = ("arch", "assets", "cli", "commands", "data", "distill", "errors", "loading", "lora", "lowrank", "metrics",
               "prune", "qat", "quantize", "report", "run", "share", "vocab")


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
    # bitsandbytes >= 0.48 CPU backend: without the Hub kernel it falls back to its own code, and says so.
    bnb_cpu = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DemoteToDebug) for f in bnb_cpu.filters):
        bnb_cpu.addFilter(_DemoteToDebug(("Failed to load CPU gemm_4bit_forward from kernels-community",)))


class _BitsandbytesWithoutHubKernels(importlib.abc.MetaPathFinder):
    """Import bitsandbytes, when something first imports it, with the `kernels` package hidden: its CPU backend then
    keeps to the code of its own wheel instead of asking the Hub for `kernels-community/quantization-bitsandbytes`
    (a publisher check and a download of compiled code) at import time. Lazy: nothing is imported here."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "bitsandbytes":
            return None
        if self in sys.meta_path:  # one shot: find the real spec with the other finders
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_without_kernels(module):
            missing = object()
            saved = sys.modules.get("kernels", missing)
            sys.modules["kernels"] = None  # `from kernels import get_kernel` raises ImportError: bnb falls back
            try:
                exec_module(module)
            finally:
                if saved is missing:
                    sys.modules.pop("kernels", None)
                else:
                    sys.modules["kernels"] = saved

        loader.exec_module = exec_without_kernels
        return spec


def _keep_bitsandbytes_offline() -> None:
    if os.environ.get("HFCOMPRESS_BNB_HUB_KERNELS", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    if "bitsandbytes" in sys.modules or any(isinstance(f, _BitsandbytesWithoutHubKernels) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BitsandbytesWithoutHubKernels())


_quiet_optional_backends()
_keep_bitsandbytes_offline()


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
