"""One registration per method: a throw-away method registered from inside this test (one class, one registration
call, no library file edited) runs end to end: `load_model` reloads its format, a card describes it, a recipe accepts
it in the right place and refuses it in the wrong one. And the built-in methods are all registered."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pytest
import torch
import yaml
from conftest import load_script, save_tiny_assets, write_reviews_csv
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hfcompress.errors import UserInputError
from hfcompress.loading import checkpoint_format, load_model
from hfcompress.registry import (
    CheckpointFormat,
    Method,
    StageOrderError,
    formats,
    methods,
    register_format,
    register_method,
    stage_names,
    unregister,
)

MARKER = "hfc_test_rounded_decimals"


@dataclass
class RoundArguments:
    """The throw-away method: round every weight to `decimals` decimals (a stand-in for weight sharing)."""

    model: str = field(default=None, metadata={"help": "Model folder to round."})
    decimals: int = field(default=2, metadata={"help": "Decimals kept."})
    output_dir: str = field(default="out/round", metadata={"help": "Run folder."})
    seed: int = field(default=0, metadata={"help": "Unused (the recipe sets it for every stage)."})

    @staticmethod
    def run(args, data_args, report):
        from hfcompress.report.record import RunRecord

        model = AutoModelForSequenceClassification.from_pretrained(args.model)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.round(p * 10 ** args.decimals) / 10 ** args.decimals)
        model.config.update({MARKER: args.decimals})
        model_dir = os.path.join(args.output_dir, "model")
        model.save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(args.model).save_pretrained(model_dir)
        record = RunRecord(task="round")
        record.methods["rounding"] = {"decimals": args.decimals}
        record.save(os.path.join(args.output_dir, "round_summary.json"))
        return record


def _rounded_after(shape, args):
    if shape == "sparse":
        raise StageOrderError("rounding after unstructured pruning: round first")
    return "rounded"


@pytest.fixture
def rounding():
    from hfcompress.run.arguments import DataArguments
    from hfcompress.run.report import ReportArguments
    from hfcompress.run.scripts import Script

    register_format(CheckpointFormat(
        "rounded", detect=lambda path, config: MARKER in config,
        load=lambda path, **_: AutoModelForSequenceClassification.from_pretrained(path).eval(),
        loading_code="from transformers import AutoModelForSequenceClassification\n"
                     "model = AutoModelForSequenceClassification.from_pretrained(PATH)  # rounded weights",
        loading_note="A plain transformers checkpoint whose weights are rounded."))
    register_method(Method(
        name="rounding", stage="round", trains=False, follows=_rounded_after,
        describe=lambda m: (f"weights rounded to {m['decimals']} decimals", ["rounded"]),
        script=Script("round", (RoundArguments, DataArguments, ReportArguments), RoundArguments.run, False)))
    yield
    unregister("rounding")
    unregister("rounded")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-assets")
    teacher, _ = save_tiny_assets(root)
    return teacher, write_reviews_csv(root / "reviews.csv", n=60)


def _recipe(tmp_path, assets, stages):
    teacher, data = assets
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "rounding", "base_model": teacher, "seed": 0, "data": {"dataset": data}, "stages": stages,
        "measure": {"latency_rounds": 1, "measure_memory": False}}, sort_keys=False))
    return str(path)


DISTIL = {"name": "distil", "method": "distill",
          "args": {"student_layers": "0,2", "max_steps": 3, "eval_strategy": "no", "save_strategy": "no",
                   "per_device_train_batch_size": 8}}


def test_builtin_methods_and_formats_are_registered():
    assert {"distill", "prune", "lowrank", "lora", "quantize"} <= set(stage_names())
    assert [f.name for f in formats()][:8] == ["onnx", "torch_int8", "bnb", "shared", "qat", "lowrank", "structured",
                                              "sparse"]
    assert {m.name for m in methods()} >= {"distillation", "pruning", "lowrank", "lora", "quantization", "vocab_trim"}


def test_a_method_registered_in_a_test_runs_end_to_end(rounding, assets, tmp_path):
    out = tmp_path / "out"
    record = load_script("compress").main(["--recipe", _recipe(tmp_path, assets, [
        DISTIL, {"name": "round", "method": "round", "args": {"decimals": 1}}]), "--output_dir", str(out)])
    model_dir = out / "model"
    assert checkpoint_format(str(model_dir)) == "rounded"
    model = load_model(str(model_dir))  # the registered loader
    w = next(model.parameters()).detach()
    assert torch.equal(w, torch.round(w * 10) / 10)
    card = (model_dir / "README.md").read_text()
    assert "weights rounded to 1 decimals" in card and "# rounded weights" in card and "- rounded" in card
    summary = json.loads((out / "recipe_summary.json").read_text())
    assert [s["method"] for s in summary["stages"]] == ["distill", "round"]
    assert record.methods["rounding"] == {"decimals": 1}


@pytest.mark.parametrize("stages, message", [
    ([{"name": "prune", "method": "prune", "args": {"target_sparsity": 0.5}},
      {"name": "round", "method": "round"}], r"stage 'round': rounding after unstructured pruning: round first"),
    ([{"method": "quantize", "args": {"quantization": "torch_int8"}},
      {"name": "round", "method": "round"}], r"stage 'round' \(round\) comes after quantize"),
    ([{"name": "round", "method": "round", "args": {"no_such": 1}}], r"unknown option 'no_such'"),
])
def test_a_recipe_refuses_the_method_in_the_wrong_place(rounding, assets, tmp_path, stages, message):
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=message):
        load_script("compress").main(["--recipe", _recipe(tmp_path, assets, stages), "--output_dir", str(out)])
    assert not out.exists()


def test_without_the_registration_the_stage_is_unknown(assets, tmp_path):
    with pytest.raises(UserInputError, match="stage method must be one of"):
        load_script("compress").main(["--recipe", _recipe(tmp_path, assets, [{"name": "round", "method": "round"}]),
                                      "--output_dir", str(tmp_path / "out")])


def test_a_task_adapter_of_ones_own_runs_through_the_skeleton(assets, tmp_path, monkeypatch):
    """A user's task adapter (here: text classification whose texts are lower-cased before tokenization, chosen for
    data files named *.lower.csv) is picked by `task_for` before the built-in text task and run by the one skeleton:
    its hooks decide the data, the rest (checks, trainer, record, saving) is the skeleton's."""
    import shutil

    from hfcompress.run.distill import TextClassification
    from hfcompress.run.skeleton import register_task, task_for, unregister_task

    class LowerCasedText(TextClassification):
        name = "lower-cased-text"
        priority = 5
        seen = []

        def select(self, model_args, data_args, speech):
            return self if str(data_args.dataset).endswith(".lower.csv") else None

        def load_data(self, run):
            dataset, name = super().load_data(run)
            dataset = dataset.map(lambda row: {run.data_args.text_column: row[run.data_args.text_column].lower()})
            self.seen.extend(dataset["train"][run.data_args.text_column][:3])
            return dataset, name

        def data_entry(self, run, trainer):
            return {**super().data_entry(run, trainer), "lower_cased": True}

    teacher, data = assets
    lower = tmp_path / "reviews.lower.csv"
    shutil.copy(data, lower)
    adapter = register_task(LowerCasedText())
    try:
        from hfcompress.run.arguments import DataArguments, ModelArguments

        assert task_for(ModelArguments(teacher_model=teacher), DataArguments(dataset=str(lower)), None) is adapter
        assert type(task_for(ModelArguments(teacher_model=teacher), DataArguments(dataset=data), None)).__name__ \
            == "TextClassification"
        out = tmp_path / "out"
        record = load_script("distill").main([
            "--teacher_model", teacher, "--dataset", str(lower), "--student_layers", "0,2", "--max_steps", "2",
            "--eval_strategy", "no", "--save_strategy", "no", "--no_measure", "--output_dir", str(out)])
    finally:
        unregister_task(adapter)
    assert record.data["lower_cased"] is True and adapter.seen and all(t == t.lower() for t in adapter.seen)
    assert json.loads((out / "distill_summary.json").read_text())["data"]["lower_cased"] is True
    assert (out / "model" / "model.safetensors").exists()
