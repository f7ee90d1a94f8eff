"""Extractive QA: SQuAD-style files read and checked, windows over long contexts with answers mapped by offsets,
post-processing back to text, the SQuAD EM/F1 module on known cases, start/end KD through the one loss, and
`hfcompress distill` end to end on a SQuAD JSON file, the saved reader answering raw questions (transformers 5 has no
question-answering pipeline any more)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import check_publishable_card
from datasets import Dataset
from qa_assets import make_questions, save_qa_assets, tiny_reader, write_flat_jsonl, write_squad
from tagging_assets import make_wordpiece_tokenizer

from hfcompress.errors import UserInputError
from hfcompress.qa import load_qa, looks_like_qa, postprocess, prepare_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_squad_module_exact_match_and_f1_on_known_cases():
    from hfcompress.metrics import qa_metrics

    out = qa_metrics(["The Eiffel tower!", "in london today", "", "paris"],
                     [["eiffel tower"], ["london", "in london"], [], []])
    # 1: normalised equal; 2: best reference "in london" (P 2/3, R 1 -> 0.8); 3: no answer, none given; 4: wrong
    assert out["exact_match"] == pytest.approx(2 / 4)
    assert out["f1"] == pytest.approx((1 + 0.8 + 1 + 0) / 4)
    assert out["has_answer_f1"] == pytest.approx(0.9) and out["no_answer_exact_match"] == pytest.approx(0.5)
    assert out["has_answer_total"] == 2 and out["no_answer_total"] == 2 and out["total"] == 4
    assert qa_metrics(["london"], [["new york"]])["f1"] == 0.0


def test_flat_jsonl_and_squad_json_read_and_checked(tmp_path, caplog):
    qs = make_questions(30, 4)
    qs[0] = (qs[0][0], qs[0][1], "berlin")  # not in its context: kept for scoring, not trained on, counted
    flat = write_flat_jsonl(tmp_path / "qa.jsonl", qs)
    assert looks_like_qa(flat)
    with caplog.at_level("WARNING"):
        ds = load_qa(flat)
    assert any("1 of" in r.message and "not found in their context" in r.message for r in caplog.records)
    held_out = "berlin" in str(ds["validation"]["answers"]) + str(ds["test"]["answers"])
    assert "berlin" not in str(ds["train"]["answers"]) and sum(len(d) for d in ds.values()) == 29 + held_out
    for row in ds["train"]:
        for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            assert row["context"][s:s + len(t)] == t
    squad = load_qa(write_squad(tmp_path / "squad.json", make_questions(30, 5)))
    assert {s: len(d) for s, d in squad.items()} == {"train": 24, "validation": 3, "test": 3}
    assert any(not a["text"] for a in squad["train"]["answers"])  # unanswerable questions (SQuAD v2) kept
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "mary lives in paris", "question": "where",
                               "answers": {"text": ["paris"], "answer_start": [40]}}) + "\n")
    with pytest.raises(UserInputError, match="answer_start 40 lies beyond its context of 19 characters"):
        load_qa(str(bad))


def _windows():
    tok = make_wordpiece_tokenizer()
    context = "john lives in paris and works at acme in paris today and mary jones lives in london today"
    start = context.index("london")
    ex = {"id": ["q"], "question": ["where mary jones lives"], "context": [context],
          "answers": [{"text": ["london"], "answer_start": [start]}]}
    return tok, ex, prepare_features(ex, tok, max_length=16, doc_stride=4)


def test_long_context_windows_label_the_answer_by_offsets():
    tok, ex, feats = _windows()
    assert len(feats["input_ids"]) >= 3  # the context does not fit one window of 16 tokens
    labelled = [i for i, lab in enumerate(feats["labels"]) if lab != [0, 0]]
    assert labelled, "the window holding the answer labels it"
    for i, (s, e) in enumerate(feats["labels"]):
        if i in labelled:  # lon ##don, mapped back through the offsets
            offs = feats["offset_mapping"][i]
            assert ex["context"][0][offs[s][0]:offs[e][1]] == "london"
            assert tok.convert_ids_to_tokens(feats["input_ids"][i][s:e + 1]) == ["lon", "##don"]
    # the answer is recovered from all windows' logits, wherever its window lies
    i = labelled[-1]
    width = max(len(x) for x in feats["input_ids"])
    start, end = np.full((len(feats["input_ids"]), width), -5.0), np.full((len(feats["input_ids"]), width), -5.0)
    start[i, feats["labels"][i][0]], end[i, feats["labels"][i][1]] = 5.0, 5.0
    examples, features = Dataset.from_dict(ex), Dataset.from_dict(feats)
    assert postprocess(examples, features, start, end) == {"q": "london"}
    start[:, 0], end[:, 0] = 9.0, 9.0  # CLS wins: no answer, if the data has unanswerable questions
    assert postprocess(examples, features, start, end, allow_no_answer=True) == {"q": ""}
    assert postprocess(examples, features, start, end) == {"q": "london"}


def test_start_end_kd_is_distilberts_squad_loss():
    from hfcompress.distill import DistillationConfig, DistillationLoss, TeacherOutputs

    student, teacher = tiny_reader(num_layers=2, seed=0), tiny_reader(num_layers=4, seed=1)
    g = torch.Generator().manual_seed(0)
    s_start, s_end, t_start, t_end = (torch.randn(3, 10, generator=g) for _ in range(4))
    from transformers.modeling_outputs import QuestionAnsweringModelOutput

    student_out = QuestionAnsweringModelOutput(start_logits=s_start, end_logits=s_end)
    labels = torch.tensor([[2, 4], [0, 0], [7, 9]])
    ce = DistillationLoss(DistillationConfig(alpha=0.0), student.config, teacher)(student_out, labels,
                                                                                    teacher_outputs=TeacherOutputs())
    ref = (torch.nn.functional.cross_entropy(s_start, labels[:, 0]) + torch.nn.functional.cross_entropy(s_end, labels[:, 1])) / 2
    assert float(ce) == pytest.approx(float(ref), rel=1e-5)
    kd = DistillationLoss(DistillationConfig(alpha=1.0, temperature=2.0), student.config, teacher)(
        student_out, labels, teacher_outputs=TeacherOutputs(logits=torch.stack([t_start, t_end], 1)))
    kl = sum(torch.nn.functional.kl_div(torch.log_softmax(s / 2, -1), torch.log_softmax(t / 2, -1), reduction="sum",
                                        log_target=True) for s, t in ((s_start, t_start), (s_end, t_end)))
    assert float(kd) == pytest.approx(float(kl * 4 / 6), rel=1e-5)  # T^2 * KL over 6 items (3 starts, 3 ends)


def test_cached_start_end_logits_give_the_online_loss_whatever_the_padding(tmp_path):
    """The teacher's start/end logits of each window, cached unpadded ([T_i, 2] per window) and padded by the
    collator to another batch's length, give the KD loss of the teacher run on that batch: padding positions are out
    of both models' distributions (an answer never starts in the padding)."""
    from hfcompress.distill import DistillationConfig, DistillationLoss, SpanDistillationCollator, TeacherOutputs
    from hfcompress.distill.cache import load_or_compute_teacher_cache
    from hfcompress.distill.loss import CACHED_LOGITS, logits_of

    tok = make_wordpiece_tokenizer()
    questions = make_questions(12, 1)
    ex = {"id": [f"q{i}" for i in range(12)], "question": [q for _, q, _ in questions],
          "context": [c + " and more" * (i % 4) for i, (c, _, _) in enumerate(questions)],
          "answers": [{"text": [], "answer_start": []}] * 12}
    rows = Dataset.from_dict(prepare_features(ex, tok, max_length=24, doc_stride=6)).remove_columns(
        ["example_id", "offset_mapping"])
    lengths = [sum(m) for m in rows["attention_mask"]]
    assert len(set(lengths)) > 2, "windows of several lengths: batches are padded"
    student, teacher = tiny_reader(num_layers=2, seed=0).eval(), tiny_reader(num_layers=4, seed=1).eval()
    collator = SpanDistillationCollator(tok)
    cached, meta = load_or_compute_teacher_cache(str(tmp_path / "cache"), "reader", rows, lambda: teacher,
                                                 collator.pad_teacher, batch_size=3, per_token=True)
    assert meta["per_token"] and [len(x) for x in cached[CACHED_LOGITS]] == lengths
    assert all(len(pos) == 2 for x in cached[CACHED_LOGITS] for pos in x)  # a (start, end) pair per position
    kd = DistillationLoss(DistillationConfig(alpha=0.6, temperature=2.0), student.config, teacher)
    picks = [i for i in range(len(rows)) if lengths[i] < max(lengths)][:3] + [lengths.index(max(lengths))]
    online_batch = collator([rows[i] for i in picks])
    cached_batch = collator([cached[i] for i in picks])
    assert cached_batch[CACHED_LOGITS].shape == (4, 2, online_batch["input_ids"].shape[1])
    labels = online_batch.pop("labels")
    real = online_batch["attention_mask"].bool()[:, None, :].expand(-1, 2, -1)
    with torch.no_grad():
        t_logits = logits_of(teacher(**online_batch))
        s_out = student(**online_batch)
        assert torch.allclose(cached_batch[CACHED_LOGITS][real], t_logits[real], atol=1e-5)
        mask = online_batch["attention_mask"]
        online = kd(s_out, labels, teacher_outputs=TeacherOutputs(logits=t_logits), attention_mask=mask)
        from_cache = kd(s_out, labels, teacher_outputs=TeacherOutputs(logits=cached_batch[CACHED_LOGITS]),
                        attention_mask=mask)
        pure = DistillationLoss(DistillationConfig(alpha=1.0, temperature=2.0), student.config, teacher)
        unmasked = pure(s_out, labels, teacher_outputs=TeacherOutputs(logits=cached_batch[CACHED_LOGITS]))
        masked = pure(s_out, labels, teacher_outputs=TeacherOutputs(logits=t_logits), attention_mask=mask)
    assert float(from_cache) == pytest.approx(float(online), rel=1e-5)
    assert abs(float(unmasked) - float(masked)) > 1e-3 * float(masked), "the padding would count without the mask"


