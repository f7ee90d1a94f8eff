"""Weight sharing (hfcompress/share): k-means to k values per matrix, pruned zeros kept, shared values trained as one
parameter in a plain Trainer, packed checkpoints that reload (in a fresh process) with the logits of the trained
model, refused bad input (k, quantized models, packed files that disagree with their config), and `hfcompress share`
end to end on tiny local assets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import (
    ROOT,
    check_publishable_card,
    make_dataset,
    make_texts,
    make_tokenizer,
    save_tiny_assets,
    tiny_bert,
)
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from hfcompress.errors import UserInputError
from hfcompress.loading import checkpoint_format, load_model
from hfcompress.packing import pack_bits, packed_nbytes, unpack_bits
from hfcompress.registry import PLAIN, StageArgs, StageOrderError, get_method
from hfcompress.share import (
    SHARED_WEIGHTS_NAME,
    SHARING_KEY,
    WeightSharingCallback,
    WeightSharingConfig,
    load_shared,
    save_shared,
    save_shared_dense,
    share_weights,
)


def _distinct(t):
    return torch.unique(t.detach()).numel()


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_pack_bits_round_trips_every_width(bits):
    codes = torch.randint(0, 2 ** bits, (37,))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(37, bits)
    assert torch.equal(unpack_bits(packed, bits, 37), codes)


def test_each_matrix_keeps_k_values_and_pruned_zeros_stay_zero():
    model = tiny_bert()
    layer = model.bert.encoder.layer[0].intermediate.dense
    with torch.no_grad():
        layer.weight[:, ::2] = 0  # pruned half
    zeros = layer.weight == 0
    sharing = share_weights(model, weight_sharing_k=4)
    assert torch.equal(layer.weight == 0, zeros)  # zeros kept, nothing else became zero
    assert _distinct(layer.weight) <= 4  # the fixed zero and 3 centroids
    q = model.bert.encoder.layer[1].attention.self.query.weight
    assert _distinct(q) == 4
    assert _distinct(model.classifier.weight) > 4  # the task head is not shared by default
    assert _distinct(model.bert.embeddings.word_embeddings.weight) > 4  # embeddings only when asked
    assert model.config.to_dict()[SHARING_KEY]["bits"] == 2
    assert sharing.summary()["pruned_matrices"] == 1


def test_gradients_of_a_shared_value_are_summed_and_training_keeps_k_values(tmp_path, tokenizer):
    model = tiny_bert()
    data = make_dataset().map(lambda b: tokenizer(b["text"], truncation=True), batched=True).remove_columns("text")
    callback = WeightSharingCallback(weight_sharing_k=8, weight_sharing_embeddings=True)
    args = TrainingArguments(str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=16, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=data["train"], callbacks=[callback],
                      processing_class=tokenizer)
    # gradients seen just before the step: equal within a cluster
    seen = {}

    class Probe(WeightSharingCallback.__mro__[1]):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if not seen:
                m = callback.sharing.matrices[0]
                seen["grad"], seen["idx"] = m.param.grad.detach().reshape(-1).clone(), m.indices.clone()
                seen["before"] = m.codebook().clone()

    trainer.add_callback(Probe())  # after the sharing callback: sees the summed gradients
    trainer.train()
    grad, idx = seen["grad"], seen["idx"]
    for c in idx.unique()[:3]:
        members = grad[idx == c]
        assert torch.allclose(members, members[0].expand_as(members))
    for m in callback.sharing.matrices:
        assert _distinct(m.param) <= 8
    after = callback.sharing.matrices[0].codebook()
    assert not torch.equal(after, seen["before"])  # the shared values trained
    assert callback.summary["shared_matrices"] == len(callback.sharing.matrices)


_FRESH = r"""
import sys, torch
from hfcompress.loading import load_model
from conftest import make_tokenizer, make_texts
torch.set_num_threads(int(sys.argv[3]))  # the parent's: the same summation order, so the same bits
model = load_model(sys.argv[1])
enc = make_tokenizer()(make_texts(6, 2)[0], padding=True, return_tensors="pt")
with torch.no_grad():
    torch.save(model(**enc).logits, sys.argv[2])
