"""What a model costs, measured: parameters, size on disk, CPU/GPU latency, peak memory of a fresh process.

The primitives every part of the package measures with (structured pruning's latency budget, the quantizers' size
reports, the run records, the comparisons of saved checkpoints in `report.measure`). Ground floor: it imports nothing
of the package (the peak-memory probe's child process loads the checkpoint with `hfcompress.loading`).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import torch


def count_parameters(model: torch.nn.Module, nonzero: bool = False) -> int:
    """Parameters (shared tensors counted once); with `nonzero`, only non-zero entries (for sparsity)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += int(torch.count_nonzero(p)) if nonzero else p.numel()
    return total


def model_size_mb(model) -> float:
    """Size on disk of the model's safetensors weights, in MB (10^6 bytes), by saving it to a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.endswith(".safetensors"))
    return size / 1e6


def model_device(model) -> torch.device:
    """Where a model runs: its `device` attribute (transformers models, ONNX Runtime wrappers), else its first
    parameter's device."""
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def checkpoint_size_mb(path: str) -> float:
    """Everything a user downloads to run the model: the size of every file under the checkpoint folder (weights,
    config, tokenizer, modeling code) except its model card (``README.md``), plots (``*.png``) and run record
    (``hfcompress_record.json``), written from this very measurement, in MB (10^6 bytes)."""
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                     if not (root == path and (f in ("README.md", "hfcompress_record.json") or f.endswith(".png"))))
    return total / 1e6


_PEAK_MEMORY_CODE = """
import sys, torch
from hfcompress.loading import load_model

def hwm():  # this process's own peak resident memory, MB (VmHWM is per address space: exec starts it afresh)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

torch.set_num_threads(int(sys.argv[3]))
before = hwm()
model = load_model(sys.argv[1], num_threads=int(sys.argv[3]))
seq = min(128, int(getattr(model.config, "max_position_embeddings", 130)) - 2)  # RoBERTa/MPNet offsets
ids = torch.randint(5, model.config.vocab_size - 1, (int(sys.argv[2]), seq), generator=torch.Generator().manual_seed(0))
with torch.inference_mode():
    model(input_ids=ids, attention_mask=torch.ones_like(ids))
print(before, hwm())
"""


def measure_peak_memory(path: str, batch_size: int = 32, threads: int = 2) -> dict:
    """Peak resident memory (MB, Linux ``VmHWM``) of a fresh process that loads the checkpoint at `path` with
    `hfcompress.loading.load_model` and runs one `[batch_size, 128]` forward; also its peak before loading (the
    interpreter with torch and transformers imported), so the model's own share can be read off. (``ru_maxrss`` would
    not do: a child inherits its parent's maximum.)"""
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, "-c", _PEAK_MEMORY_CODE, path, str(batch_size), str(threads)],
                         capture_output=True, text=True, env=env, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"peak-memory probe of {path} failed: {res.stderr[-2000:]}")
    before, peak = (float(x) for x in res.stdout.strip().splitlines()[-1].split())
    return {"peak_memory_mb": peak, "before_load_mb": before, "model_memory_mb": peak - before,
            "batch_size": batch_size, "seq_len": 128}


def folder_size_mb(path: str, suffix: str = ".safetensors") -> float:
    """Size on disk of the weight files (`suffix`) in a saved checkpoint folder, in MB (10^6 bytes)."""
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(suffix)) / 1e6


@torch.inference_mode()
def measure_latency(
    model: torch.nn.Module,
    batch_size: int = 32,
    seq_len: int = 128,
    runs: int = 7,
    warmup: int = 2,
    vocab_size: int | None = None,
    seed: int = 0,
) -> dict:
    """Median wall-clock milliseconds of one forward pass on a `[batch_size, seq_len]` batch of random ids.

    Measured on the model's current device with the current torch thread count, after `warmup` passes.
    """
    model.eval()
    device = model_device(model)
    vocab = vocab_size or model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab - 1, (batch_size, seq_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    for _ in range(warmup):
        model(input_ids=ids, attention_mask=mask)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(input_ids=ids, attention_mask=mask)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "runs": runs,
        "warmup": warmup,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def interleaved_latency(models: dict, rounds: int = 3, **latency_kwargs) -> dict[str, dict]:
    """`measure_latency` of every model in turn, `rounds` times over, in this process, so a drifting machine load
    shows in all of them: per model the median over rounds of the round's median (``median_ms``), the round values
    (``rounds_ms``), and the ratio to the first model, the reference, round by round (``speedup_rounds``) and its
    median (``speedup``). `latency_kwargs` go to `measure_latency` (batch, sequence length, runs, warm-up)."""
    per_round: dict[str, list[float]] = {name: [] for name in models}
    last = {}
    for _ in range(rounds):
        for name, model in models.items():
            last[name] = measure_latency(model, **latency_kwargs)
            per_round[name].append(last[name]["median_ms"])
    first = next(iter(models))
    out = {}
    for name in models:
        ratios = [r / m for r, m in zip(per_round[first], per_round[name])]
        out[name] = {**last[name], "median_ms": statistics.median(per_round[name]), "rounds_ms": per_round[name],
                     "speedup_rounds": ratios, "speedup": statistics.median(ratios)}
    return out


def parameter_counts(model) -> dict:
    """Parameters of a loaded model, whatever it was saved as: ``parameters`` (weights as the float model had them)
    and ``nonzero_parameters`` (entries that are not zero; None where the storage packs several per byte, as 4-bit).

    A PyTorch model counts its parameters and, for dynamic int8 layers, their packed weights; a bitsandbytes 4-bit
    weight counts the elements it stands for; an ONNX model counts its graph's weight initializers (quantization
    scales and zero points left out)."""
    if not isinstance(model, torch.nn.Module):
        counts = getattr(model, "parameter_counts", None)
        if counts is None:
            raise TypeError(f"cannot count the parameters of a {type(model).__name__}")
        return counts()
    total, nonzero, packed, seen = 0, 0, False, set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        state = getattr(p, "quant_state", None)
        if state is not None:  # bitsandbytes 4-bit: two values per byte
            total += int(np.prod(state.shape))
            packed = True
            continue
        total += p.numel()
        nonzero += int(torch.count_nonzero(p))
    for module in model.modules():  # torch.ao dynamic int8 Linear: weights packed outside `parameters()`
        weight = getattr(module, "weight", None)
        if callable(weight) and type(module).__module__.startswith("torch.ao.nn.quantized"):
            w = weight()
            total += w.numel()
            nonzero += int(torch.count_nonzero(w.int_repr() if w.is_quantized else w))
            b = module.bias() if callable(getattr(module, "bias", None)) else None
            if b is not None:
                total += b.numel()
                nonzero += int(torch.count_nonzero(b))
    return {"parameters": total, "nonzero_parameters": None if packed else nonzero}