def test_distill_command_on_squad_json_and_qa_pipeline(tmp_path):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline

    from hfcompress.run.qa import answer_questions

    teacher, _, squad = save_qa_assets(tmp_path)
    out = tmp_path / "run"
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    res = subprocess.run(
        [sys.executable, "-m", "hfcompress", "distill", "--teacher_model", teacher, "--dataset", squad,
         "--output_dir", str(out), "--student_num_layers", "2", "--max_steps", "3", "--eval_strategy", "no",
         "--save_strategy", "no", "--use_cpu", "--max_length", "16", "--doc_stride", "4",
         "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    s = json.load(open(out / "distill_summary.json"))
    d = s["data"]
    assert d["pipeline_tag"] == "question-answering" and d["metric"] == "f1"
    assert d["windows"]["train"] > d["splits"]["train"]  # long contexts made several windows
    assert {"test_exact_match", "test_f1", "test_no_answer_total"} <= set(s["metrics"]["student"]["test"])
    assert "f1" in s["metrics"]["teacher"]["test"]
    assert (out / "teacher_cache" / "teacher_cache.json").exists(), "the teacher's window logits were cached"
    # transformers 5 has no question-answering pipeline any more: the saved reader answers through answer_questions
    with pytest.raises(KeyError, match="question-answering has been removed"):
        pipeline("question-answering")
    model_dir = str(out / "model")
    reader = AutoModelForQuestionAnswering.from_pretrained(model_dir)
    from hfcompress.loading import load_model

    assert type(load_model(model_dir)).__name__ == "BertForQuestionAnswering"
    context = "john lives in paris and works at acme in paris today and mary jones lives in london today"
    answers = answer_questions(reader, AutoTokenizer.from_pretrained(model_dir), ["where mary jones lives"] * 2,
                               [context, "mary lives in paris"], max_length=16, doc_stride=4)
    assert len(answers) == 2 and all(a and a in c for a, c in zip(answers, [context, "mary lives in paris"]))
    # measured against the teacher (EM/F1 of both, reloaded from disk) and carded; the card's code runs
    assert s["comparison"]["model"]["metrics"]["f1"] == pytest.approx(s["metrics"]["student"]["test"]["test_f1"])
    assert "f1" in s["comparison"]["base"]["metrics"] and s["comparison"]["base"]["format"] == "transformers"
    card = check_publishable_card(model_dir, run_dir=tmp_path)
    assert card.data.pipeline_tag == "question-answering" and "answer_questions" in card.text
    assert "AutoModelForQuestionAnswering" in card.text and "doc_stride=4" in card.text
    assert {r.metric_type for r in card.data.eval_results} == {"exact_match", "f1"}
    assert "test questions" in card.text and "LABEL_0" not in card.text


def test_question_longer_than_max_length_is_one_clear_error(tmp_path):
    """A question leaving its context no room (or no more than --doc_stride) within --max_length: one error naming
    the split, the row and --max_length, not the tokenizer's error (or, with a stride, its panic)."""
    from types import SimpleNamespace

    from hfcompress.run.qa import answer_questions, windows

    ds = load_qa(write_flat_jsonl(tmp_path / "qa.jsonl", make_questions(30, 2, unanswerable=0.0)))
    tok = make_wordpiece_tokenizer()
    longest = max(len(tok(q, add_special_tokens=False)["input_ids"]) for q in ds["train"]["question"])
    args = lambda length, stride: SimpleNamespace(max_length=length, doc_stride=stride)  # noqa: E731
    windows(ds, tok, args(longest + 3 + 3, 2))  # three context tokens per window, stride 2: fine
    with pytest.raises(UserInputError, match=r"split, row \d+: the question is \d+ tokens .*leaves 2 of --max_length "
                                             r"\d+ for the context, which needs more than --doc_stride 2"):
        windows(ds, tok, args(longest + 3 + 2, 2))
    with pytest.raises(UserInputError, match="Raise max_length"):
        answer_questions(tiny_reader(), tok, ["where does mary jones live in the city"], ["in paris today"],
                         max_length=8, doc_stride=1)


def test_headless_encoder_is_fine_tuned_as_a_reader_on_its_answer_positions(tmp_path):
    """A teacher without a QA head gets one by fine-tuning with its own start/end loss. The windows' answers travel
    in `labels`, which a QA model's forward does not name: the Trainer's column pruning must not drop them (on
    Disfl-QA this failed with "The model did not return a loss"). The saved reader fits its training windows
    better than the same head untrained."""
    from transformers import AutoModelForQuestionAnswering, set_seed

    from hfcompress.distill.collator import SpanDistillationCollator
    from hfcompress.run import DataArguments
    from hfcompress.run.finetune import FinetuneConfig
    from hfcompress.run.qa import finetune_reader, windows

    encoder = tmp_path / "encoder"
    tiny_reader(num_layers=2).bert.save_pretrained(encoder)  # headless: a BertModel checkpoint
    tok = make_wordpiece_tokenizer()
    tok.save_pretrained(encoder)
    dataset = load_qa(write_squad(tmp_path / "squad.json", make_questions(40, 2)))
    data_args = DataArguments(dataset=str(tmp_path / "squad.json"), max_length=16, doc_stride=4)
    cfg = FinetuneConfig(num_train_epochs=1, max_steps=40, learning_rate=3e-3, per_device_train_batch_size=8,
                         max_length=16, seed=5)
    summary = finetune_reader(str(encoder), dataset, str(tmp_path / "reader"), cfg, data_args)
    assert summary["reused"] is False and np.isfinite(summary["train_loss"])

    batch = SpanDistillationCollator(tok, positions=True)(list(windows(dataset, tok, data_args)["train"]))

    def loss(model):
        with torch.no_grad():
            return float(model.eval()(**batch).loss)

    set_seed(cfg.seed)  # the head as the fine-tune started it
    untrained = AutoModelForQuestionAnswering.from_pretrained(encoder)
    trained = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "reader")
    assert loss(trained) < 0.8 * loss(untrained)
    assert finetune_reader(str(encoder), dataset, str(tmp_path / "reader"), cfg, data_args)["reused"] is True
