"""`hfcompress measure | card | push` for a model compressed with the user's own code, on a CSV with string labels:
the comparison is measured (changes consistent with both sides), the card's metadata and table come from it, the
plot is beside it, and the dry-run push holds exactly the folder."""

import json
import os

import pytest
import torch
from conftest import save_tiny_assets, write_reviews_csv
from huggingface_hub import ModelCard

from hfcompress.commands import main
from hfcompress.report.measure import checkpoint_size_mb, parameter_counts

FAST = ["--latency_rounds", "1", "--no_measure_memory"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A teacher and a 'compressed' copy made with plain PyTorch: half its FFN rows zeroed (user code, no hfcompress)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("models")
    teacher, _ = save_tiny_assets(root)
    data = write_reviews_csv(root / "reviews.csv", n=60)
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.intermediate.dense.weight[::2] = 0
    small = str(root / "my-small-model")
    model.save_pretrained(small)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(small)
    return teacher, small, data


def test_measure_prints_and_writes_the_comparison(models, tmp_path, capsys):
    teacher, small, data = models
    out = tmp_path / "m.json"
    assert main(["measure", small, "--base", teacher, "--dataset", data, "--output", str(out), *FAST]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed["model"]["metrics"] == written["model"]["metrics"]
    c = written
    assert c["split"] == "test" and c["rows"] > 0
    assert c["model"]["size_mb"] == pytest.approx(checkpoint_size_mb(small))
    assert c["model"]["nonzero_parameters"] < c["model"]["parameters"] == c["base"]["parameters"]
    for key, ch in c["changes"].items():
        assert ch["delta"] == pytest.approx(ch["model"] - ch["base"]), key
        if ch["base"]:
            assert ch["relative"] == pytest.approx(ch["delta"] / ch["base"]), key
    assert c["accuracy_delta_points"] == pytest.approx(100 * c["changes"]["metric_accuracy"]["delta"])
    assert c["protocol"]["rounds"] == 1 and c["protocol"]["threads"] == 2


def test_card_is_measured_not_typed(models, tmp_path):
    teacher, small, data = models
    assert main(["card", small, "--base", teacher, "--dataset", data, "--base_model", "someone/tiny-base",
                 "--method", "half of every FFN's rows zeroed with my own code", *FAST]) == 0
    card = ModelCard.load(os.path.join(small, "README.md"))
    assert card.data.base_model == "someone/tiny-base" and card.data.base_model_relation == "finetune"
    assert "hfcompress" in card.data.tags and card.data.pipeline_tag == "text-classification"
    result = card.data.eval_results[0]
    assert result.metric_type == "accuracy" and result.dataset_split == "test"
    # the numbers in the card are those of a fresh measurement of the same folders
    again = json.loads(json.dumps(_measure(teacher, small, data)))
    assert result.metric_value == pytest.approx(again["model"]["metrics"]["accuracy"])
    assert f"{again['model']['metrics']['accuracy']:.4f}" in card.text
    assert f"{parameter_counts_of(small):,}" in card.text
    assert "half of every FFN's rows zeroed with my own code" in card.text
    assert "![accuracy against size and latency](compression.png)" in card.text
    assert os.path.getsize(os.path.join(small, "compression.png")) > 1000
    # the card and the plot do not count in the checkpoint's size
    assert checkpoint_size_mb(small) == pytest.approx(again["model"]["size_mb"])


def _measure(teacher, small, data):
    from hfcompress.report.measure import MeasureConfig, compare_checkpoints
    from hfcompress.run.arguments import DataArguments
    from hfcompress.run.steps import load_data

    test = load_data(DataArguments(dataset=data))["test"]
    return compare_checkpoints(teacher, small, test["text"], test["label"],
                               config=MeasureConfig(rounds=1, memory=False))


def parameter_counts_of(path):
    from hfcompress.loading import load_model

    return parameter_counts(load_model(path))["parameters"]


def test_push_dry_run_from_the_command(models, tmp_path):
    teacher, small, data = models
    out = tmp_path / "upload"
    assert main(["push", small, "--hub_model_id", "me/my-small-model", "--push_dry_run", str(out)]) == 0
    plan = json.loads((out / "push_plan.json").read_text())
    assert plan["repo_id"] == "me/my-small-model"
    assert sorted(f["path"] if isinstance(f, dict) else f for f in plan["files"]) == sorted(
        f for f in os.listdir(small) if not f.startswith("."))


@pytest.mark.parametrize("command", ["measure", "card", "push"])
def test_every_command_explains_its_flags(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "model_dir" in text and ("--base" in text or "--hub_model_id" in text)


def test_measure_names_a_bad_folder(models, capsys):
    teacher, small, data = models
    assert main(["measure", "/no/such/folder", "--base", teacher, "--dataset", data, *FAST]) == 2
    assert "/no/such/folder" in capsys.readouterr().err
