"""Cost of the teacher cache as the data grows (issue 24): the size estimated before caching matches what is written,
a cache over its limit holds logits only while the loss stays the same (the teacher runs for the rest), and writing
rows as they are computed stores the same values."""

import logging
import os
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from conftest import command_fails, make_dataset, make_tokenizer, tiny_bert, tiny_mpnet

from hfcompress import DistillationArguments, DistillationConfig, DistillationDataCollator, DistillationTrainer
from hfcompress.distill.cache import (
    compute_teacher_outputs,
    decode_array,
    estimate_teacher_cache,
)
from hfcompress.distill.loss import CACHED_HIDDEN, CACHED_LOGITS, CACHED_QKV, DistillationLoss
from hfcompress.errors import UserInputError
from hfcompress.run.arguments import DataArguments
from hfcompress.run.data import cache_teacher_on_train, tokenize_for_distillation

HIDDEN, RELATION = [2, 4], [4]
CFG = dict(alpha=0.8, temperature=2.0, hidden_weight=1.0, layer_map="1:2,2:4", relation_weight=1.0,
           relation_layer_map="2:4")


def _tokenized(teacher_tokenizer: str, n_train: int = 48):
    student_tok = make_tokenizer()
    teacher_tok = make_tokenizer() if teacher_tokenizer == "same" else make_tokenizer("<s>", "</s>", offset=4)
    tokenized, separate = tokenize_for_distillation(make_dataset(n_train=n_train), student_tok, teacher_tok, "text",
                                                    "label", 32)
    return tokenized, separate, DistillationDataCollator(student_tok, teacher_tok if separate else None)


def _cache(tmp_path, name, tokenized, separate, collator, teacher, cache_max_gb=None, calls=None):
    def loader():
        if calls is not None:
            calls.append(1)
        return teacher

    return cache_teacher_on_train(tokenized, "tiny-teacher", loader, collator, str(tmp_path / name), HIDDEN, separate,
                                  16, lambda desc=None: nullcontext(), teacher_config=teacher.config,
                                  cache_max_gb=cache_max_gb, relation_layers=RELATION)


def _written_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


@pytest.mark.parametrize("teacher_tokenizer", ["same", "other"])
def test_estimate_matches_the_bytes_written(tmp_path, teacher_tokenizer):
    tokenized, separate, collator = _tokenized(teacher_tokenizer, n_train=240)
    teacher = tiny_mpnet(seed=1)
    _, full = _cache(tmp_path, "full", tokenized, separate, collator, teacher)
    _, small = _cache(tmp_path, "logits", tokenized, separate, collator, teacher, cache_max_gb=0)
    est = full["estimate"]
    prefix = "teacher_" if separate else ""
    assert est["tokens"] == sum(len(x) for x in tokenized["train"][f"{prefix}input_ids"])  # real lengths
    assert est["rows"] == 240 and est["width"] == 48 and est["hidden_layers"] == 2 and est["relation_layers"] == 1
    written = _written_bytes(str(tmp_path / "full" / "data"))
    assert abs(est["total_bytes"] - written) <= 0.1 * written, (est, written)
    written = _written_bytes(str(tmp_path / "logits" / "data"))
    assert small["hidden_layers"] == [] and small["relation_layers"] == []
    assert abs(est["logits_only_bytes"] - written) <= 0.1 * written, (est, written)


def _loss_on_batch(kd: DistillationLoss, student, batch: dict) -> tuple[torch.Tensor, dict]:
    """One training loss as `DistillationTrainer.compute_loss` makes it (student in eval mode: no dropout)."""
    kd.prepare_student(student)
    inputs = dict(batch)
    teacher_out = kd.teacher_outputs(inputs)
    extra = kd.student_forward_kwargs()
    labels = inputs.pop("labels")
    out = student.eval()(**inputs, **extra)
    return kd(out, labels, teacher_outputs=teacher_out, attention_mask=inputs.get("attention_mask"), return_parts=True)


