"""Model cards a user can publish as they are: a model distilled, then structurally pruned, then quantized to ONNX int8
by three separate commands, each on the previous one's output, as a new user would, on a CSV with class names in
another order than the teacher's, at --max_length 48. Every card is read as the Hub reads it, its loading code runs
in a fresh process (the Hub id swapped for the local folder by the one line the card says to change), and the last
card carries the whole chain back to the original base model. Other formats' cards are checked where their scripts
are tested (`tests/test_quantize_script.py`)."""

import json
import os

import pytest
from conftest import check_publishable_card, make_texts, make_tokenizer, tiny_bert, write_csv
from huggingface_hub import ModelCard

from hfcompress.commands import main
from hfcompress.loading import checkpoint_format

FAST = ["--latency_rounds", "1", "--no_measure_memory", "--max_length", "48"]
TRAIN = ["--max_steps", "6", "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu",
         "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0", "--seed", "7"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("cards")
    # a teacher fine-tuned with its classes in another order than the data's sorted class names
    teacher = str(root / "teacher")
    tiny_bert(num_layers=4, seed=3, labels=["pos", "neg"]).save_pretrained(teacher)
    make_tokenizer().save_pretrained(teacher)
    texts, labels = make_texts(80, 11)
    data = write_csv(root / "reviews.csv", [(t, ["neg", "pos"][lab]) for t, lab in zip(texts, labels)])
    out = {k: root / k for k in ("distill", "prune", "quantize")}
    assert main(["distill", "--teacher_model", teacher, "--dataset", data, "--student_layers", "0,2",
                 "--base_model_id", "someone/tiny-bert-sentiment", "--output_dir", str(out["distill"]),
                 *TRAIN, *FAST]) == 0
    assert main(["prune", "--teacher_model", str(out["distill"] / "model"), "--dataset", data,
                 "--granularity", "structured", "--target_sparsity", "0.5", "--output_dir", str(out["prune"]),
                 "--push_dry_run", "--hub_model_id", "me/tiny-pruned", *TRAIN, *FAST]) == 0
    assert main(["quantize", "--model", str(out["prune"] / "model"), "--dataset", data, "--quantization", "onnx_int8",
                 "--output_dir", str(out["quantize"]), *FAST]) == 0
    return root, out, data


@pytest.mark.parametrize("stage, fmt", [("distill", "transformers"), ("prune", "structured"), ("quantize", "onnx")])
def test_every_stage_card_is_publishable(chain, stage, fmt):
    root, out, _ = chain
    model_dir = out[stage] / "model"
    assert checkpoint_format(str(model_dir)) == fmt
    # run from another folder than the model's parent: the code names the folder itself, not a relative name
    card = check_publishable_card(model_dir, run_dir=root)
    assert card.data.base_model == "someone/tiny-bert-sentiment"  # --base_model_id of the first stage, carried on
    assert "seed 7" in card.text or stage == "quantize"
    assert "(the run's input length)" in card.text  # latency at the run's own length


def test_the_last_card_carries_the_whole_chain(chain):
    _, out, data = chain
    card = ModelCard.load(out["quantize"] / "model" / "README.md")
    text = card.text
    how = text.split("## How it was made", 1)[1]
    # every stage, in order, with its method and settings and what it measured
    assert how.index("1. `distill`") < how.index("2. `prune`") < how.index("3. `quantize`")
    assert "knowledge distillation" in how and "structured pruning" in how and "onnx_int8" in how
    assert "no block removed" in how and "{'encoder.layer'" not in how
    assert "% of all parameters" in how
    assert card.data.base_model_relation == "finetune"  # distilled and pruned: the weights were trained
    tags = set(card.data.tags)
    assert {"distillation", "structured-pruning", "quantized"} <= tags
    record = json.load(open(out["quantize"] / "model" / "hfcompress_record.json"))
    assert [e["run"] for e in record["lineage"]] == ["distill", "prune"]
    assert record["lineage"][0]["max_length"] == 48
    assert not os.path.exists(out["quantize"] / "reference")  # the re-saved source is not left behind


def test_classes_follow_the_teacher_order(chain):
    _, out, _ = chain
    for stage in ("distill", "prune", "quantize"):
        config = json.load(open(out[stage] / "model" / "config.json"))
        assert config["id2label"] == {"0": "pos", "1": "neg"}, (stage, config["id2label"])
    record = json.load(open(out["distill"] / "model" / "hfcompress_record.json"))
    assert record["command"].startswith("hfcompress distill --teacher_model ")


def test_a_run_that_pushes_cards_its_hub_id(chain):
    _, out, _ = chain
    for folder in (out["prune"] / "hub_upload", out["prune"] / "model"):
        card = ModelCard.load(folder / "README.md")
        assert 'PATH = "me/tiny-pruned"  # the Hub repository' in card.text
        assert card.data.model_name == "tiny-pruned"


def test_push_dry_run_card_names_the_hub_id(chain, capsys):
    _, out, _ = chain
    model_dir = out["quantize"] / "model"
    assert main(["push", str(model_dir), "--hub_model_id", "me/tiny-sentiment-int8", "--push_dry_run"]) == 0
    printed = capsys.readouterr().out
    upload = out["quantize"] / "hub_upload"
    assert str(upload) in printed and "nothing uploaded" in printed
    card = ModelCard.load(upload / "README.md")
    assert 'PATH = "me/tiny-sentiment-int8"' in card.text and str(model_dir) not in card_code(card.text)
    assert card.data.model_name == "tiny-sentiment-int8"
    # the machine's folders by their last names only ("from `.../prune/model`"), in the text and the command
    assert str(out["quantize"].parent) not in card.content and "`.../prune/model`" in card.text
    # the code shown, with the Hub id swapped for the local copy as the card says, runs
    check_publishable_card(upload, local_path=upload)


def card_code(text):
    from conftest import card_loading_code

    return card_loading_code(text)


def test_same_classes_in_another_order_are_reencoded_other_classes_refused(caplog):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from transformers import BertConfig

    from hfcompress.errors import UserInputError
    from hfcompress.run.data import check_teacher_labels

    features = Features({"text": Value("string"), "label": ClassLabel(names=["fresh", "rotten"])})
    data = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 1]}, features=features),
                        "test": Dataset.from_dict({"text": ["d"], "label": [0]}, features=features)})
    teacher = BertConfig(id2label={0: "rotten", 1: "fresh"})
    with caplog.at_level("INFO"):
        check_teacher_labels(teacher, data, "label")
    assert data["train"].features["label"].names == ["rotten", "fresh"]
    assert data["train"]["label"] == [1, 0, 0] and data["test"]["label"] == [1]  # each row keeps its class name
    assert "teacher's order" in caplog.text
    with pytest.raises(UserInputError, match="same class names"):
        check_teacher_labels(BertConfig(id2label={0: "rotten", 1: "stale"}), data, "label")


def test_student_layers_out_of_range_names_the_student_model(chain, capsys):
    root, out, data = chain
    student = str(out["distill"] / "model")  # 2 blocks
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--teacher_model", str(root / "teacher"), "--student_model", student, "--student_layers",
              "1,9", "--dataset", data, "--output_dir", str(root / "bad"), "--use_cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--student_layers [9] out of range: the student model {student} has blocks 0..1" in err, err
    assert not (root / "bad" / "checkpoints").exists()
