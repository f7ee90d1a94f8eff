"""The package as a user installs it: a wheel built from this checkout holds the card template, the recipes and the
metric modules; installed outside the checkout (`pip install --target`), its `hfcompress distill` command runs a
small real job from another folder and writes the card (`.ci/smoke.py`; `.ci/run` runs all four commands from a wheel
installed with its extras into a fresh virtual environment). Optional parts name their extra when missing."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


def test_the_wheel_holds_templates_recipes_and_metrics_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                          str(dist), ROOT], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    wheel = next(dist.glob("hfcompress-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("hfcompress/templates/model_card.md", "hfcompress/recipes/minilm-l6-prune-int8.yaml",
                   "hfcompress/metric_modules/accuracy/accuracy.py", "hfcompress/metric_modules/wer/wer.py"):
        assert needed in names, needed
    assert not any(n.startswith(("scripts/", "tests/", "model_cards/")) for n in names)
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import hfcompress; print(hfcompress.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(site)), where.stdout  # the installed copy, not the checkout
    res = subprocess.run([sys.executable, os.path.join(ROOT, ".ci", "smoke.py"), str(work), "--hfcompress",
                          f"{sys.executable} -m hfcompress", "--jobs", "distill"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    card = (work / "distill" / "model" / "README.md").read_text()
    assert "knowledge distillation" in card and "smaller" in card


@pytest.mark.parametrize("extra, call", [
    ("onnx", lambda tmp: __import__("hfcompress.onnx_io", fromlist=["x"]).ort_session(str(tmp / "m.onnx"))),
    ("lora", lambda tmp: __import__("hfcompress.lora.adapter", fromlist=["x"]).load_lora(str(tmp))),
    ("bnb", lambda tmp: __import__("hfcompress.quantize.bnb", fromlist=["x"])._import_bnb()),
    ("plots", lambda tmp: __import__("hfcompress.report.plot", fromlist=["x"])._pyplot()),
])
def test_a_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path, extra, call):
    from hfcompress.extras import EXTRAS, MissingExtraError

    real = importlib.util.find_spec
    hidden = EXTRAS[extra][-1]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == hidden else real(name, *a))
    with pytest.raises(MissingExtraError, match=rf"needs {hidden}, which is not installed: pip install "
                                                 rf"'hfcompress\[{extra}\]'"):
        call(tmp_path)


def test_the_run_commands_are_hfcompress_subcommands():
    res = subprocess.run([sys.executable, "-m", "hfcompress", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0
    for name in ("distill", "prune", "lowrank", "quantize", "compress"):
        assert name in res.stdout
    res = subprocess.run([sys.executable, "-m", "hfcompress", "compress", "--recipe", "no-such-recipe"],
                         capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert res.returncode == 2 and "no shipped recipe of that name (shipped: minilm-l6-distil3-prune-lora-int8, " \
        "minilm-l6-prune-int8)" in res.stderr
