"""The CUDA paths: distillation under bf16 and fp16 autocast, structured pruning, bitsandbytes 8/4-bit and the teacher
cache, on `cuda`. Marked `gpu` and skipped without CUDA (CI never needs one); run them with `make test-gpu` where a GPU
is available. Each runs a script in its own process on tiny models, as the CPU tests do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, save_tiny_assets, tiny_bert

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run with make test-gpu on a GPU)")]

TRAIN = ["--max_steps", "6", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "3",
         "--per_device_train_batch_size", "8", "--latency_rounds", "1", "--no_measure_memory",
         "--dataloader_num_workers", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("gpu-assets"))


def _run(cmd, tmp_path):
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


@pytest.mark.parametrize("precision", ["--bf16", "--fp16"])
def test_distillation_with_autocast_and_the_teacher_cache_on_cuda(tiny, tmp_path, precision):
    if precision == "--bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    teacher, data = tiny
    out = tmp_path / "out"
    _run([sys.executable, os.path.join(ROOT, "scripts", "distill.py"), "--teacher_model", teacher, "--dataset", data,
          "--student_layers", "0,2", precision, *TRAIN, "--output_dir", str(out)], tmp_path)
    s = json.loads((out / "distill_summary.json").read_text())
    assert s["environment"]["cuda"] and s["methods"]["distillation"]["teacher_outputs"].startswith(("cached", "logits"))
    assert s["training"]["steps"] == 6 and (out / "model" / "README.md").exists()
    assert all(v == v for v in s["metrics"]["student"]["test"].values() if isinstance(v, float))  # no NaN


def test_structured_pruning_on_cuda_reloads(tiny, tmp_path):
    from hfcompress.loading import load_model

    teacher, data = tiny
    out = tmp_path / "out"
    _run([sys.executable, os.path.join(ROOT, "scripts", "prune.py"), "--teacher_model", teacher, "--dataset", data,
          "--granularity", "structured", "--target_sparsity", "0.5", "--bf16" if torch.cuda.is_bf16_supported()
          else "--fp16", *TRAIN, "--output_dir", str(out)], tmp_path)
    s = json.loads((out / "prune_summary.json").read_text())
    assert s["methods"]["pruning"]["heads_after"] < s["methods"]["pruning"]["heads_before"]
    model = load_model(str(out / "model")).cuda()
    ids = torch.randint(5, 60, (2, 12), device="cuda")
    assert model(input_ids=ids).logits.shape == (2, 2)


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_on_cuda_saves_and_reloads(tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    from hfcompress.quantize import load_quantized, reload_quantized, save_quantized

    model = tiny_bert(num_layers=2, hidden=64, heads=4)
    folder = tmp_path / "fp32"
    model.save_pretrained(folder)
    quantized = load_quantized(str(folder), bits=bits, device="cuda")
    ids = torch.randint(5, 60, (2, 12), device="cuda")
    with torch.no_grad():
        before = quantized(input_ids=ids).logits.float()
    save_quantized(quantized, str(tmp_path / "q"))
    reloaded = reload_quantized(str(tmp_path / "q"), device="cuda")
    with torch.no_grad():
        after = reloaded(input_ids=ids.to(reloaded.device)).logits.float().to(before.device)
    assert torch.allclose(before, after, atol=1e-3)
