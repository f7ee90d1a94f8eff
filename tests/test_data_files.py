"""Users' own text-classification files, written for real (CSV, TSV, JSON Lines, Parquet, folders), through
`load_text_classification` and `tokenize`."""

import json
import logging

import numpy as np
import pytest
from conftest import write_csv
from datasets import ClassLabel, Value

from hfcompress.data import label_names, load_text_classification, num_labels, tokenize
from hfcompress.errors import UserInputError

NEWS = {
    "business": ["shares rose after the bank reported profit", "the market fell as oil prices climbed",
                 "investors sold bonds before the rate decision", "the company raised its revenue forecast"],
    "tech": ["the phone maker released a new chip", "a software update fixed the security flaw",
             "the startup built a faster search engine", "engineers tested the new laptop battery"],
    "sport": ["the team won the final in extra time", "the striker scored twice in the derby",
              "the coach praised the young goalkeeper", "the champion retired after the season"],
}


def rows(classes, n_per_class=10, offset=0):
    """(text, label) rows, `n_per_class` per class, in the order of `classes`."""
    out = []
    for cls in classes:
        for i in range(n_per_class):
            out.append((f"{NEWS[cls][(i + offset) % 4]} story {i + offset}", cls))
    return out


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return str(path)


def decoded(ds, column="label"):
    """Label names of every row, through the split's own ClassLabel."""
    names = ds.features[column].names
    return [names[i] for i in ds[column]]


# --- string labels ------------------------------------------------------------------------------------------


def test_csv_folder_with_class_names_encodes_every_split_alike(tmp_path):
    # The reported bug: datasets 5.x reads CSV text as large_string, which was never class-encoded.
    write_csv(tmp_path / "train.csv", rows(["tech", "business"], 8))
    write_csv(tmp_path / "test.csv", rows(["business", "tech"], 3, offset=1))  # classes in the other order
    dsd = load_text_classification(str(tmp_path), seed=0)
    assert set(dsd) == {"train", "validation", "test"}
    for split in ("train", "validation", "test"):
        feat = dsd[split].features["label"]
        assert isinstance(feat, ClassLabel) and feat.names == ["business", "tech"]
    assert label_names(dsd) == ["business", "tech"] and num_labels(dsd) == 2
    # The same name is the same id in every split, and the ids decode back to the written names.
    for split in ("train", "validation", "test"):
        ds = dsd[split]
        for text, lab in zip(ds["text"], ds["label"]):
            assert lab == (0 if any(text.startswith(t) for t in NEWS["business"]) else 1)
    assert decoded(dsd["test"]) == ["business"] * 3 + ["tech"] * 3
    # validation carved out of train: 10% of 8 per class rounds to 1 each, stratified
    assert sorted(decoded(dsd["validation"])) == ["business", "tech"]
    assert len(dsd["train"]) == 14 and len(dsd["test"]) == 6


def test_folder_of_train_validation_test_with_three_classes(tmp_path):
    write_csv(tmp_path / "train.csv", rows(["sport", "tech", "business"], 6))
    write_csv(tmp_path / "validation.csv", rows(["tech", "sport", "business"], 2, offset=2))
    write_csv(tmp_path / "test.csv", rows(["sport", "business", "tech"], 2, offset=3))
    dsd = load_text_classification(str(tmp_path))
    assert [len(dsd[s]) for s in ("train", "validation", "test")] == [18, 6, 6]  # nothing carved
    names = dsd["train"].features["label"].names
    assert names == ["business", "sport", "tech"]
    assert all(dsd[s].features["label"].names == names for s in dsd)
    assert decoded(dsd["validation"]) == ["tech"] * 2 + ["sport"] * 2 + ["business"] * 2
    assert dsd["validation"]["label"] == [2, 2, 1, 1, 0, 0]
    assert dsd["test"]["label"] == [1, 1, 0, 0, 2, 2]


