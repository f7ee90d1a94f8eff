"""scripts/lowrank.py end to end on tiny local assets: the student is factorized before the trainer is built (so the
optimizer trains the factors), trains with distillation, and the saved model reloads with and without hfcompress with
the logits the run ended with; a rank a matrix cannot have is one clear error before the teacher is touched."""

import json
import os
import subprocess
import sys

import torch
from conftest import ROOT, make_texts, make_tokenizer, save_tiny_assets
from transformers import AutoModelForSequenceClassification

from hfcompress.lowrank import LowRankLinear, load_lowrank


def _run(tmp_path, *flags):
    teacher_dir, data_file = save_tiny_assets(tmp_path / "assets")
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "lowrank.py"), "--teacher_model", teacher_dir,
           "--dataset", data_file, "--output_dir", str(tmp_path / "out"), "--max_steps", "5", "--eval_strategy", "no",
           "--save_strategy", "no", "--use_cpu", "--learning_rate", "1e-3", "--dataloader_num_workers", "0", "--latency_rounds", "1", "--no_measure_memory", *flags]
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT), teacher_dir


def test_factors_train_and_reload_with_and_without_hfcompress(tmp_path):
    res, teacher_dir = _run(tmp_path, "--parameter_budget", "0.5")
    assert res.returncode == 0, res.stderr[-4000:]
    out = tmp_path / "out"
    with open(out / "lowrank_summary.json") as fh:
        record = json.load(fh)
    low = record["methods"]["lowrank"]
    assert low["parameter_budget"] == 0.5
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    ours = load_lowrank(str(out / "model"))
    assert any(isinstance(m, LowRankLinear) for m in ours.modules())
    assert sum(p.numel() for p in ours.parameters()) < sum(p.numel() for p in teacher.parameters())
    assert record["models"]["student"]["parameters"] == sum(p.numel() for p in ours.parameters())
    remote = AutoModelForSequenceClassification.from_pretrained(str(out / "model"), trust_remote_code=True).eval()
    tok = make_tokenizer()
    enc = tok(make_texts(6, 2)[0], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(ours(**enc).logits, remote(**enc).logits)
    # the factors trained: they are not the truncated SVD of the teacher any more
    from hfcompress.lowrank import factorize

    fresh = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    factorize(fresh, parameter_budget=0.5, show_progress=False)
    name = next(n for n, m in ours.named_modules() if isinstance(m, LowRankLinear))
    assert not torch.allclose(ours.get_submodule(name).up.weight, fresh.get_submodule(name).up.weight)


def test_rank_larger_than_a_matrix_fails_before_the_teacher(tmp_path):
    res, _ = _run(tmp_path, "--rank", "1000")
    assert res.returncode == 2
    assert "rank" in res.stderr and "1000" in res.stderr
    assert not (tmp_path / "out" / "teacher_cache").exists()