@pytest.mark.parametrize("teacher_tokenizer", ["same", "other"])
def test_over_the_limit_caches_logits_only_and_the_loss_is_unchanged(tmp_path, caplog, teacher_tokenizer):
    tokenized, separate, collator = _tokenized(teacher_tokenizer)
    teacher = tiny_mpnet(seed=1)
    full, full_meta = _cache(tmp_path, "full", tokenized, separate, collator, teacher)
    caplog.clear()  # only what the logits-only run logs (an earlier test may have set hfcompress to INFO)
    with caplog.at_level(logging.INFO, logger="hfcompress"):
        small, meta = _cache(tmp_path, "small", tokenized, separate, collator, teacher, cache_max_gb=0)
    estimated = [r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher cache: ~")]
    assert len(estimated) == 2 and "estimated for 48 rows" in estimated[0] and "limit 0 GB" in estimated[0]
    assert "over the limit" in estimated[1] and "caching logits only" in estimated[1]
    assert meta["online_terms"] == ["hidden_states", "relations"] and meta["hidden_layers"] == []
    cols = small["train"].column_names
    assert CACHED_LOGITS in cols and CACHED_HIDDEN not in cols and CACHED_QKV not in cols
    # The teacher runs while training, so it keeps its own token ids (and only then).
    assert ("teacher_input_ids" in cols) == separate
    assert not any(c.startswith("teacher_input") for c in full["train"].column_names)

    cfg = DistillationConfig(**CFG)
    student = tiny_bert(seed=0)
    probe = DistillationLoss(cfg, student.config, teacher_config=teacher.config)
    assert probe.needs_online_teacher(meta) and not probe.needs_online_teacher(full_meta)

    rows = range(0, 48, 6)
    losses = {}
    for name, data, kwargs in (
        ("everything cached", full["train"],
         dict(teacher_config=teacher.config, cached_hidden_layers=HIDDEN, cached_relation_layers=RELATION)),
        ("logits cached", small["train"], dict(teacher=teacher)),
        ("nothing cached", tokenized["train"], dict(teacher=teacher)),
    ):
        torch.manual_seed(0)  # the same learned projections in the three losses
        kd = DistillationLoss(cfg, student.config, **kwargs)
        losses[name] = _loss_on_batch(kd, student, collator([data[i] for i in rows]))
    ref_loss, ref_parts = losses["nothing cached"]
    for name in ("everything cached", "logits cached"):
        loss, parts = losses[name]
        assert set(parts) == set(ref_parts) == {"loss_ce", "loss_kd", "loss_hidden", "loss_relation"}
        # Logits: float32, exact up to padding; hidden states and q/k/v of a full cache: float16.
        rtol = 1e-5 if name == "logits cached" else 2e-3
        for k in ref_parts:
            assert parts[k].item() == pytest.approx(ref_parts[k].item(), rel=rtol, abs=1e-6), (name, k)
        assert loss.item() == pytest.approx(ref_loss.item(), rel=rtol)


def test_run_over_the_limit_trains_like_online(tmp_path):
    """The wiring of a run: a logits-only cache plus the teacher (needs_online_teacher(meta)) trains to the weights
    of a run with nothing cached."""
    tokenized, separate, collator = _tokenized("other")
    teacher = tiny_mpnet(seed=1)
    small, meta = _cache(tmp_path, "small", tokenized, separate, collator, teacher, cache_max_gb=0)
    probe = DistillationLoss(DistillationConfig(**CFG), tiny_bert().config, teacher_config=teacher.config)
    weights = {}
    for name, data, t in (("cached", small["train"], teacher if probe.needs_online_teacher(meta) else None),
                          ("online", tokenized["train"], teacher)):
        args = DistillationArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=8, max_steps=4,
                                     report_to="none", save_strategy="no", seed=3, use_cpu=True, **CFG)
        trainer = DistillationTrainer(model=tiny_bert(seed=0), args=args, teacher_model=t,
                                      teacher_config=teacher.config, train_dataset=data, data_collator=collator)
        trainer.train()
        weights[name] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    for k in weights["online"]:
        assert torch.allclose(weights["online"][k], weights["cached"][k], atol=1e-5), k


