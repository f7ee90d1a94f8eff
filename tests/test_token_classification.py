"""Token classification: tag files read and checked, sub-token alignment, the entity-level metric against known
cases, per-token KD normalised over the whole accumulated batch, and the `hfcompress distill` / `prune` commands end
to end on a CoNLL file and a JSON Lines file, with `pipeline("token-classification")` on every saved format."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import GradCapture, check_publishable_card
from tagging_assets import (
    TAGS,
    make_sentences,
    make_wordpiece_tokenizer,
    save_tagging_assets,
    tiny_tagger,
    write_conll,
    write_jsonl,
)
from test_grad_accum import assert_same_grads

from hfcompress.errors import UserInputError
from hfcompress.tagging import align_labels, load_token_classification, looks_tagged, tokenize_tagged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "mary jones lives in london"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tagging_assets(tmp_path_factory.mktemp("tagging"))


# ---- the metric ---------------------------------------------------------------------------------------------------

def test_entity_f1_module_matches_seqeval_on_known_cases():
    from hfcompress.metric_modules.entity_f1.entity_f1 import get_entities
    from hfcompress.metrics import entity_metrics, load_metric

    # seqeval's README example (and the Hub module's): MISC is one word off, PER is right.
    refs = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    preds = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    out = load_metric("entity_f1").compute(predictions=preds, references=refs)
    assert out["overall_precision"] == out["overall_recall"] == out["overall_f1"] == pytest.approx(0.5)
    assert out["overall_accuracy"] == pytest.approx(0.8)
    assert out["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}
    assert out["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 1}
    # chunking as conlleval reads it: IOB1 (I- starts a chunk after O), a change of type ends one, B after I too
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["I-PER", "I-PER", "O", "I-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["B-PER", "I-LOC", "B-LOC", "B-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1), ("LOC", 2, 2),
                                                                  ("LOC", 3, 3)]
    assert get_entities(["S-PER", "B-LOC", "E-LOC", "O"]) == [("PER", 0, 0), ("LOC", 1, 2)]
    # hand count: refs 3 entities (PER, LOC, ORG); preds 2 of them right plus one spurious PER -> P 2/3, R 2/3
    flat = entity_metrics([["B-PER", "O", "B-LOC", "B-PER", "O"]], [["B-PER", "O", "B-LOC", "O", "B-ORG"]])
    assert flat["precision"] == pytest.approx(2 / 3) and flat["recall"] == pytest.approx(2 / 3)
    assert flat["PER_precision"] == pytest.approx(0.5) and flat["PER_recall"] == 1.0 and flat["PER_number"] == 1
    assert flat["ORG_recall"] == 0.0 and flat["ORG_f1"] == 0.0 and flat["LOC_f1"] == 1.0
    assert entity_metrics([["O", "O"]], [["O", "O"]])["f1"] == 0.0  # no entities anywhere: 0, not NaN


# ---- data ---------------------------------------------------------------------------------------------------------

def test_conll_jsonl_and_saved_data_read_alike(tmp_path):
    sentences = make_sentences(30, 4)
    conll = load_token_classification(write_conll(tmp_path / "a.conll", sentences))
    jsonl = load_token_classification(write_jsonl(tmp_path / "a.jsonl", sentences))
    for ds in (conll, jsonl):
        assert {s: len(d) for s, d in ds.items()} == {"train": 24, "validation": 3, "test": 3}
        assert ds["train"].features["tags"].feature.names == TAGS  # O first, then by type, B before I
    assert conll["train"][0] == jsonl["train"][0] and "-DOCSTART-" not in sum(conll["train"]["tokens"], [])
    # a saved dataset whose tags are ClassLabel ids in another order, under other column names
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

    names = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    feats = Features({"words": Sequence(Value("string")), "ner": Sequence(ClassLabel(names=names))})
    rows = {"words": [[w for w, _ in s] for s in sentences], "ner": [[names.index(t) for _, t in s] for s in sentences]}
    DatasetDict(train=Dataset.from_dict(rows, features=feats)).save_to_disk(str(tmp_path / "saved"))
    assert looks_tagged(str(tmp_path / "saved"), "words", "ner") and not looks_tagged(str(tmp_path / "saved"))
    saved = load_token_classification(str(tmp_path / "saved"), "words", "ner")
    assert saved["train"].features["tags"].feature.names == TAGS and saved["train"][0] == conll["train"][0]
    # a folder of split files (dev = validation)
    folder = tmp_path / "folder"
    folder.mkdir()
    write_conll(folder / "train.conll", sentences[:20])
    write_conll(folder / "dev.conll", sentences[20:25])
    write_jsonl(folder / "test.jsonl", sentences[25:])
    split = load_token_classification(str(folder))
    assert {s: len(d) for s, d in split.items()} == {"train": 20, "validation": 5, "test": 5}


def test_bad_tag_files_are_one_clear_error(tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("mary\tB-PER\njones\tPERSON\n\n")
    with pytest.raises(UserInputError, match=r"bad.conll, line 2: tag 'PERSON'.*BIO"):
        load_token_classification(str(bad))
    folder = tmp_path / "f"
    folder.mkdir()
    write_conll(folder / "train.conll", [[("mary", "B-PER")], [("paris", "B-LOC")]] * 5)
    write_conll(folder / "test.conll", [[("acme", "B-ORG")]])
    write_conll(folder / "dev.conll", [[("mary", "B-PER")]])
    with pytest.raises(UserInputError, match=r"test.conll: tag 'B-ORG' does not occur in the train split"):
        load_token_classification(str(folder))
    ragged = tmp_path / "r.jsonl"
    ragged.write_text(json.dumps({"tokens": ["a", "b"], "tags": ["O"]}) + "\n")
    with pytest.raises(UserInputError, match="row 1: 'tokens' and 'tags' must be lists of the same length"):
        load_token_classification(str(ragged))


def test_first_subtoken_labelled_rest_ignored_or_all(tmp_path, caplog):
    # "london" is two sub-tokens (lon ##don): its tag on the first, -100 on the second (or I-LOC with all)
    B_LOC, I_LOC = TAGS.index("B-LOC"), TAGS.index("I-LOC")
    assert align_labels([None, 0, 1, 1, None], [5, B_LOC]) == [-100, 5, B_LOC, -100, -100]
    inside = [0, 2, 2, 4, 4, 6, 6]
    assert align_labels([None, 0, 1, 1, None], [5, B_LOC], True, inside) == [-100, 5, B_LOC, I_LOC, -100]
    ds = load_token_classification(write_conll(tmp_path / "a.conll", [[("mary", "B-PER"), ("london", "B-LOC")]] * 10))
    names = ds["train"].features["tags"].feature.names
    assert names == ["O", "B-LOC", "B-PER"]
    out = tokenize_tagged(ds, make_wordpiece_tokenizer(), 16)
    assert out["train"][0]["labels"] == [-100, 2, 1, -100, -100]  # [CLS] mary lon ##don [SEP]
    # a sentence longer than max_length is cut, counted in one warning per split (not refused)
    with caplog.at_level("WARNING"):
        tokenize_tagged(ds, make_wordpiece_tokenizer(), 3)
    assert any("8 of 8 sentences are longer than --max_length 3" in r.message for r in caplog.records)


# ---- the loss -----------------------------------------------------------------------------------------------------

def _tagged_rows(n=64):
    from datasets import DatasetDict

    from hfcompress.tagging import tag_order

    sentences = make_sentences(n, 2)
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    label = ClassLabel(names=tag_order(TAGS))
    ds = Dataset.from_dict({"tokens": [[w for w, _ in s] for s in sentences],
                            "tags": [[TAGS.index(t) for _, t in s] for s in sentences]},
                           features=Features({"tokens": Sequence(Value("string")), "tags": Sequence(label)}))
    return tokenize_tagged(DatasetDict(train=ds), make_wordpiece_tokenizer(), 32)["train"].remove_columns(
        ["tokens", "tags"])


def _token_kd_grads(bs, ga, tmp_path):
    from hfcompress import DistillationArguments, DistillationTrainer, TokenDistillationCollator

    student, teacher = tiny_tagger(num_layers=2, hidden=32, seed=0), tiny_tagger(num_layers=4, hidden=48, seed=1)
    args = DistillationArguments(
        output_dir=str(tmp_path / f"t-{bs}-{ga}"), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        max_steps=1, max_grad_norm=0.0, report_to="none", save_strategy="no", logging_steps=1, seed=7,
        temperature=2.0, alpha=0.7, hidden_weight=1.0, layer_map="1:2,2:4", relation_weight=1.0, use_cpu=True,
    )
    trainer = DistillationTrainer(model=student, args=args, teacher_model=teacher, train_dataset=_tagged_rows(),
                                  data_collator=TokenDistillationCollator(make_wordpiece_tokenizer()))
    cap = GradCapture(trainer.distillation_loss)
    trainer.add_callback(cap)
    trainer.train()
    return cap


def test_per_token_kd_4x8_accumulated_equals_1x32(tmp_path):
    one, acc = _token_kd_grads(32, 1, tmp_path), _token_kd_grads(8, 4, tmp_path)
    assert any(n.startswith("kd.projections") for n in one.grads)
    assert_same_grads(acc.grads, one.grads)
    assert acc.losses[0] == pytest.approx(one.losses[0], rel=1e-4)
    assert {"loss_kd", "loss_ce", "loss_hidden", "loss_relation"} <= set(one.logs[0])


def test_cached_per_token_teacher_logits_give_the_online_loss(tmp_path):
    from hfcompress import TokenDistillationCollator
    from hfcompress.distill import DistillationConfig, DistillationLoss, TeacherOutputs
    from hfcompress.distill.cache import load_or_compute_teacher_cache
    from hfcompress.distill.loss import CACHED_LOGITS

    student, teacher = tiny_tagger(num_layers=2, seed=0).eval(), tiny_tagger(num_layers=4, seed=1).eval()
    collator = TokenDistillationCollator(make_wordpiece_tokenizer())
    rows = _tagged_rows(24)
    cached, meta = load_or_compute_teacher_cache(str(tmp_path / "cache"), "teacher", rows, lambda: teacher,
                                                 lambda f: collator.tokenizer.pad(f, return_tensors="pt"),
                                                 batch_size=5, per_token=True)
    assert meta["per_token"] is True and len(cached) == 24
    written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp_path / "cache" / "data") for f in fs)
    assert abs(meta["estimate"]["total_bytes"] - written) <= 0.15 * written, (meta["estimate"], written)
    lengths = [sum(m) for m in rows["attention_mask"]]
    assert [len(x) for x in cached[CACHED_LOGITS]] == lengths  # one row of label scores per real token, unpadded
    again, _ = load_or_compute_teacher_cache(str(tmp_path / "cache"), "teacher", rows, lambda: 1 / 0,
                                             lambda f: None, per_token=True)  # reused: the teacher is not loaded
    assert again[CACHED_LOGITS] == cached[CACHED_LOGITS]
    kd = DistillationLoss(DistillationConfig(alpha=0.7, temperature=2.0), student.config, teacher)
    online_batch = collator([rows[i] for i in range(8, 16)])
    cached_batch = collator([cached[i] for i in range(8, 16)])
    assert cached_batch[CACHED_LOGITS].shape == (8, online_batch["input_ids"].shape[1], len(TAGS))
    labels = online_batch.pop("labels")
    assert torch.equal(cached_batch.pop("labels"), labels)
    with torch.no_grad():
        t_logits = teacher(**online_batch).logits
        s_out = student(**online_batch)
        m = labels.ne(-100)
        assert torch.allclose(cached_batch[CACHED_LOGITS][m], t_logits[m], atol=1e-5)
        online = kd(s_out, labels, teacher_outputs=TeacherOutputs(logits=t_logits))
        from_cache = kd(s_out, labels, teacher_outputs=TeacherOutputs(logits=cached_batch[CACHED_LOGITS]))
    assert float(from_cache) == pytest.approx(float(online), rel=1e-5)


def test_per_token_kd_counts_labelled_positions_only():
    from hfcompress.distill import DistillationConfig, DistillationLoss, TeacherOutputs

    student, teacher = tiny_tagger(num_layers=2, seed=0), tiny_tagger(num_layers=4, seed=1)
    kd = DistillationLoss(DistillationConfig(alpha=1.0, temperature=2.0), student.config, teacher)
    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = torch.randn(2, 6, len(TAGS), generator=g), torch.randn(2, 6, len(TAGS), generator=g)
    labels = torch.tensor([[-100, 1, -100, 0, -100, -100], [-100, 5, 6, -100, -100, -100]])
    out = type("Out", (), {"logits": s_logits})()
    loss = kd(out, labels, teacher_outputs=TeacherOutputs(logits=t_logits))
    changed = s_logits.clone()
    changed[labels.eq(-100)] += 100.0  # what the student says at unlabelled positions does not count
    assert kd(type("Out", (), {"logits": changed})(), labels, teacher_outputs=TeacherOutputs(logits=t_logits)) == (
        pytest.approx(float(loss)))
    m = labels.ne(-100)
    ref = torch.nn.functional.kl_div(torch.log_softmax(s_logits[m] / 2, -1), torch.log_softmax(t_logits[m] / 2, -1),
                                     reduction="sum", log_target=True) * 4 / m.sum()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


# ---- the commands end to end --------------------------------------------------------------------------------------

def _cli(args, tmp_path, timeout=300):
    env = dict(os.environ, HFCOMPRESS_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", "hfcompress", *args], env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    return res


COMMON = ["--max_steps", "4", "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "--max_length", "32",
          "--per_device_train_batch_size", "8", "--logging_steps", "1", "--dataloader_num_workers", "0",
          "--latency_rounds", "1", "--no_measure_memory"]


def _entities(model, tokenizer):
    from transformers import pipeline

    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple")
    return [(e["entity_group"], e["start"], e["end"]) for e in tagger(TEXT)]


def _says_per(model):
    """Make a PyTorch tagger predict B-PER on every token (a known output for the pipeline to reproduce)."""
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 0, 0, 0, 0, 5.0, 0]))
    return model


def test_distill_command_on_conll_and_pipeline_on_plain_onnx_int8_and_torch_int8(assets, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from hfcompress.loading import load_model
    from hfcompress.quantize import export_onnx, quantize_dynamic_int8, quantize_onnx, save_dynamic_int8

    teacher, conll, _ = assets
    out = tmp_path / "run"
    res = _cli(["distill", "--teacher_model", teacher, "--dataset", conll, "--output_dir", str(out),
                "--student_num_layers", "2", *COMMON], tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    s = json.load(open(out / "distill_summary.json"))
    assert s["data"]["pipeline_tag"] == "token-classification" and s["data"]["metric"] == "f1"
    assert s["data"]["entity_types"] == ["LOC", "ORG", "PER"]
    test = s["metrics"]["student"]["test"]
    assert {"test_f1", "test_precision", "test_recall", "test_PER_f1", "test_LOC_number"} <= set(test)
    assert "f1" in s["metrics"]["teacher"]["test"]
    assert s["models"]["student"]["source"].startswith("blocks [1, 3]")
    kd = s["methods"]["distillation"]
    assert kd["teacher_outputs"] == "cached" and kd["teacher_cache"]["per_token"] is True  # computed once, reused
    assert (out / "teacher_cache" / "teacher_cache.json").exists()
    model_dir = str(out / "model")
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    assert cfg["architectures"] == ["BertForTokenClassification"] and list(cfg["id2label"].values()) == TAGS

    assert type(load_model(model_dir)).__name__ == "BertForTokenClassification"  # not a sequence classifier
    # measured against the teacher (entity scores of both, from disk) and carded; the card's code runs
    assert s["comparison"]["model"]["metrics"]["f1"] == pytest.approx(test["test_f1"])
    card = check_publishable_card(model_dir, run_dir=tmp_path)
    assert card.data.pipeline_tag == "token-classification" and "AutoModelForTokenClassification" in card.text
    tok = AutoTokenizer.from_pretrained(model_dir)
    plain = _says_per(AutoModelForTokenClassification.from_pretrained(model_dir).eval())
    expected = _entities(plain, tok)
    assert [e[0] for e in expected] == ["PER"] * 6 and expected[0][1:] == (0, 4)
    # ONNX int8 through OnnxModelForTokenClassification, and torch dynamic int8, both reloaded by load_model
    export_onnx(plain, str(tmp_path / "onnx32"), tok)
    quantize_onnx(str(tmp_path / "onnx32"), str(tmp_path / "onnx8"))
    save_dynamic_int8(quantize_dynamic_int8(plain), str(tmp_path / "int8"), tok)
    for folder, cls in (("onnx8", "OnnxModelForTokenClassification"), ("int8", "BertForTokenClassification")):
        model = load_model(str(tmp_path / folder))
        assert type(model).__name__ == cls
        assert _entities(model, AutoTokenizer.from_pretrained(str(tmp_path / folder))) == expected


def test_prune_structured_command_on_jsonl_reloads_with_remote_code(assets, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    teacher, _, jsonl = assets
    out = tmp_path / "pruned"
    res = _cli(["prune", "--teacher_model", teacher, "--dataset", jsonl, "--output_dir", str(out),
                "--granularity", "structured", "--target_sparsity", "0.5", "--scope", "global", *COMMON], tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    s = json.load(open(out / "prune_summary.json"))
    p = s["methods"]["pruning"]
    assert p["heads_after"] == p["heads_before"] // 2 and s["data"]["pipeline_tag"] == "token-classification"
    model_dir = str(out / "model")
    check_publishable_card(model_dir, run_dir=tmp_path)  # structured format: remote code, the token pipeline
    model = AutoModelForTokenClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    assert type(model).__name__.endswith("ForTokenClassification")
    assert model.num_parameters() == s["models"]["student"]["parameters"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert [e[0] for e in _entities(_says_per(model), tok)] == ["PER"] * 6


def test_sequence_classification_student_with_token_teacher_is_refused(assets, tmp_path):
    """Checked from the configs alone, before the data is read or any model is loaded."""
    from conftest import tiny_bert

    from hfcompress.run.arguments import DataArguments, ModelArguments
    from hfcompress.run.skeleton import Run, task_for
    from hfcompress.run.token import TokenClassification

    teacher, conll, _ = assets
    seq = tmp_path / "seq"
    tiny_bert().save_pretrained(seq)
    model_args, data_args = ModelArguments(teacher_model=teacher, student_model=str(seq)), DataArguments(dataset=conll)
    adapter = task_for(model_args, data_args, None)
    assert isinstance(adapter, TokenClassification)
    with pytest.raises(UserInputError, match="is a sequence classifier .* token-classification student is needed"):
        adapter.check_inputs(Run(model_args, data_args, None))
    # and a sequence-classification teacher on token-tagged data
    with pytest.raises(UserInputError, match="is a sequence classifier .* but the data is token-tagged"):
        adapter.check_inputs(Run(ModelArguments(teacher_model=str(seq)), data_args, None))


def test_headless_tagger_teacher_follows_length_grouping_and_its_head_rate(assets, tmp_path):
    """A headless encoder as teacher: its fine-tune takes the run's ``--train_sampling_strategy group_by_length`` and
    ``--teacher_head_learning_rate``, and the student trains with the same length-grouped sampler."""
    teacher, conll, _ = assets
    headless = tmp_path / "headless"
    tiny_tagger().base_model.save_pretrained(headless)
    make_wordpiece_tokenizer().save_pretrained(headless)
    out = tmp_path / "run"
    res = _cli(["distill", "--teacher_model", str(headless), "--dataset", conll, "--output_dir", str(out),
                "--student_num_layers", "2", "--teacher_finetune_epochs", "1", "--teacher_head_learning_rate", "1e-2",
                "--train_sampling_strategy", "group_by_length", *COMMON], tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    (summary,) = [os.path.join(d, "finetune_summary.json") for d, _, files in os.walk(tmp_path / "home" / "teachers")
                  if "finetune_summary.json" in files]
    cfg = json.load(open(summary))["config"]
    assert cfg["group_by_length"] is True and cfg["head_learning_rate"] == 1e-2
    assert json.load(open(out / "distill_summary.json"))["data"]["pipeline_tag"] == "token-classification"
