"""Sentence pairs (--text_pair_column): a BoolQ-like JSON Lines file of question/passage/answer rows, loaded and checked,
tokenized as pairs (question kept whole, the passage cut), and distilled end to end by `hfcompress distill` with the
teacher, the student and the measurement all reading both texts."""

import json
import os
import random
import subprocess
import sys

import pytest
from tagging_assets import make_wordpiece_tokenizer

from hfcompress.data import load_text_classification, tokenize
from hfcompress.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLACES, PEOPLE = ["paris", "london", "new york"], ["john", "mary jones", "peter"]


def write_boolq_like(path, n=64, seed=0) -> str:
    """{question, title, passage, answer}: is <person> in <place>? -- the passage says where they live (True/False)."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            who, where, asked = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(PLACES)
            passage = f"{who} lives in {where} and works at acme in {where} today"
            fh.write(json.dumps({"question": f"the {who} in {asked}", "title": "t", "passage": passage,
                                 "answer": asked == where}) + "\n")
    return str(path)


def test_pairs_load_and_tokenize_question_whole_passage_cut(tmp_path):
    data = write_boolq_like(tmp_path / "boolq.jsonl")
    ds = load_text_classification(data, "question", "answer", text_pair_column="passage")
    assert ds["train"].features["answer"].names == ["False", "True"]
    assert {"question", "passage"} <= set(ds["train"].column_names)
    tok = make_wordpiece_tokenizer()
    out = tokenize(ds, tok, "question", 12, text_pair_column="passage")["train"][0]
    ids, types = out["input_ids"], out["token_type_ids"]
    q = tok(ds["train"][0]["question"], add_special_tokens=False)["input_ids"]
    assert len(ids) == 12 and ids.count(tok.sep_token_id) == 2  # [CLS] question [SEP] passage... [SEP]
    assert ids[1 : 1 + len(q)] == q and types[: len(q) + 2] == [0] * (len(q) + 2) and types[-1] == 1
    with pytest.raises(UserInputError, match="text pair column 'context' not found .*--text_pair_column"):
        load_text_classification(data, "question", "answer", text_pair_column="context")


def test_distill_command_on_pairs_with_measurement(tmp_path):
    from conftest import tiny_bert

    teacher = tmp_path / "teacher"
    tiny_bert(vocab=32, labels=["False", "True"]).save_pretrained(teacher)
    make_wordpiece_tokenizer().save_pretrained(teacher)
    data = write_boolq_like(tmp_path / "boolq.jsonl", 80)
    out = tmp_path / "run"
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    res = subprocess.run(
        [sys.executable, "-m", "hfcompress", "distill", "--teacher_model", str(teacher), "--dataset", data,
         "--text_column", "question", "--text_pair_column", "passage", "--label_column", "answer",
         "--output_dir", str(out), "--student_num_layers", "2", "--max_steps", "3", "--eval_strategy", "no",
         "--save_strategy", "no", "--use_cpu", "--max_length", "24", "--per_device_train_batch_size", "8",
         "--dataloader_num_workers", "0", "--latency_rounds", "1", "--no_measure_memory"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    s = json.load(open(out / "distill_summary.json"))
    assert s["settings"]["data"]["text_pair_column"] == "passage"
    assert s["settings"]["data"]["pair_truncation"] == "only_second"
    assert "test_accuracy" in s["metrics"]["student"]["test"] and "accuracy" in s["metrics"]["teacher"]["test"]
    # the measurement read pairs too: the student's accuracy there is the trainer's on the same rows
    assert s["comparison"]["model"]["metrics"]["accuracy"] == pytest.approx(
        s["metrics"]["student"]["test"]["test_accuracy"])
    # its card shows a pair (text and text_pair) in the code that loads it, and that code runs
    from conftest import check_publishable_card

    card = check_publishable_card(out / "model", run_dir=tmp_path)
    assert '"text_pair":' in card.text


def test_boolq_like_data_is_pair_classification_not_extractive_qa(tmp_path):
    from hfcompress.qa import looks_like_qa
    from hfcompress.run.arguments import DataArguments, ModelArguments
    from hfcompress.run.skeleton import task_for

    data = write_boolq_like(tmp_path / "boolq.jsonl")
    assert not looks_like_qa(data)  # yes/no answers are classes, not spans
    adapter = task_for(ModelArguments(teacher_model=str(tmp_path / "none")),
                       DataArguments(dataset=data, text_column="question", text_pair_column="passage",
                                     label_column="answer"), None)
    assert adapter.name == "text-classification"


def test_first_text_longer_than_max_length_is_one_clear_error(tmp_path):
    """only_second truncation cuts only the passage: a question that leaves it no room is refused naming the split,
    the row and --max_length (the tokenizer's own error was 'Sequence to truncate too short')."""
    data = write_boolq_like(tmp_path / "boolq.jsonl")
    ds = load_text_classification(data, "question", "answer", text_pair_column="passage")
    tok = make_wordpiece_tokenizer()
    longest = max(len(tok(q, add_special_tokens=False)["input_ids"]) for q in ds["train"]["question"])
    tokenize(ds, tok, "question", longest + 4, text_pair_column="passage")  # room for one passage token: fine
    with pytest.raises(UserInputError, match=r"train split, row \d+: the first text \(question\) is \d+ tokens .*"
                                             r"--max_length 6 .*Raise --max_length"):
        tokenize(ds, tok, "question", 6, text_pair_column="passage")
    tokenize(ds, tok, "question", 6, text_pair_column="passage", pair_truncation="longest_first")  # cuts both: fine


def test_only_first_truncation_refuses_a_second_text_that_leaves_no_room(tmp_path):
    """only_first cuts only the first text: a second text (the passage) too long for it to keep a token is refused the
    same way, naming the passage and only_first truncation; longer --max_length passes."""
    data = write_boolq_like(tmp_path / "boolq.jsonl")
    ds = load_text_classification(data, "question", "answer", text_pair_column="passage")
    tok = make_wordpiece_tokenizer()
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in ds["train"]["passage"]]
    short = min(lengths) + 3  # room for no question token beside the shortest passage, with [CLS] [SEP] [SEP]
    with pytest.raises(UserInputError, match=r"train split, row \d+: the second text \(passage\) is \d+ tokens .*"
                                             r"only_first truncation"):
        tokenize(ds, tok, "question", short, text_pair_column="passage", pair_truncation="only_first")
    tokenize(ds, tok, "question", max(lengths) + 4, text_pair_column="passage", pair_truncation="only_first")
