"""scripts/compress.py --recipe end to end on a tiny classifier and a CSV with string labels: distil -> structured
prune -> LoRA -> ONNX int8 in one command, every stage recorded and measured, the final card and plot from the
measurement; a run killed inside a stage resumes there; bad recipes are one error naming the line, before any work."""

import importlib.util
import json
import os

import pytest
import yaml
from conftest import ROOT, load_script, save_tiny_assets, write_reviews_csv

from hfcompress.errors import UserInputError
from hfcompress.loading import checkpoint_format, load_model
from hfcompress.report.measure import evaluate_classifier


def _main():
    return load_script("compress").main


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    teacher, _ = save_tiny_assets(root)
    return teacher, write_reviews_csv(root / "reviews.csv", n=90)


FAST = {"eval_strategy": "no", "per_device_train_batch_size": 8, "save_strategy": "no"}


def _recipe(tmp_path, assets, stages=None, **top):
    teacher, data = assets
    recipe = {
        "name": "tiny-recipe",
        "base_model": teacher,
        "seed": 0,
        "data": {"dataset": data},
        "stages": stages if stages is not None else [
            {"name": "distil", "method": "distill", "args": {"student_layers": "0,2", "max_steps": 4, **FAST}},
            {"name": "prune", "method": "prune",
             "args": {"granularity": "structured", "target_sparsity": 0.5, "max_steps": 6, **FAST,
                      "save_strategy": "steps", "save_steps": 3}},
            {"method": "lora", "args": {"lora_r": 2, "max_steps": 3, **FAST}},
            {"method": "quantize", "args": {"quantization": "onnx_int8"}},
        ],
        "measure": {"latency_rounds": 1, "measure_memory": False},
        **top,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


def test_recipe_composes_methods_records_every_stage_and_cards_the_result(assets, tmp_path):
    out = tmp_path / "out"
    record = _main()(["--recipe", _recipe(tmp_path, assets), "--output_dir", str(out), "--push_dry_run"])
    summary = json.loads((out / "recipe_summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["distil", "prune", "lora", "quantize"]
    for stage in summary["stages"]:  # each stage ran through its script, wrote its record and was measured
        assert os.path.exists(stage["run_record"])
        assert set(stage["measured"]) >= {"accuracy", "size_mb", "latency_ms", "size_ratio", "speedup"}
    dirs = sorted(os.listdir(out / "stages"))
    assert dirs == ["01-distil", "02-prune", "03-lora", "04-quantize"]
    assert checkpoint_format(str(out / "stages" / "02-prune" / "model")) == "structured"
    assert set(summary["methods"]) >= {"distillation", "pruning", "lora", "quantization"}

    # The result: the last stage's model, reloaded, with the accuracy the comparison recorded.
    model_dir = str(out / "model")
    assert checkpoint_format(model_dir) == "onnx"
    c = summary["comparison"]
    assert c["rows"] == record.data["splits"]["test"]
    model = load_model(model_dir)
    assert c["model"]["parameters"] > 0
    assert set(c["variants"]) == {"distil", "prune", "lora"}  # earlier stages measured in the same session
    assert c["size_ratio"] == pytest.approx(c["base"]["size_mb"] / c["model"]["size_mb"])
    card = (out / "model" / "README.md").read_text()
    assert (out / "model" / "compression.png").stat().st_size > 1000
    assert "compression.png" in card and "hfcompress" in card and "structured pruning" in card
    assert f"{c['model']['metrics']['accuracy']:.4f}" in card and f"{c['size_ratio']:.2f}x smaller" in card
    # the dry run holds exactly the model folder: weights, config, tokenizer, card and plot
    upload = sorted(os.listdir(out / "hub_upload"))
    assert "README.md" in upload and "compression.png" in upload and "model.onnx" in upload
    assert set(upload) - {"push_plan.json"} == set(os.listdir(model_dir))
    # the accuracy recorded is the saved model's own
    from transformers import AutoTokenizer

    from hfcompress.run.arguments import DataArguments
    from hfcompress.run.steps import load_data

    test = load_data(DataArguments(dataset=assets[1]))["test"]
    acc = evaluate_classifier(model, AutoTokenizer.from_pretrained(model_dir), test["text"], test["label"])["accuracy"]
    assert acc == pytest.approx(c["model"]["metrics"]["accuracy"])


def test_a_recipe_killed_inside_a_stage_resumes_there(assets, tmp_path, monkeypatch):
    import hfcompress.run.steps as steps

    recipe = _recipe(tmp_path, assets, stages=[
        {"name": "distil", "method": "distill", "args": {"student_layers": "0,2", "max_steps": 4, **FAST}},
        {"name": "prune", "method": "prune",
         "args": {"granularity": "structured", "target_sparsity": 0.5, "max_steps": 6, **FAST,
                  "save_strategy": "steps", "save_steps": 3}},
    ])
    out = tmp_path / "out"
    real_evaluate, calls = steps.evaluate, []

    def killed_in_prune(trainer, tokenized, *a, **k):  # dies after the prune stage's training saved checkpoints
        calls.append(trainer.args.output_dir)
        if "02-prune" in trainer.args.output_dir and len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_evaluate(trainer, tokenized, *a, **k)

    monkeypatch.setattr(steps, "evaluate", killed_in_prune)
    with pytest.raises(KeyboardInterrupt):
        _main()(["--recipe", recipe, "--output_dir", str(out)])
    state = json.loads((out / "recipe_state.json").read_text())
    assert state["stages"]["distil"]["status"] == "done" and state["stages"]["prune"]["status"] == "running"
    distil_summary = out / "stages" / "01-distil" / "distill_summary.json"
    stamp = distil_summary.stat().st_mtime_ns

    _main()(["--recipe", recipe, "--output_dir", str(out)])
    assert distil_summary.stat().st_mtime_ns == stamp  # the finished stage was kept, not run again
    prune = json.loads((out / "stages" / "02-prune" / "prune_summary.json").read_text())
    assert prune["training"]["resumed_from"].endswith("checkpoint-6")
    assert json.loads((out / "recipe_state.json").read_text())["stages"]["prune"]["status"] == "done"

    # the same folder with a changed finished stage is refused, naming the line
    changed = _recipe(tmp_path, assets, stages=[
        {"name": "distil", "method": "distill", "args": {"student_layers": "0,1", "max_steps": 4, **FAST}},
    ])
    with pytest.raises(UserInputError, match=r"line \d+: stage 'distil' already ran"):
        _main()(["--recipe", changed, "--output_dir", str(out)])


@pytest.mark.parametrize("edit, needle, message", [
    (lambda r: r.update(stagez=[]), "stagez:", r"unknown key 'stagez'"),
    (lambda r: r["stages"][0]["args"].update(no_such_option=1), "no_such_option:",
     r"\(stage 'distil'\): unknown option 'no_such_option'"),
    (lambda r: r["stages"].append({"name": "again", "method": "prune", "args": {"granularity": "structured"}}),
     "- name: again", r"stage 'again' \(prune\) comes after quantize"),
    (lambda r: r.update(base_model="/no/such/model"), "base_model:", r"base model '/no/such/model' not found"),
    (lambda r: r["stages"][0].update(method="sparsify"), "method: sparsify", r"stage method must be one of"),
    (lambda r: r["stages"][0]["args"].update(dataset="x.csv"), "dataset: x.csv", r"'dataset' is set by the recipe"),
    (lambda r: r["stages"].insert(0, {"name": "first", "method": "quantize", "args": {"quantization": "torch_int8"}}),
     "- name: distil", r"comes after quantize"),
    (lambda r: r["stages"][1]["args"].update(target_sparsity=1.5), "- name: prune", r"\(stage 'prune'\)"),
])
def test_bad_recipes_fail_naming_the_line_before_any_work(assets, tmp_path, edit, needle, message):
    teacher, data = assets
    recipe = {"name": "bad", "base_model": teacher, "seed": 0, "data": {"dataset": data}, "stages": [
        {"name": "distil", "method": "distill", "args": {"max_steps": 2}},
        {"name": "prune", "method": "prune", "args": {"granularity": "structured", "target_sparsity": 0.5}},
        {"method": "quantize", "args": {"quantization": "onnx_int8"}},
    ]}
    edit(recipe)
    path = tmp_path / "bad.yaml"
    text = yaml.safe_dump(recipe, sort_keys=False)
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if needle in t)
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=message) as err:
        _main()(["--recipe", str(path), "--output_dir", str(out)])
    assert f"line {line}" in str(err.value)
    assert not out.exists()  # nothing started


def test_a_method_that_is_not_installed_is_named(assets, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(UserInputError, match=r"line \d+: stage 'quantize' needs onnx, onnxruntime|needs onnxruntime"):
        _main()(["--recipe", _recipe(tmp_path, assets), "--output_dir", str(tmp_path / "out")])


def test_shipped_recipes_are_valid(tmp_path):
    from hfcompress.run.recipe import check_recipe, load_recipe

    names = sorted(f for f in os.listdir(os.path.join(ROOT, "hfcompress", "recipes")) if f.endswith(".yaml"))
    assert len(names) >= 2
    for name in names:
        recipe = load_recipe(os.path.join(ROOT, "hfcompress", "recipes", name))
        try:
            check_recipe(recipe, str(tmp_path / name))
        except UserInputError as exc:  # only a missing offline asset may stop them here (CI installs them)
            assert "not installed" in str(exc) or "not found" in str(exc), exc


def test_a_recipe_on_tagged_data_runs_as_token_classification(tmp_path):
    """A recipe whose data is a CoNLL file: the base, every stage and the measurement are the tagger's (the adapter
    the data calls for), entity F1 recorded per stage and in the card; the result reloads as a tagger."""
    from tagging_assets import save_tagging_assets

    teacher, conll, _ = save_tagging_assets(tmp_path / "tagging")
    recipe = {"name": "tiny-ner", "base_model": teacher, "seed": 0, "data": {"dataset": conll, "max_length": 32},
              "stages": [{"name": "distil", "method": "distill", "args": {"student_layers": "0,2", "max_steps": 3,
                                                                          **FAST}},
                         {"method": "quantize", "args": {"quantization": "torch_int8"}}],
              "measure": {"latency_rounds": 1, "measure_memory": False}}
    path = tmp_path / "ner.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "out"
    _main()(["--recipe", str(path), "--output_dir", str(out)])
    summary = json.loads((out / "recipe_summary.json").read_text())
    assert summary["data"]["pipeline_tag"] == "token-classification" and summary["data"]["metric"] == "f1"
    c = summary["comparison"]
    assert {"f1", "precision", "recall"} <= set(c["model"]["metrics"]) and "f1" in c["base"]["metrics"]
    for stage in summary["stages"]:
        assert stage["measured"]["metric"] == "f1" and stage["measured"]["f1"] is not None
    assert summary["stages"][-1]["measured"]["f1"] == pytest.approx(c["model"]["metrics"]["f1"])
    assert type(load_model(str(out / "model"))).__name__ == "BertForTokenClassification"
    card = (out / "model" / "README.md").read_text()
    assert f"f1 {summary['stages'][0]['measured']['f1']:.4f}" in card  # the stage lines say the tagger's metric


def test_a_recipe_on_questions_runs_as_question_answering(tmp_path):
    """A recipe whose data is a flat QA JSON Lines file: every stage is the reader's (windows, start/end KD), each is
    measured with SQuAD EM/F1, the ONNX int8 stage exports the reader, and the result reloads as one that answers."""
    from qa_assets import save_qa_assets
    from transformers import AutoTokenizer

    from hfcompress.run.qa import answer_questions

    teacher, jsonl, _ = save_qa_assets(tmp_path / "qa")
    recipe = {"name": "tiny-qa", "base_model": teacher, "seed": 0,
              "data": {"dataset": jsonl, "max_length": 48, "doc_stride": 16},
              "stages": [{"name": "distil", "method": "distill", "args": {"student_layers": "0,2", "max_steps": 3,
                                                                          **FAST}},
                         {"method": "quantize", "args": {"quantization": "onnx_int8"}}],
              "measure": {"latency_rounds": 1, "measure_memory": False}}
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = tmp_path / "out"
    _main()(["--recipe", str(path), "--output_dir", str(out)])
    summary = json.loads((out / "recipe_summary.json").read_text())
    assert summary["data"]["pipeline_tag"] == "question-answering" and summary["data"]["metric"] == "f1"
    c = summary["comparison"]
    assert {"exact_match", "f1"} <= set(c["model"]["metrics"]) and "f1" in c["base"]["metrics"]
    for stage in summary["stages"]:
        assert stage["measured"]["metric"] == "f1" and stage["measured"]["f1"] is not None
    assert summary["stages"][-1]["measured"]["f1"] == pytest.approx(c["model"]["metrics"]["f1"])
    model = load_model(str(out / "model"))
    assert type(model).__name__ == "OnnxModelForQuestionAnswering"
    rows = [json.loads(line) for line in open(jsonl)][:3]
    answers = answer_questions(model, AutoTokenizer.from_pretrained(str(out / "model")),
                               [r["question"] for r in rows], [r["passage"] for r in rows], max_length=48,
                               doc_stride=16)
    assert len(answers) == 3 and all(a and a in r["passage"] for a, r in zip(answers, rows))