def test_single_jsonl_file_with_names_is_split_stratified_and_seeded(tmp_path):
    path = write_jsonl(tmp_path / "news.jsonl", [{"text": t, "label": l, "id": i} for i, (t, l) in
                                                 enumerate(rows(["tech", "business"], 20))])
    a = load_text_classification(path, seed=1)
    b = load_text_classification(path, seed=1)
    c = load_text_classification(path, seed=2)
    assert [len(a[s]) for s in ("train", "validation", "test")] == [32, 4, 4]
    assert sorted(decoded(a["test"])) == ["business"] * 2 + ["tech"] * 2
    assert a["test"]["id"] == b["test"]["id"] and a["test"]["id"] != c["test"]["id"]
    assert a["train"].features["label"].names == ["business", "tech"]


def test_tsv_with_dev_split_and_quotes_in_text(tmp_path):
    data = rows(["tech", "business"], 6)
    data[0] = ('the "new" chip,\tthey said, is 5" wide', "tech")  # csv.writer quotes it, as pandas would
    write_csv(tmp_path / "train.tsv", data, delimiter="\t")
    with open(tmp_path / "dev.tsv", "w", encoding="utf-8") as fh:
        fh.write("text\tlabel\n")
        fh.write('a "quoted" word and a lone " mark\tbusiness\n')  # written by hand, unquoted
        fh.write("the phone maker released a chip\ttech\n")
    dsd = load_text_classification(str(tmp_path))
    assert dsd["validation"]["text"] == ['a "quoted" word and a lone " mark', "the phone maker released a chip"]
    assert decoded(dsd["validation"]) == ["business", "tech"]
    assert len(dsd["train"]) + len(dsd["test"]) == 12  # test carved from train, validation is dev.tsv
    assert len(dsd["test"]) == 2
    assert 'the "new" chip,\tthey said, is 5" wide' in list(dsd["train"]["text"]) + list(dsd["test"]["text"])


def test_class_names_na_and_none_are_classes_not_missing(tmp_path):
    path = write_csv(tmp_path / "data.csv", rows(["tech"], 10) + [(t, "None") for t, _ in rows(["sport"], 10)])
    dsd = load_text_classification(path)
    assert dsd["train"].features["label"].names == ["None", "tech"]
    assert sum(len(d) for d in dsd.values()) == 20


def test_saved_datasetdict_folder_keeps_its_classlabel(tmp_path):
    from datasets import Dataset, DatasetDict, Features

    feats = Features({"text": Value("string"), "label": ClassLabel(names=["tech", "business"])})  # unsorted on purpose
    make = lambda data: Dataset.from_dict({"text": [t for t, _ in data], "label": [0 if l == "tech" else 1 for _, l in data]}, features=feats)  # noqa: E731
    DatasetDict(train=make(rows(["tech", "business"], 10)), validation=make(rows(["business", "tech"], 2))).save_to_disk(
        str(tmp_path / "saved")
    )
    dsd = load_text_classification(str(tmp_path / "saved"))
    assert dsd["train"].features["label"].names == ["tech", "business"]  # names and order kept as saved
    assert decoded(dsd["validation"]) == ["business"] * 2 + ["tech"] * 2
    assert len(dsd["test"]) == 2


def test_validation_class_missing_from_train_is_named(tmp_path):
    write_csv(tmp_path / "train.csv", rows(["tech", "business"], 5))
    write_csv(tmp_path / "test.csv", rows(["tech", "sport"], 2))
    with pytest.raises(UserInputError, match=r"split 'test' \(file .*test\.csv\) holds 1 class\(es\) that the train "
                                             r"split .* lacks: \['sport'\]; expected only the train classes "
                                             r"\['business', 'tech'\]"):
        load_text_classification(str(tmp_path))


def test_single_class_train_is_refused(tmp_path):
    path = write_csv(tmp_path / "train.csv", rows(["tech"], 10))
    with pytest.raises(UserInputError, match=r"train split \(file .*train\.csv\) holds only one class, 'tech'; "
                                             "expected at least 2 classes"):
        load_text_classification(str(tmp_path))
    assert path


