"""`hfcompress quantize` (scripts/quantize.py) on token classifiers and extractive QA readers saved on disk: the task
is taken from the model and data, the model loads with its task's auto class, ONNX int8 and torch int8 results are
measured with the task's metric (entity F1; exact match and F1) from disk, the figure in the record is the reloaded
model's, and the card's loading code runs in a fresh process."""

import pytest
from conftest import check_publishable_card, load_script
from qa_assets import save_qa_assets
from tagging_assets import save_tagging_assets

from hfcompress.loading import checkpoint_format, load_model

pytest.importorskip("onnxruntime")

FORMATS = {"onnx_int8": "onnx", "torch_int8": "torch_int8", "bnb_8bit": "bnb"}
CLASSES = {"token": {"onnx_int8": "OnnxModelForTokenClassification", "torch_int8": "BertForTokenClassification",
                     "bnb_8bit": "BertForTokenClassification"},
           "qa": {"onnx_int8": "OnnxModelForQuestionAnswering", "torch_int8": "BertForQuestionAnswering",
                  "bnb_8bit": "BertForQuestionAnswering"}}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    tagger, conll, _ = save_tagging_assets(tmp_path_factory.mktemp("tagging"))
    reader, _, squad = save_qa_assets(tmp_path_factory.mktemp("qa"))
    return {"token": (tagger, conll, []), "qa": (reader, squad, ["--max_length", "16", "--doc_stride", "4"])}


def _evaluation(task, model, data_args):
    """The task's evaluation, as the run used it (same adapter, same data)."""
    from hfcompress.run.quantize import QuantizeModelArguments, load_task_data, source_task

    model_args = QuantizeModelArguments(model=model)
    adapter = source_task(model_args, data_args)
    assert adapter.name == {"token": "token-classification", "qa": "question-answering"}[task]
    return adapter.evaluation(load_task_data(adapter, model_args, data_args), data_args)


@pytest.mark.parametrize("quantization", ["onnx_int8", "torch_int8", "bnb_8bit"])
@pytest.mark.parametrize("task", ["token", "qa"])
def test_quantize_token_and_qa_models_measured_and_carded(assets, tmp_path, task, quantization):
    from transformers import AutoTokenizer

    from hfcompress.run.arguments import DataArguments

    if quantization == "bnb_8bit":
        pytest.importorskip("bitsandbytes")
    model, data, extra = assets[task]
    out = tmp_path / "out"
    record = load_script("quantize").main(["--model", model, "--dataset", data, "--output_dir", str(out),
                                           "--quantization", quantization, "--latency_rounds", "1",
                                           "--no_measure_memory", *extra])
    model_dir = str(out / "model")
    assert checkpoint_format(model_dir) == FORMATS[quantization]
    reloaded = load_model(model_dir)
    assert type(reloaded).__name__ == CLASSES[task][quantization]  # not a sequence classifier with a new head
    d, s = record.data, record.metrics["summary"]
    assert d["pipeline_tag"] == {"token": "token-classification", "qa": "question-answering"}[task]
    assert s["metric"] == "f1"
    base, comp = record.comparison["base"]["metrics"], record.comparison["model"]["metrics"]
    assert {"f1"} <= set(base) and {"f1"} <= set(comp)
    assert ("precision" in comp) == (task == "token") and ("exact_match" in comp) == (task == "qa")
    # the recorded figure is that of the saved model, reloaded and evaluated again
    length = 16 if task == "qa" else 128
    args = DataArguments(dataset=data, max_length=length, **({"doc_stride": 4} if task == "qa" else {}))
    evaluate = _evaluation(task, model, args)
    again = evaluate(reloaded, AutoTokenizer.from_pretrained(model_dir), s["split"])
    assert again["f1"] == pytest.approx(s["metric_value"])
    card = check_publishable_card(model_dir, run_dir=tmp_path)
    assert f"{s['metric_value']:.4f}" in card.text
    if task == "qa":
        assert "answer_questions" in card.text and "doc_stride=4" in card.text


@pytest.mark.parametrize("task", ["token", "qa"])
def test_lowrank_on_token_and_qa_models_reloads_and_cards(assets, tmp_path, task):
    """scripts/lowrank.py: the task comes from the teacher, the factorized student keeps the task's head and class,
    reloads with and without hfcompress (remote code through the task's auto class), and its card's code runs."""
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT
    from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification

    from hfcompress.lowrank import LowRankLinear

    model, data, extra = assets[task]
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "lowrank.py"), "--teacher_model", model, "--dataset", data,
           "--output_dir", str(out), "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no",
           "--use_cpu", "--rank", "4", "--dataloader_num_workers", "0", "--latency_rounds", "1", "--no_measure_memory",
           *extra]
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    record = json.load(open(out / "lowrank_summary.json"))
    assert record["data"]["pipeline_tag"] == {"token": "token-classification", "qa": "question-answering"}[task]
    model_dir = str(out / "model")
    assert checkpoint_format(model_dir) == "lowrank"
    ours = load_model(model_dir)
    assert type(ours).__name__.endswith(CLASSES[task]["torch_int8"])  # HfcLowRankBertFor...
    assert any(isinstance(m, LowRankLinear) for m in ours.modules())
    auto = AutoModelForTokenClassification if task == "token" else AutoModelForQuestionAnswering
    remote = auto.from_pretrained(model_dir, trust_remote_code=True)
    assert sum(p.numel() for p in remote.parameters()) == sum(p.numel() for p in ours.parameters())
    check_publishable_card(model_dir, run_dir=tmp_path)


def test_vocab_trim_of_a_reader_keeps_question_and_context_tokens(assets, tmp_path):
    """--vocab_trim on a QA reader counts the tokens of questions and contexts (`TaskAdapter.texts`): held-out
    coverage stays whole on this data and the trimmed ONNX reader is measured like any other."""
    model, data, extra = assets["qa"]
    record = load_script("quantize").main(["--model", model, "--dataset", data, "--output_dir", str(tmp_path / "out"),
                                           "--vocab_trim", "--quantization", "onnx_fp32", "--latency_rounds", "1",
                                           "--no_measure_memory", *extra])
    trim = record.methods["vocab_trim"]
    assert trim["kept_vocab_size"] < trim["original_vocab_size"] and trim["coverage"]["coverage"] == 1.0
    assert trim["texts"] == 2 * record.data["splits"]["train"]  # a question and a context per training question
    assert type(load_model(str(tmp_path / "out" / "model"))).__name__ == "OnnxModelForQuestionAnswering"
    assert record.metrics["summary"]["metric_value"] == pytest.approx(record.comparison["model"]["metrics"]["f1"])
