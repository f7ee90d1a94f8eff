"""scripts/quantize.py end to end on a tiny classifier and a JSON-lines dataset with string labels: every quantizer
(and vocabulary trimming, low rank) writes a model that `load_model` reloads with the accuracy the run recorded, the
summary holds measured sizes, latencies and ratios, and bad input is one clear error before any work."""

import json
import os

import pytest
import torch
from conftest import check_publishable_card, load_script, save_tiny_assets
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hfcompress.errors import UserInputError
from hfcompress.loading import checkpoint_format, load_model
from hfcompress.report.measure import checkpoint_size_mb, evaluate_classifier


def _main():
    return load_script("quantize").main


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("assets"))


def _run(assets, out, *flags):
    teacher, data = assets
    return _main()(["--model", teacher, "--dataset", data, "--output_dir", str(out), "--latency_rounds", "1",
                    "--no_measure_memory", *flags])


@pytest.mark.parametrize("flags, fmt", [
    (["--quantization", "onnx_int8"], "onnx"),
    (["--quantization", "torch_int8"], "torch_int8"),
    (["--load_in_8bit"], "bnb"),
    (["--vocab_trim", "--quantization", "onnx_fp32"], "onnx"),
    (["--lowrank_energy", "0.9", "--quantization", "none"], "lowrank"),
])
def test_each_quantizer_writes_a_model_that_reloads_as_measured(assets, tmp_path, flags, fmt):
    record = _run(assets, tmp_path / "out", *flags)
    summary = record.metrics["summary"]
    model_dir = str(tmp_path / "out" / "model")
    assert checkpoint_format(model_dir) == fmt
    ref, comp = record.models["reference"], record.models["compressed"]
    assert summary["size_ratio"] == pytest.approx(ref["size_mb"] / comp["size_mb"])
    assert comp["size_mb"] == pytest.approx(checkpoint_size_mb(model_dir))
    assert summary["speedup"] == pytest.approx(ref["latency"]["median_ms"] / comp["latency"]["median_ms"])
    assert record.comparison["model"] is comp or record.comparison["model"] == comp
    # the card beside the model shows the measured numbers, not typed ones
    card = open(os.path.join(model_dir, "README.md")).read()
    assert f"{summary['size_ratio']:.2f}x smaller" in card and f"{summary['accuracy']:.4f}" in card
    assert os.path.exists(os.path.join(model_dir, "compression.png"))
    # the accuracy in the record is the accuracy of the saved model, reloaded
    texts = [json.loads(line)["text"] for line in open(assets[1])]
    model = load_model(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    data = record.data["splits"]
    assert data["test"] > 0
    split = summary["split"]
    from hfcompress.data import load_text_classification

    ds = load_text_classification(assets[1], "text", "label")
    again = evaluate_classifier(model, tok, ds[split]["text"], ds[split]["label"])
    assert again["accuracy"] == pytest.approx(summary["accuracy"])
    assert texts and os.path.exists(tmp_path / "out" / "quantize_summary.json")
    if "--vocab_trim" in flags:
        trim = record.methods["vocab_trim"]
        assert trim["kept_vocab_size"] < trim["original_vocab_size"] or trim["kept_vocab_size"] <= 64
        assert model.config.vocab_size == trim["kept_vocab_size"]
    if "--lowrank_energy" in flags:
        assert record.methods["lowrank"]["mode"] == "energy"
    # the card of this format is publishable as it is: its loading code runs in a fresh process
    check_publishable_card(model_dir, run_dir=tmp_path)
    assert not os.path.exists(tmp_path / "out" / "reference")


def test_peak_memory_is_measured_in_fresh_processes(assets, tmp_path):
    teacher, data = assets
    record = _main()(["--model", teacher, "--dataset", data, "--output_dir", str(tmp_path / "o"),
                      "--latency_rounds", "1", "--quantization", "torch_int8"])
    for role in ("reference", "compressed"):
        m = record.models[role]
        assert m["peak_memory_mb"] > m["model_memory_mb"] > 0  # python + torch take more than the tiny model
    change = record.comparison["changes"]["peak_memory_mb"]
    assert change["delta"] == pytest.approx(change["model"] - change["base"])


@pytest.mark.parametrize("flags, message", [
    (["--load_in_8bit", "--load_in_4bit"], "both given"),
    (["--quantization", "int4"], "--quantization must be one of"),
    (["--quantization", "torch_int8", "--lowrank_rank", "4"], "torch_int8 saves through"),
    (["--quantization", "onnx_int8", "--lowrank_energy", "1.5"], "energy"),
    (["--quantization", "onnx_int8", "--lowrank_rank", "0"], "rank"),
    (["--quantization", "torch_int8", "--skip_modules", "classifier,scorer"], "scorer"),
    (["--quantization", "none"], "nothing to do"),
])
def test_bad_input_is_one_clear_error(assets, tmp_path, flags, message):
    with pytest.raises(UserInputError, match=message):
        _run(assets, tmp_path / "out", *flags)
    assert not os.path.exists(tmp_path / "out" / "model")


def test_a_checkpoint_is_not_quantized_twice(assets, tmp_path):
    _run(assets, tmp_path / "first", "--quantization", "torch_int8")
    teacher, data = assets
    with pytest.raises(UserInputError, match="quantized twice"):
        _main()(["--model", str(tmp_path / "first" / "model"), "--dataset", data, "--output_dir",
                 str(tmp_path / "second")])


@pytest.mark.parametrize("quantization", ["onnx_int8", "bnb_8bit"])
def test_int8_is_the_last_step_after_structured_pruning(assets, tmp_path, quantization):
    """A structurally pruned checkpoint (what scripts/prune.py --granularity structured writes) quantized to ONNX int8;
    bitsandbytes cannot hold its narrower blocks, which is one clear error before any work."""
    from conftest import make_tokenizer

    from hfcompress.prune import PruningConfig, StructuredPruner, save_structured

    model = AutoModelForSequenceClassification.from_pretrained(assets[0])
    pruner = StructuredPruner(model, PruningConfig(granularity="structured", method="magnitude", target_sparsity=0.5,
                                                   pruning_start=0, pruning_end=1))
    pruner.set_total_steps(1)
    pruner.step(1)
    pruner.fold()
    save_structured(model, str(tmp_path / "pruned"), tokenizer=make_tokenizer())
    args = ["--model", str(tmp_path / "pruned"), "--dataset", assets[1], "--output_dir", str(tmp_path / "out"),
            "--latency_rounds", "1", "--no_measure_memory", "--quantization", quantization]
    if quantization == "bnb_8bit":
        with pytest.raises(UserInputError, match="cannot hold a structurally pruned"):
            _main()(args)
        return
    record = _main()(args)
    assert record.models["reference"]["format"] == "structured"
    assert checkpoint_format(str(tmp_path / "out" / "model")) == "onnx"
    onnx = load_model(str(tmp_path / "out" / "model"))
    tok = make_tokenizer()
    enc = tok(["good movie", "very bad plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert (onnx(**enc).logits - model.eval()(**enc).logits).abs().max() < 0.1


def test_the_run_writes_a_card_whose_numbers_are_the_record(assets, tmp_path):
    from huggingface_hub import ModelCard

    record = _run(assets, tmp_path / "my-model", "--quantization", "onnx_int8")
    card = ModelCard.load(str(tmp_path / "my-model" / "model" / "README.md"))
    data = card.data.to_dict()
    assert data["pipeline_tag"] == "text-classification"
    assert {"hfcompress", "quantized", "onnx"} <= set(data["tags"])
    result = data["model-index"][0]["results"][0]
    summary = record.metrics["summary"]
    accuracy = next(m for m in result["metrics"] if m["type"] == "accuracy")
    assert accuracy["value"] == pytest.approx(summary["accuracy"])
    assert result["dataset"]["split"] == summary["split"]
    body = card.text
    assert f"{summary['size_ratio']:.2f}x smaller" in body and f"{summary['speedup']:.2f}x faster" in body
    assert f"{summary['accuracy_delta_points']:+.2f} points" in body
    assert "OnnxModelForSequenceClassification.from_pretrained" in body
    assert "bnb_" not in body  # only the settings of the quantizer used