# --- integer labels -----------------------------------------------------------------------------------------


def test_integer_labels_stay_integers_and_are_checked(tmp_path):
    data = [(t, {"business": 0, "tech": 1, "sport": 2}[l]) for t, l in rows(["sport", "tech", "business"], 10)]
    path = write_csv(tmp_path / "train.csv", data)
    dsd = load_text_classification(path)
    assert dsd["train"].features["label"] == Value("int64")
    assert label_names(dsd) is None and num_labels(dsd) == 3
    assert sorted(set(dsd["test"]["label"])) == [0, 1, 2]

    write_csv(tmp_path / "test.csv", [("a story", 1), ("another story", 3)])
    with pytest.raises(UserInputError, match=r"split 'test' \(file .*test\.csv\) holds 1 class id\(s\) that the "
                                             r"train split .* lacks: \[3\]"):
        load_text_classification(str(tmp_path))
    write_csv(tmp_path / "test.csv", [("a story", 1), ("another story", -1)])
    with pytest.raises(UserInputError, match=r"split 'test' .* holds negative ids \[-1\]"):
        load_text_classification(str(tmp_path))


def test_integer_labels_with_empty_cells_read_as_floats_are_ids(tmp_path, caplog):
    data = [(t, i % 2) for i, (t, _) in enumerate(rows(["tech", "business"], 10))] + [("no label here", "")]
    path = write_csv(tmp_path / "data.csv", data)
    with caplog.at_level(logging.WARNING, logger="hfcompress.data"):
        dsd = load_text_classification(path)
    assert dsd["train"].features["label"] == Value("int64") and num_labels(dsd) == 2
    assert sum(len(d) for d in dsd.values()) == 20
    assert "Dropped 1 of 21 rows of split 'train'" in caplog.text


def test_float_labels_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "scores.jsonl", [{"text": t, "label": 0.5 + i} for i, (t, _) in enumerate(rows(["tech"], 6))])
    with pytest.raises(UserInputError, match=r"label column 'label' of split 'train' \(file .*scores\.jsonl\) holds "
                                             r"fractional numbers \(e.g. 0.5\); .*regression is not supported"):
        load_text_classification(path)


# --- incomplete rows ----------------------------------------------------------------------------------------


def test_empty_texts_and_missing_labels_are_dropped_with_one_warning_per_split(tmp_path, caplog):
    train = rows(["tech", "business"], 10) + [("", "tech"), ("   ", "business"), ("a story without label", "")]
    write_csv(tmp_path / "train.csv", train)
    valid = [{"text": t, "label": l} for t, l in rows(["business", "tech"], 2)]
    valid += [{"text": None, "label": "tech"}, {"label": "business"}, {"text": "no label key"}]
    write_jsonl(tmp_path / "valid.jsonl", valid)
    with caplog.at_level(logging.WARNING, logger="hfcompress.data"):
        dsd = load_text_classification(str(tmp_path))
    drops = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Dropped")]
    assert len(drops) == 2
    assert drops[0].startswith("Dropped 3 of 23 rows of split 'train' (file ") and "train.csv" in drops[0]
    assert "2 with an empty or missing text in column 'text', 1 with a missing label" in drops[0]
    assert drops[1].startswith("Dropped 3 of 7 rows of split 'validation' (file ") and "valid.jsonl" in drops[1]
    assert len(dsd["validation"]) == 4 and len(dsd["train"]) + len(dsd["test"]) == 20
    assert all(t.strip() for d in dsd.values() for t in d["text"])


def test_split_with_no_usable_rows_is_refused(tmp_path):
    write_csv(tmp_path / "train.csv", rows(["tech", "business"], 5))
    write_csv(tmp_path / "test.csv", [("", "tech"), ("text", "")])
    with pytest.raises(UserInputError, match=r"split 'test' \(file .*test\.csv\) has no usable rows: all 2"):
        load_text_classification(str(tmp_path))