"""


def test_packed_checkpoint_reloads_in_a_fresh_process_with_the_same_logits(tmp_path):
    model = tiny_bert(seed=4)
    share_weights(model, weight_sharing_k=16, weight_sharing_embeddings=True)
    model.eval()
    tok = make_tokenizer()
    save_shared(model, str(tmp_path / "packed"), tok)
    save_shared_dense(model, str(tmp_path / "dense"), tok)
    assert checkpoint_format(str(tmp_path / "packed")) == "shared"
    assert checkpoint_format(str(tmp_path / "dense")) == PLAIN
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), )
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "packed"), str(tmp_path / "logits.pt"),
                          str(torch.get_num_threads())], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    enc = tok(make_texts(6, 2)[0], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits
        dense = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "dense")).eval()(**enc).logits
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)
    assert torch.equal(dense, expected)
    packed = os.path.getsize(tmp_path / "packed" / SHARED_WEIGHTS_NAME)
    assert packed < os.path.getsize(tmp_path / "dense" / "model.safetensors") / 3


def test_packed_widths_that_disagree_with_the_config_are_refused(tmp_path):
    model = tiny_bert()
    share_weights(model, weight_sharing_k=16)
    save_shared(model, str(tmp_path / "m"))
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[SHARING_KEY]["bits"] = 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(UserInputError, match="disagree with config.json's hfcompress_weight_sharing"):
        load_shared(str(tmp_path / "m"))


@pytest.mark.parametrize("kwargs, message", [
    ({"weight_sharing_k": 1}, r"weight_sharing_k must be a whole number in 2\.\.256, got 1"),
    ({"weight_sharing_k": 300}, "got 300"),
    ({"weight_sharing_k": 16, "weight_sharing_modules": ["no_such_layer"]}, "matches no nn.Linear"),
])
def test_bad_settings_are_refused_before_any_change(kwargs, message):
    model = tiny_bert()
    before = model.bert.encoder.layer[0].output.dense.weight.clone()
    with pytest.raises(UserInputError, match=message):
        share_weights(model, WeightSharingConfig(**kwargs))
    assert torch.equal(model.bert.encoder.layer[0].output.dense.weight, before)


def test_k_above_a_matrix_distinct_weights_is_refused():
    model = tiny_bert()
    with torch.no_grad():
        model.bert.pooler.dense.weight.copy_(torch.tensor([0.1, 0.2, 0.3]).repeat(11)[:32].repeat(32, 1))
    with pytest.raises(UserInputError, match=r"weight_sharing_k=8 is larger than the 3 distinct weights of "
                                             r"bert.pooler.dense"):
        share_weights(model, weight_sharing_k=8)


def test_quantized_models_are_refused():
    model = tiny_bert()
    model.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    with pytest.raises(UserInputError, match="already quantized: bitsandbytes"):
        share_weights(model, weight_sharing_k=16)

    class OnnxLike:  # what an ONNX Runtime model is to PyTorch: not a module
        config = None

    with pytest.raises(UserInputError, match="not a PyTorch model"):
        share_weights(OnnxLike(), weight_sharing_k=16)


def test_recipe_order_after_pruning_but_not_after_quantization():
    method = get_method("weight_sharing")
    assert method.stage == "share"
    assert method.next_shape("sparse", StageArgs()) == "shared"
    assert method.next_shape("structured", StageArgs()) == "shared"
    with pytest.raises(StageOrderError, match="quantized model"):
        method.next_shape("quantized", StageArgs())
    line, tags = method.describe({"weight_sharing_k": 16, "shared_matrices": 12, "index_bits": 4,
                                  "shared_weights": 1000})
    assert "12 matrices keep 16 shared values each (4-bit indices" in line and "weight-sharing" in tags


def test_recipe_prune_then_share_keeps_the_zeros_and_cards_the_result(tmp_path):
    """Deep Compression's order as a recipe (`hfcompress compress`): unstructured pruning, then sharing of the pruned
    model (loaded from its compact sparse folder); the shared model keeps every pruned zero."""
    import yaml

    teacher_dir, data_file = save_tiny_assets(tmp_path / "assets")
    fast = {"eval_strategy": "no", "save_strategy": "no", "per_device_train_batch_size": 16, "max_steps": 3}
    recipe = {"name": "prune-share", "base_model": teacher_dir, "seed": 0, "data": {"dataset": data_file},
              "stages": [{"name": "prune", "method": "prune", "args": {"target_sparsity": 0.5, **fast}},
                         {"name": "share", "method": "share", "args": {"weight_sharing_k": 8, **fast}}],
              "measure": {"latency_rounds": 1, "measure_memory": False}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "hfcompress", "compress", "--recipe", str(tmp_path / "recipe.yaml"),
                          "--output_dir", str(out)], env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    pruned = load_model(str(out / "stages" / "01-prune" / "model"))
    shared = load_model(str(out / "model"))
    assert checkpoint_format(str(out / "model")) == "shared"
    p_w = pruned.bert.encoder.layer[0].intermediate.dense.weight
    s_w = shared.bert.encoder.layer[0].intermediate.dense.weight
    assert float((p_w == 0).float().mean()) > 0.2
    assert torch.equal(s_w[p_w == 0], torch.zeros_like(s_w[p_w == 0]))  # pruned zeros stayed zero
    assert _distinct(s_w) <= 8
    summary = json.loads((out / "recipe_summary.json").read_text())
    entry = summary["methods"]["weight_sharing"]
    assert entry["index_bits"] == 3 and entry["pruned_matrices"] > 0
    card = (out / "model" / "README.md").read_text()
    assert "weight sharing (Deep Compression trained quantization)" in card and "load_shared" in card
    check_publishable_card(out / "model", run_dir=tmp_path)  # the packed format's loading code runs as shown


def test_share_command_refuses_a_bad_k_before_any_work(tmp_path):
    from hfcompress.run.scripts import command_main

    teacher_dir, data_file = save_tiny_assets(tmp_path / "assets")
    with pytest.raises(UserInputError, match="weight_sharing_k must be a whole number in 2..256, got 0"):
        command_main("share")(["--teacher_model", teacher_dir, "--dataset", data_file, "--output_dir",
                               str(tmp_path / "bad"), "--weight_sharing_k", "0"])
    assert not (tmp_path / "bad").exists()


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(tmp_path, tokenizer):
    """Resuming needs no saved state of the method: the checkpoint's weights already hold k values per matrix and
    are adopted as they are (k-means would move them)."""
    from conftest import whole_and_resumed

    whole, resumed = whole_and_resumed(tmp_path, tokenizer, lambda: WeightSharingCallback(weight_sharing_k=8))
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert _distinct(resumed.bert.encoder.layer[1].output.dense.weight) <= 8
