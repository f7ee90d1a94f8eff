"""What the CPU can do, read once from ``/proc/cpuinfo`` (Linux): its model name and the instruction sets that decide
how fast int8 and bf16 run here. Recorded with every run (`report.record.environment`), so a speedup measured on one
machine can be read against the machine it came from; and asked by the methods whose result depends on it (the int8
ONNX export: `cpu_has_vnni`)."""

from __future__ import annotations

import functools
import platform

# the flags that change int8 / bf16 speed or exactness on x86 (the kernels PyTorch and ONNX Runtime pick by them)
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
               "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """``{"model": name or None, "flags": [the SPEED_FLAGS the CPU has]}``; flags None where they cannot be read
    (not Linux): then nothing is assumed missing."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {"model": platform.processor() or None, "flags": None}
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), None)
    return {"model": model, "flags": None if flags is None else [f for f in SPEED_FLAGS if f in flags]}


def cpu_has_vnni() -> bool:
    """True where x86 int8 kernels have VNNI (AVX-512 VNNI or AVX-VNNI: exact 32-bit sums with full-range int8
    weights), or where this cannot be read: then nothing is assumed missing."""
    flags = cpu_info()["flags"]
    return flags is None or any("vnni" in f for f in flags)


def bf16_training_args(bf16: bool) -> dict:
    """`TrainingArguments` fields for bf16 autocast: transformers accepts bf16 without a GPU only when told the run
    is on the CPU (``use_cpu``)."""
    import torch

    return {"bf16": bf16, "use_cpu": bf16 and not torch.cuda.is_available()}