def test_rows_written_as_computed_hold_the_teachers_outputs(tmp_path):
    """`compute_teacher_outputs` writes each batch to a file as it goes (an in-memory dataset in, a file-backed one
    out); batches of 5 that do not divide the rows give the values of one teacher pass over all rows."""
    tokenized, _, collator = _tokenized("same", n_train=23)
    train = tokenized["train"]
    assert not train.cache_files
    teacher = tiny_mpnet(seed=1)
    tok = make_tokenizer()
    out = compute_teacher_outputs(teacher, train, lambda f: tok.pad(f, return_tensors="pt"), hidden_layers=HIDDEN,
                                  batch_size=5, relation_layers=RELATION,
                                  cache_file_name=str(tmp_path / "rows.arrow"))
    assert [f["filename"] for f in out.cache_files] == [str(tmp_path / "rows.arrow")]
    assert len(out) == 23 and out["input_ids"] == train["input_ids"]
    batch = collator([dict(r) for r in train])
    with torch.no_grad():
        ref = teacher.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_hidden_states=True)
    lengths = batch["attention_mask"].sum(-1).tolist()
    for i, row in enumerate(out):
        assert np.allclose(row[CACHED_LOGITS], ref.logits[i].numpy(), atol=1e-5)
        hidden = decode_array(row[CACHED_HIDDEN])
        assert hidden.shape == (2, lengths[i], 48)
        for j, layer in enumerate(HIDDEN):
            assert np.allclose(hidden[j], ref.hidden_states[layer][i, : lengths[i]].numpy(), atol=2e-3, rtol=1e-3)
        assert decode_array(row[CACHED_QKV]).shape == (3, lengths[i], 48)


def test_estimate_reads_real_lengths_not_max_length():
    tokenized, _, _ = _tokenized("same", n_train=30)
    teacher = tiny_mpnet(seed=1)
    est = estimate_teacher_cache(tokenized["train"], teacher.config, HIDDEN, RELATION)
    tokens = sum(len(x) for x in tokenized["train"]["input_ids"])
    assert est.tokens == tokens < 30 * 32
    assert est.hidden_bytes >= 2 * tokens * 48 * 2 and est.qkv_bytes >= 3 * tokens * 48 * 2
    assert est.logits_bytes == 30 * (4 * teacher.config.num_labels + 4)


def test_negative_limit_is_one_clear_error_before_any_work(tmp_path):
    with pytest.raises(UserInputError, match="--cache_max_gb must be 0 or more"):
        DataArguments(cache_max_gb=-1)
    tokenized, separate, collator = _tokenized("same")
    calls = []
    with pytest.raises(UserInputError, match="cache_max_gb"):
        _cache(tmp_path, "c", tokenized, separate, collator, tiny_mpnet(), cache_max_gb=-0.5, calls=calls)
    assert calls == [] and not (tmp_path / "c").exists()


def test_script_over_the_limit_says_so_once_and_trains(tmp_path):
    """scripts/distill.py --cache_max_gb 0 on the full recipe (teacher of another width and tokenizer): the estimate
    and the fallback are one line each, the run trains with the teacher online and records it."""
    import json
    import subprocess
    import sys

    from conftest import save_tiny_assets
    from test_script import ROOT, SCRIPT, _env

    teacher, data = save_tiny_assets(tmp_path / "assets", teacher_kind="mpnet", teacher_offset=4)
    student_dir = str(tmp_path / "student")
    tiny_bert(num_layers=4, hidden=32, seed=9).save_pretrained(student_dir)
    make_tokenizer().save_pretrained(student_dir)
    out = tmp_path / "run"
    base = [sys.executable, SCRIPT, "--output_dir", str(out), "--teacher_model", teacher, "--dataset", data,
            "--student_model", student_dir, "--student_layers", "1,3", "--hidden_weight", "1", "--layer_map",
            "1:2,2:4", "--relation_weight", "1", "--max_steps", "3", "--eval_strategy", "no", "--save_strategy",
            "no", "--use_cpu", "--per_device_train_batch_size", "8", "--latency_rounds", "1", "--no_measure_memory"]
    line = command_fails("distill", [*base[2:], "--cache_max_gb", "-1"], tmp_path)  # in this process
    assert "--cache_max_gb must be 0 or more" in line, line
    assert not out.exists() or not (out / "teacher_cache").exists()
    res = subprocess.run([*base, "--cache_max_gb", "0"], env=_env(tmp_path), capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    log = res.stdout + res.stderr
    assert log.count("GB estimated for") == 1 and log.count("caching logits only") == 1, log[-4000:]
    kd = json.load(open(out / "distill_summary.json"))["methods"]["distillation"]
    assert kd["teacher_outputs"] == "logits cached, hidden_states and relations online"
    assert kd["teacher_cache"]["hidden_layers"] == [] and kd["teacher_cache"]["estimate"]["hidden_layers"] == 2
