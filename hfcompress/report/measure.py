from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..metrics import compute_classification_metrics

logger = logging.getLogger(__name__)


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
    config, tokenizer, modeling code) except its model card (``README.md``) and plots (``*.png``), written from this
    very measurement, in MB
    (10^6 bytes)."""
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                     if not (root == path and (f == "README.md" or f.endswith(".png"))))
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


@torch.inference_mode()
def evaluate_classifier(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    labels: list[int],
    batch_size: int = 64,
    max_length: int = 128,
    desc: str = "Evaluating",
) -> dict:
    """Accuracy/F1 of a sequence classifier on raw texts, tokenized with its own tokenizer."""
    from transformers import EvalPrediction

    model.eval()
    device = model_device(model)
    logits = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False):
        enc = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        logits.append(model(**{k: v.to(device) for k, v in enc.items()}).logits.float().cpu().numpy())
    return compute_classification_metrics(EvalPrediction(predictions=np.concatenate(logits), label_ids=np.asarray(labels)))


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


def saved_models_latency(paths: dict[str, str], threads: int = 2, rounds: int = 3, batch_size: int = 32,
                         seq_len: int = 128, runs: int = 7, warmup: int = 2) -> dict[str, dict]:
    """`interleaved_latency` of saved checkpoints, each loaded fresh with `hfcompress.loading.load_model`, on
    `threads` threads (the first path is the reference of the ratios): batch `batch_size` x `seq_len` tokens (fewer
    when a model's position table is shorter, as in tiny test models: the same batch shape for all)."""
    from ..loading import load_model

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        models = {name: load_model(path, num_threads=threads) for name, path in paths.items()}
        # every model takes the batch: the shortest position table bounds it (less 2 for the families whose
        # positions start after the padding index, RoBERTa and MPNet)
        seq_len = min([seq_len] + [int(getattr(m.config, "max_position_embeddings", seq_len + 2)) - 2
                                   for m in models.values()])
        out = interleaved_latency(models, rounds, batch_size=batch_size, seq_len=seq_len, runs=runs, warmup=warmup)
    finally:
        torch.set_num_threads(previous)
    for row in out.values():
        row["threads"] = threads
    return out


def change(before: float | None, after: float | None) -> dict | None:
    """``{"base", "model", "delta", "relative"}``: the absolute and relative change of one measurement."""
    if before is None or after is None:
        return None
    return {"base": before, "model": after, "delta": after - before,
            "relative": (after - before) / before if before else None}


@dataclasses.dataclass
class MeasureConfig:
    """How `compare_checkpoints` measures (recorded with the figures)."""

    threads: int = dataclasses.field(default=2, metadata={"help": "CPU threads of the latency measurement."})
    rounds: int = dataclasses.field(default=3, metadata={"help": "Interleaved latency rounds (base, model, base, ...)."})
    runs: int = dataclasses.field(default=7, metadata={"help": "Timed forward passes per round (the median is kept)."})
    warmup: int = dataclasses.field(default=2, metadata={"help": "Untimed forward passes before each round's runs."})
    batch_size: int = dataclasses.field(default=32, metadata={"help": "Latency batch size."})
    seq_len: int = dataclasses.field(default=128, metadata={"help": "Latency sequence length in tokens."})
    memory: bool = dataclasses.field(default=True, metadata={"help": "Measure peak memory in fresh processes."})


def compare_checkpoints(base_dir: str, model_dir: str, texts: list[str], labels: list[int], split: str = "test",
                        max_length: int = 128, config: MeasureConfig | None = None,
                        variants: dict[str, str] | None = None) -> dict:
    """The base model and its compressed version, both as saved on disk and loaded fresh, measured side by side on
    the same evaluation rows: parameters (total and non-zero), size on disk of the whole checkpoint folder, peak
    memory, CPU latency (interleaved), task metrics, and every change (absolute and relative). This is the one
    measurement every script, benchmark, recipe and card reads; nothing in a card comes from elsewhere.

    `variants` (name -> checkpoint folder, e.g. a recipe's intermediate stages) are measured in the same session
    (metrics, size, parameters, latency interleaved with the two others; not memory) under ``"variants"``."""
    from transformers import AutoTokenizer

    from ..loading import checkpoint_format, load_model

    config = config or MeasureConfig()
    variants = dict(variants or {})
    if {"base", "model"} & set(variants):
        raise ValueError("a variant cannot be called 'base' or 'model'")
    sides = {}
    for role, path in (("base", base_dir), ("model", model_dir), *variants.items()):
        model = load_model(path, num_threads=config.threads)
        tokenizer = AutoTokenizer.from_pretrained(path)
        metrics = evaluate_classifier(model, tokenizer, texts, labels, max_length=max_length, desc=f"{split} ({role})")
        sides[role] = {"path": os.path.abspath(path), "format": checkpoint_format(path), **parameter_counts(model),
                       "size_mb": checkpoint_size_mb(path), "metrics": metrics}
        del model
    latency = saved_models_latency({"base": base_dir, "model": model_dir, **variants}, config.threads, config.rounds,
                                   config.batch_size, config.seq_len, config.runs, config.warmup)
    for role in sides:
        sides[role]["latency"] = latency[role]
        sides[role]["latency_ms"] = latency[role]["median_ms"]
        if role in variants:
            sides[role]["size_ratio"] = sides["base"]["size_mb"] / sides[role]["size_mb"]
            sides[role]["speedup"] = latency[role]["speedup"]
        elif config.memory:
            mem = measure_peak_memory(sides[role]["path"], batch_size=config.batch_size, threads=config.threads)
            sides[role]["peak_memory_mb"] = mem["peak_memory_mb"]
            sides[role]["model_memory_mb"] = mem["model_memory_mb"]
    base, model = sides.pop("base"), sides.pop("model")
    changes = {f"metric_{k}": change(v, model["metrics"].get(k)) for k, v in base["metrics"].items()
               if isinstance(v, (int, float))}
    for key in ("size_mb", "latency_ms", "parameters", "nonzero_parameters", "peak_memory_mb"):
        changes[key] = change(base.get(key), model.get(key))
    accuracy = changes.get("metric_accuracy")
    return {
        "split": split,
        "rows": len(texts),
        "base": base,
        "model": model,
        "changes": {k: v for k, v in changes.items() if v is not None},
        "size_ratio": base["size_mb"] / model["size_mb"],
        "speedup": latency["model"]["speedup"],
        "accuracy_delta_points": 100 * accuracy["delta"] if accuracy else None,
        "variants": sides,
        "protocol": {**dataclasses.asdict(config), "seq_len": latency["model"]["seq_len"],
                     "device": latency["model"]["device"], "ratio": "base / model, per round, median of rounds",
                     "max_length_eval": max_length},
    }
