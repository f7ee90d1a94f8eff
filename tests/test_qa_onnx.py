"""Extractive QA readers through ONNX Runtime: `export_onnx` writes ``start_logits`` / ``end_logits`` with dynamic
batch and sequence axes, `load_model` gives back an `OnnxModelForQuestionAnswering` (format registry), fp32 matches
PyTorch, and ``run.qa.answer_questions`` answers with fp32 and int8 graphs (transformers 5 has no QA pipeline)."""

import json
import os

import numpy as np
import pytest
import torch
from qa_assets import tiny_reader
from tagging_assets import make_wordpiece_tokenizer

pytest.importorskip("onnxruntime")

CONTEXTS = ["john lives in paris and works at acme in paris today and mary jones lives in london today",
            "mary lives in paris"]
QUESTIONS = ["where mary jones lives", "where mary lives"]


@pytest.fixture(scope="module")
def reader_dirs(tmp_path_factory):
    from hfcompress.quantize import export_onnx, quantize_onnx

    root = tmp_path_factory.mktemp("qa_onnx")
    plain = str(root / "plain")
    tiny_reader().save_pretrained(plain)
    make_wordpiece_tokenizer().save_pretrained(plain)
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    model = AutoModelForQuestionAnswering.from_pretrained(plain).eval()
    tok = AutoTokenizer.from_pretrained(plain)
    export_onnx(model, str(root / "onnx32"), tok)
    quantize_onnx(str(root / "onnx32"), str(root / "onnx8"))
    return plain, str(root / "onnx32"), str(root / "onnx8")


def test_export_has_start_end_outputs_with_dynamic_axes(reader_dirs):
    import onnx

    _, fp32, int8 = reader_dirs
    meta = json.load(open(os.path.join(fp32, "hfcompress_onnx.json")))
    assert meta["architecture"] == "BertForQuestionAnswering" and meta["outputs"] == ["start_logits", "end_logits"]
    assert meta["task_heads"] == ["qa_outputs"]
    graph = onnx.load(os.path.join(fp32, "model.onnx")).graph
    for out in graph.output:
        dims = [d.dim_param for d in out.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"], (out.name, dims)
    for inp in graph.input:
        assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "sequence"]
    # the head stays float in the int8 graph
    meta8 = json.load(open(os.path.join(int8, "hfcompress_onnx.json")))
    assert meta8["quantization"]["float_modules"][0] == "qa_outputs"


def test_load_model_gives_onnx_reader_matching_pytorch(reader_dirs):
    from transformers import AutoTokenizer

    from hfcompress.loading import checkpoint_format, load_model
    from hfcompress.quantize import OnnxModelForQuestionAnswering, OnnxModelForSequenceClassification

    plain, fp32, int8 = reader_dirs
    torch_model = load_model(plain)
    tok = AutoTokenizer.from_pretrained(fp32)
    for folder in (fp32, int8):
        assert checkpoint_format(folder) == "onnx"
        assert type(load_model(folder)) is OnnxModelForQuestionAnswering
    onnx_model = load_model(fp32)
    for batch, length in ((1, 14), (3, 20), (5, 40)):  # shapes other than the traced one
        enc = tok(QUESTIONS * 3, CONTEXTS * 3, truncation="only_second", max_length=length, padding="max_length",
                  return_tensors="pt")
        enc = {k: v[:batch] for k, v in enc.items()}
        with torch.no_grad():
            ref = torch_model(**enc)
        got = onnx_model(**enc)
        assert got.start_logits.shape == ref.start_logits.shape == (batch, length)
        assert torch.allclose(got.start_logits, ref.start_logits, atol=1e-4)
        assert torch.allclose(got.end_logits, ref.end_logits, atol=1e-4)
        start, end = onnx_model(**enc, return_dict=False)
        assert torch.equal(start, got.start_logits) and torch.equal(end, got.end_logits)
    # a reader's folder is not a sequence classifier's: loading it as one says which class reads it
    from hfcompress.errors import UserInputError

    with pytest.raises(UserInputError, match="OnnxModelForQuestionAnswering"):
        OnnxModelForSequenceClassification.from_pretrained(fp32)


def test_answer_questions_on_onnx_fp32_and_int8(reader_dirs):
    from transformers import AutoTokenizer

    from hfcompress.loading import load_model
    from hfcompress.run.qa import answer_questions, window_logits

    plain, fp32, int8 = reader_dirs
    tok = AutoTokenizer.from_pretrained(plain)
    kwargs = dict(max_length=16, doc_stride=4)
    expected = answer_questions(load_model(plain), tok, QUESTIONS, CONTEXTS, **kwargs)
    assert answer_questions(load_model(fp32), tok, QUESTIONS, CONTEXTS, **kwargs) == expected
    answers = answer_questions(load_model(int8), tok, QUESTIONS, CONTEXTS, **kwargs)
    assert len(answers) == 2 and all(a and a in c for a, c in zip(answers, CONTEXTS))
    # int8 logits stay close to float's on the real windows (a random tiny reader: closeness, not accuracy)
    from datasets import Dataset

    from hfcompress.qa import prepare_features

    examples = Dataset.from_dict({"id": ["0", "1"], "question": QUESTIONS, "context": CONTEXTS,
                                  "answers": [{"text": [], "answer_start": []}] * 2})
    features = Dataset.from_dict(prepare_features(examples[:], tok, 16, 4, labels=False))
    s32, e32 = window_logits(load_model(fp32), features, tok)
    s8, e8 = window_logits(load_model(int8), features, tok)
    scale = float(np.abs(s32).max())
    assert float(np.abs(s8 - s32).max()) < 0.2 * scale and float(np.abs(e8 - e32).max()) < 0.2 * scale