# --- bad files and paths ------------------------------------------------------------------------------------


def test_empty_and_header_only_csv_name_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    open(tmp_path / "empty" / "train.csv", "w").close()
    with pytest.raises(UserInputError, match=r"data file .*empty[/\\]train\.csv is empty \(0 bytes\)"):
        load_text_classification(str(tmp_path / "empty"))
    header_only = write_csv(tmp_path / "header.csv", [])
    with pytest.raises(UserInputError, match=r"data file .*header\.csv holds only a header line and no rows"):
        load_text_classification(header_only)
    empty_jsonl = tmp_path / "e.jsonl"
    empty_jsonl.write_text("\n")
    with pytest.raises(UserInputError, match=r"data file .*e\.jsonl is empty"):
        load_text_classification(str(empty_jsonl))


def test_nonexistent_paths_and_unknown_hub_ids(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    # conftest sets HF_HUB_OFFLINE after datasets was imported: force offline mode, or the Hub attempt retries ~25 s
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(UserInputError, match=r"dataset '.*nope\.csv': no such file or folder"):
        load_text_classification(missing)
    with pytest.raises(UserInputError, match=r"dataset 'news\.csv': no such file or folder"):
        load_text_classification("news.csv")  # has an extension: not sent to the Hub
    # A Hub-shaped id: tried on the Hub, which fails offline; the message says both.
    with pytest.raises(UserInputError, match=r"dataset 'nosuchuser/nosuchdata': not a file or folder here, and "
                                             r"loading it as a Hub dataset id failed: .*OfflineModeIsEnabled"):
        load_text_classification("nosuchuser/nosuchdata")


def test_folder_without_data_files_lists_its_content(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    write_csv(tmp_path / "news.csv", rows(["tech", "business"], 2))
    with pytest.raises(UserInputError, match=r"holds no recognisable data files: expected files named train.*"
                                             r"the folder holds \['news\.csv', 'notes\.txt'\]"):
        load_text_classification(str(tmp_path))
    write_csv(tmp_path / "test.csv", rows(["tech", "business"], 2))
    with pytest.raises(UserInputError, match=r"has no train file \(found test: file .*test\.csv\)"):
        load_text_classification(str(tmp_path))


def test_wrong_columns_are_named_with_the_columns_found(tmp_path):
    path = write_csv(tmp_path / "data.csv", rows(["tech", "business"], 10), header=("body", "category"))
    with pytest.raises(UserInputError, match=r"text column 'text' not found in split 'train'; columns are "
                                             r"\['body', 'category'\] \(in file .*data\.csv\)"):
        load_text_classification(path)
    with pytest.raises(UserInputError, match=r"label column 'label' not found .* \['body', 'category'\]"):
        load_text_classification(path, text_column="body")
    dsd = load_text_classification(path, text_column="body", label_column="category")
    assert dsd["train"].features["category"].names == ["business", "tech"]


def test_text_column_must_hold_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": i, "label": l} for i, (_, l) in enumerate(rows(["tech", "business"], 5))])
    with pytest.raises(UserInputError, match=r"text column 'text' of split 'train' \(file .*d\.jsonl\) holds int64 "
                                             r"values; expected strings"):
        load_text_classification(path)


def test_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = rows(["tech", "business"], 10)
    path = str(tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": [t for t, _ in data], "label": pa.array([l for _, l in data], pa.large_string())}), path)
    dsd = load_text_classification(path)
    assert dsd["train"].features["label"].names == ["business", "tech"]


# --- long texts ---------------------------------------------------------------------------------------------


@pytest.fixture
def bert_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    words = sorted({w for texts in NEWS.values() for t in texts for w in t.split()} | {"opening", "closing", "story"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + [str(i) for i in range(10)]
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast.from_pretrained(str(tmp_path / "tok"))


def test_long_article_is_truncated_on_the_requested_side(tmp_path, bert_tokenizer):
    body = " ".join(NEWS["business"] * 22)  # 4 sentences of ~7 words, 22 times: ~600 words
    article = f"opening {body}, with \"quotes\"\nand a line break closing"
    assert 580 <= len(article.split()) <= 640
    data = [(article, "business"), ("the phone maker released a new chip", "tech")] * 10
    dsd = load_text_classification(write_csv(tmp_path / "news.csv", data))
    assert article in dsd["train"]["text"]  # the CSV round trip kept the article whole
    tok = bert_tokenizer
    opening, closing = tok.convert_tokens_to_ids(["opening", "closing"])
    right = tokenize(dsd["train"], tok, max_length=32)
    left = tokenize(dsd["train"], tok, max_length=32, truncation_side="left")
    i = dsd["train"]["text"].index(article)
    r, l = right[i]["input_ids"], left[i]["input_ids"]
    assert len(r) == len(l) == 32
    assert r[0] == l[0] == tok.cls_token_id and r[-1] == l[-1] == tok.sep_token_id
    assert r[1] == opening and closing not in r  # right keeps the beginning
    assert l[-2] == closing and opening not in l  # left keeps the end
    assert tok.truncation_side == "right"  # the caller's tokenizer is left as it was
    tok.truncation_side = "left"
    tokenize(dsd["train"], tok, max_length=32, truncation_side="right")
    assert tok.truncation_side == "left"
    with pytest.raises(UserInputError, match="truncation_side must be 'right' or 'left', got 'middle'"):
        tokenize(dsd["train"], tok, truncation_side="middle")
    assert np.mean([len(x) for x in right["input_ids"]]) < 32  # short texts are not padded


# --- more layouts -------------------------------------------------------------------------------------------


def test_hub_style_layout_with_shards_in_data_subfolder(tmp_path):
    (tmp_path / "data").mkdir()
    data = rows(["tech", "business"], 10)
    write_csv(tmp_path / "data" / "train-00000-of-00002.csv", data[:10])
    write_csv(tmp_path / "data" / "train-00001-of-00002.csv", data[10:])
    (tmp_path / "val").mkdir()  # a split-named subfolder: all its data files are that split (not under data/: ignored)
    (tmp_path / "README.md").write_text("my data")
    dsd = load_text_classification(str(tmp_path))
    assert len(dsd["train"]) + len(dsd["validation"]) + len(dsd["test"]) == 20  # both shards, splits carved
    assert dsd["train"].features["label"].names == ["business", "tech"]

    other = tmp_path / "other"
    (other / "val").mkdir(parents=True)
    write_csv(other / "train.csv", data)
    write_jsonl(other / "val" / "part0.jsonl", [{"text": "the startup built a chip", "label": "tech"}])
    dsd = load_text_classification(str(other))
    assert decoded(dsd["validation"]) == ["tech"] and len(dsd["train"]) + len(dsd["test"]) == 20


def test_two_files_for_one_split_are_refused(tmp_path):
    write_csv(tmp_path / "train.csv", rows(["tech", "business"], 5))
    write_csv(tmp_path / "dev.csv", rows(["tech", "business"], 1))
    write_csv(tmp_path / "validation.csv", rows(["tech", "business"], 1))
    with pytest.raises(UserInputError, match=r"several files claim the validation split: \['dev\.csv', 'validation\.csv'\]"):
        load_text_classification(str(tmp_path))


def test_true_false_labels_are_class_names(tmp_path):
    data = [(t, l == "tech") for t, l in rows(["tech", "business"], 10)]
    dsd = load_text_classification(write_csv(tmp_path / "spam.csv", data))  # pandas reads True/False as booleans
    assert dsd["train"].features["label"].names == ["False", "True"]
    assert sum(len(d) for d in dsd.values()) == 20
