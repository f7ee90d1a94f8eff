"""ONNX export, ONNX Runtime int8 quantization and the ORT-backed classifier (hfcompress.quantize.onnx)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from conftest import make_texts, make_tokenizer, tiny_bert, tiny_mpnet

from hfcompress.errors import UserInputError
from hfcompress.quantize import (
    OnnxModelForSequenceClassification,
    export_onnx,
    is_quantized_onnx,
    measure_onnx_latency,
    onnx_size_mb,
    quantize_onnx,
    read_onnx_metadata,
)
from hfcompress.quantize.onnx import METADATA_FILE
from hfcompress.report.measure import measure_latency


def _initializer_types(path: str) -> dict[str, int]:
    import onnx

    return {init.name: init.data_type for init in onnx.load(path).graph.initializer}


def _ops(path: str) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(path).graph.node}


def _batch(tok, n=6, seed=2):
    texts, _ = make_texts(n, seed)
    return texts, tok(texts, padding=True, return_tensors="pt")  # rows of different lengths: real padding


def _torch_logits(model, enc):
    with torch.no_grad():
        return model(**enc).logits


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory):
    """A tiny BERT (2 token types), its tokenizer and the folders export_onnx / quantize_onnx wrote for it."""
    root = tmp_path_factory.mktemp("onnx")
    model, tok = tiny_bert(hidden=64, vocab=256).eval(), make_tokenizer()
    fp32 = export_onnx(model, str(root / "fp32"), tokenizer=tok)
    int8 = quantize_onnx(fp32, str(root / "int8"))
    return model, tok, fp32, int8


def test_export_writes_a_self_contained_folder_matching_torch(bert_export):
    model, tok, fp32, _ = bert_export
    assert sorted(os.listdir(fp32)) == sorted(
        ["config.json", METADATA_FILE, "model.onnx", "tokenizer.json", "tokenizer_config.json"])
    meta = read_onnx_metadata(fp32)
    assert meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]  # BERT: type_vocab_size 2
    assert meta["outputs"] == ["logits"] and meta["opset"] == 17 and meta["quantization"] is None
    assert meta["architecture"] == "BertForSequenceClassification"
    assert meta["export_check"]["max_abs_diff"] < 1e-4
    assert not is_quantized_onnx(fp32)

    ort_model = OnnxModelForSequenceClassification.from_pretrained(fp32)  # a fresh object, from disk only
    assert ort_model.config.id2label == model.config.id2label and ort_model.device == torch.device("cpu")
    assert ort_model.eval() is ort_model and ort_model.to("cpu") is ort_model
    texts, enc = _batch(tok)
    assert enc["attention_mask"].min() == 0  # the batch is padded
    expected = _torch_logits(model, enc)
    out = ort_model(**enc)
    assert type(out).__name__ == "SequenceClassifierOutput" and isinstance(out.logits, torch.Tensor)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-4)
    # numpy inputs, no token_type_ids (zeros, as in transformers), tuple output
    (np_logits,) = ort_model(input_ids=enc["input_ids"].numpy(), attention_mask=enc["attention_mask"].numpy(),
                             return_dict=False)
    torch.testing.assert_close(np_logits, expected, atol=1e-5, rtol=1e-4)
    # sentence pairs: token type 1 reaches the graph
    types = (torch.arange(enc["input_ids"].shape[1]) >= 3).long().expand_as(enc["input_ids"]).contiguous()
    pair = dict(enc, token_type_ids=types)
    assert not torch.allclose(_torch_logits(model, pair), expected)
    torch.testing.assert_close(ort_model(**pair).logits, _torch_logits(model, pair), atol=1e-5, rtol=1e-4)
    # dynamic axes: another batch size and a longer sequence than anything traced or checked
    ids = torch.randint(5, 256, (7, 40), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ort_model(input_ids=ids).logits, _torch_logits(model, {"input_ids": ids}),
                               atol=1e-5, rtol=1e-4)


def test_dynamic_int8_is_smaller_quantizes_embeddings_and_stays_close(bert_export):
    model, tok, fp32, int8 = bert_export
    assert onnx_size_mb(int8) < 0.5 * onnx_size_mb(fp32)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(os.path.join(int8, "model.onnx"))
    from onnx import TensorProto

    types = _initializer_types(os.path.join(int8, "model.onnx"))
    # ONNX Runtime stores the embedding (Gather) tables as uint8 and the matrix weights as int8
    assert types["model.bert.embeddings.word_embeddings.weight_quantized"] == TensorProto.UINT8
    assert "model.bert.embeddings.word_embeddings.weight" not in types
    int8_weights = [name for name, t in types.items() if t == TensorProto.INT8 and name.endswith("_quantized")]
    assert len(int8_weights) == 2 * 6 + 1  # 6 matrices in each of the 2 layers, and the pooler; not the classifier
    meta = read_onnx_metadata(int8)
    assert meta["quantization"]["mode"] == "dynamic" and meta["quantization"]["per_channel"] is True
    assert meta["source"] == os.path.abspath(fp32) and meta["inputs"] == read_onnx_metadata(fp32)["inputs"]
    assert {"config.json", "tokenizer.json"} <= set(os.listdir(int8))

    ort_model = OnnxModelForSequenceClassification.from_pretrained(int8)
    assert ort_model.is_quantized
    _, enc = _batch(tok)
    logits, expected = ort_model(**enc).logits, _torch_logits(model, enc)
    assert not torch.equal(logits, expected)  # really int8 arithmetic
    torch.testing.assert_close(logits, expected, atol=0.05, rtol=0)


def test_embeddings_can_stay_float(bert_export, tmp_path):
    _, _, fp32, int8 = bert_export
    out = quantize_onnx(fp32, str(tmp_path / "int8_float_emb"), quantize_embeddings=False, per_channel=False)
    types = _initializer_types(os.path.join(out, "model.onnx"))
    assert types["model.bert.embeddings.word_embeddings.weight"] == 1  # TensorProto.FLOAT
    assert onnx_size_mb(int8) < onnx_size_mb(out) < onnx_size_mb(fp32)
    assert read_onnx_metadata(out)["quantization"]["quantize_embeddings"] is False


def _integer_modules(path: str) -> set[str]:
    """Modules (from the node scopes) whose matrix product runs in int8."""
    import onnx

    nodes = onnx.load(path).graph.node
    return {n.name.split("/", 2)[2].rsplit("/", 1)[0] for n in nodes if n.op_type == "MatMulInteger"}


def test_task_head_and_chosen_modules_stay_float(bert_export, tmp_path):
    _, tok, fp32, int8 = bert_export
    default = _integer_modules(os.path.join(int8, "model.onnx"))
    assert "bert/encoder/layer.1/output/dense" in default and "bert/pooler/dense" in default
    assert not [m for m in default if m.startswith("classifier")]  # the task head is never quantized
    assert read_onnx_metadata(int8)["quantization"]["float_modules"] == ["classifier"]

    out = quantize_onnx(fp32, str(tmp_path / "ffn_float"), float_modules=[r"layer\.\d+\.output\.dense$"])
    chosen = _integer_modules(os.path.join(out, "model.onnx"))
    assert default - chosen == {"bert/encoder/layer.0/output/dense", "bert/encoder/layer.1/output/dense"}
    assert "bert/encoder/layer.0/attention/output/dense" in chosen
    with pytest.raises(UserInputError, match="invalid regular expression"):
        quantize_onnx(fp32, str(tmp_path / "bad"), float_modules=["layer.("])


def test_quantizing_twice_is_refused_from_metadata_and_from_the_graph(bert_export, tmp_path):
    _, _, _, int8 = bert_export
    with pytest.raises(UserInputError, match="quantized twice"):
        quantize_onnx(int8, str(tmp_path / "again"))
    bare = tmp_path / "bare"  # an int8 file without our metadata: detected from its nodes
    bare.mkdir()
    with open(os.path.join(int8, "model.onnx"), "rb") as src, open(bare / "model.onnx", "wb") as dst:
        dst.write(src.read())
    assert is_quantized_onnx(str(bare)) and is_quantized_onnx(str(bare / "model.onnx"))
    with pytest.raises(UserInputError, match="quantized twice"):
        quantize_onnx(str(bare), str(tmp_path / "again2"))
    assert not (tmp_path / "again").exists() and not (tmp_path / "again2").exists()


def test_bad_quantize_arguments(bert_export, tmp_path):
    _, _, fp32, _ = bert_export
    with pytest.raises(UserInputError, match="mode='static' is not supported; use mode='dynamic'"):
        quantize_onnx(fp32, str(tmp_path / "q"), mode="static")
    with pytest.raises(UserInputError, match="no model.onnx"):
        quantize_onnx(str(tmp_path), str(tmp_path / "q"))


def test_mpnet_has_no_token_type_input_and_reexport_replaces_an_int8_folder(tmp_path):
    model, tok = tiny_mpnet().eval(), make_tokenizer("<s>", "</s>")
    folder = str(tmp_path / "mpnet")
    export_onnx(model, folder, tokenizer=tok)
    quantize_onnx(folder, folder)  # in place: the int8 model replaces the float one
    assert is_quantized_onnx(folder)
    export_onnx(model, folder, tokenizer=tok)  # and a new export replaces it back, metadata included
    assert not is_quantized_onnx(folder) and read_onnx_metadata(folder)["quantization"] is None
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary folder left behind

    assert read_onnx_metadata(folder)["inputs"] == ["input_ids", "attention_mask"]
    ort_model = OnnxModelForSequenceClassification.from_pretrained(folder, num_threads=1)
    assert ort_model.input_names == ["input_ids", "attention_mask"] and ort_model.num_threads == 1
    _, enc = _batch(tok, n=5, seed=4)
    enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])  # given by some tokenizers: dropped
    expected = _torch_logits(model, {k: v for k, v in enc.items() if k != "token_type_ids"})
    torch.testing.assert_close(ort_model(**enc).logits, expected, atol=1e-5, rtol=1e-4)


def test_export_of_a_model_with_dropout_checks_and_leaves_it_in_eval_mode(tmp_path):
    # torch.onnx.export puts the exported module back in the mode it had; the wrapper around the model must not
    # switch the model's dropout on (the check would then compare against noisy logits, and so would the caller)
    model = tiny_bert().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    model.config.attention_probs_dropout_prob = 0.3
    export_onnx(model, str(tmp_path / "out"))
    assert not any(m.training for m in model.modules())
    assert read_onnx_metadata(str(tmp_path / "out"))["export_check"]["max_abs_diff"] < 1e-4


class _BesselPooler(torch.nn.Module):
    def forward(self, x):
        return torch.special.i0(x)  # aten::i0 has no ONNX symbolic


def test_unexportable_op_is_a_clear_error(tmp_path):
    model = tiny_bert().train()
    model.bert.pooler.activation = _BesselPooler()
    model(input_ids=torch.tensor([[2, 5, 6, 3]]))  # fine in PyTorch
    with pytest.raises(UserInputError, match=r"BertForSequenceClassification \(bert\) cannot be exported to ONNX: "
                                             r"operator aten::i0 has no ONNX export at opset 17"):
        export_onnx(model, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    assert model.training  # exported in eval mode, the caller's mode restored


class _BatchSizeBakedIn(torch.nn.Module):
    def forward(self, x):
        return torch.tanh(x) * float(x.shape[0])  # a Python number: the tracer records the traced batch size


def test_a_trace_that_does_not_generalise_is_refused(tmp_path):
    model = tiny_bert().eval()
    model.bert.pooler.activation = _BatchSizeBakedIn()
    with pytest.raises(UserInputError, match=r"logits differ from PyTorch's by .* the trace does not generalise"):
        export_onnx(model, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_too_old_opset_names_the_one_that_works(tmp_path):
    with pytest.raises(UserInputError, match=r"operator aten::scaled_dot_product_attention has no ONNX export at "
                                             r"opset 13 \(it has one from opset 14: pass opset=14\)"):
        export_onnx(tiny_bert().eval(), str(tmp_path / "out"), opset=13)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_pipeline_runs_on_the_onnx_model(bert_export):
    from transformers import pipeline

    model, tok, fp32, _ = bert_export
    ort_model = OnnxModelForSequenceClassification.from_pretrained(fp32)
    texts = make_texts(5, 9)[0]
    seen = _Records()  # on the pipeline's own logger: transformers' loggers do not propagate to pytest's caplog
    pipe_logger = logging.getLogger("transformers.pipelines.base")
    pipe_logger.addHandler(seen)
    try:
        got = pipeline("text-classification", model=ort_model, tokenizer=tok)(texts)
    finally:
        pipe_logger.removeHandler(seen)
    assert not [r for r in seen.records if r.levelno >= logging.ERROR]  # no "model ... is not supported" line
    want = pipeline("text-classification", model=model, tokenizer=tok)(texts)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)


def test_save_pretrained_round_trip(bert_export, tmp_path):
    _, tok, _, int8 = bert_export
    ort_model = OnnxModelForSequenceClassification.from_pretrained(int8)
    ort_model.config.id2label = {0: "NEG", 1: "POS"}
    saved = ort_model.save_pretrained(str(tmp_path / "copy"))
    assert sorted(os.listdir(saved)) == sorted(["config.json", METADATA_FILE, "model.onnx"])
    with open(os.path.join(saved, METADATA_FILE)) as fh:
        assert json.load(fh)["quantization"]["mode"] == "dynamic"
    again = OnnxModelForSequenceClassification.from_pretrained(saved)
    assert again.config.id2label == {0: "NEG", 1: "POS"} and again.is_quantized
    _, enc = _batch(tok)
    torch.testing.assert_close(again(**enc).logits, ort_model(**enc).logits, atol=0, rtol=0)


def test_call_errors_and_device(bert_export):
    _, _, fp32, _ = bert_export
    ort_model = OnnxModelForSequenceClassification.from_pretrained(fp32)
    with pytest.raises(UserInputError, match="CPU only"):
        ort_model.to("cuda")
    with pytest.raises(UserInputError, match="not labels"):
        ort_model(input_ids=torch.ones(1, 4, dtype=torch.long), labels=torch.tensor([1]))
    with pytest.raises(UserInputError, match="attention_mask has shape"):
        ort_model(input_ids=np.ones((2, 4)), attention_mask=np.ones((2, 5)))
    with pytest.raises(UserInputError, match="no model.onnx"):
        OnnxModelForSequenceClassification.from_pretrained(os.path.dirname(fp32))


def test_latency_has_the_keys_of_measure_latency(bert_export):
    model, _, fp32, _ = bert_export
    ort_model = OnnxModelForSequenceClassification.from_pretrained(fp32, num_threads=1)
    got = measure_onnx_latency(ort_model, batch_size=2, seq_len=8, runs=2, warmup=1)
    want = measure_latency(model, batch_size=2, seq_len=8, runs=2, warmup=1)
    assert got.keys() == want.keys()
    assert got["median_ms"] > 0 and got["threads"] == 1 and got["device"] == "cpu" and got["batch_size"] == 2
    assert measure_latency(ort_model, batch_size=2, seq_len=8, runs=1, warmup=0).keys() == want.keys()
