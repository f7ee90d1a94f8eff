"""Vocabulary trimming and int8 embeddings (hfcompress.vocab).

The key property: a text whose tokens were all kept gets exactly the same logits from the trimmed tokenizer + model
as from the original pair; a text with unseen words falls back to smaller pieces, not to [UNK]; and the trimmed
checkpoint is a plain transformers checkpoint (AutoModel/AutoTokenizer reload it without hfcompress).
"""

from __future__ import annotations

import csv
import dataclasses
import os

import pytest
import torch
from conftest import LABELS, make_tokenizer, tiny_bert, tiny_mpnet, write_csv
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
    PreTrainedTokenizerFast,
)

from hfcompress.errors import UserInputError
from hfcompress.vocab import (
    Int8Embedding,
    UnsupportedTokenizerError,
    VocabTrimConfig,
    dequantize_embeddings,
    quantize_embeddings_int8,
    restore_int8_embeddings,
    trim_embeddings,
    trim_vocabulary,
    vocab_coverage,
)

TRAIN = [
    "the movie was good", "a very dull plot", "not a great movie", "the plot is bad", "very very good",
    "a good movie, not dull!", "the great plot", "bad bad movie", "moving and good", "the movies were dull",
]
HELD_OUT = ["a superb movie", "the plot was awful", "fine, poor acting", "good movie"]


def read_csv_texts(path) -> tuple[list[str], list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def wordpiece_tokenizer() -> BertTokenizer:
    """A small real BertTokenizer: specials, a-z, ##a-##z, a few words and word pieces."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", "!", "."] + letters + ["##" + c for c in letters]
    pieces += ["good", "great", "bad", "dull", "movie", "plot", "the", "very", "not", "was", "is", "were", "and",
               "fine", "superb", "awful", "poor", "acting", "mov", "##ie", "##ies", "##ing", "##s", "##ly", "super"]
    return BertTokenizer(vocab={p: i for i, p in enumerate(pieces)})


@torch.no_grad()
def logits(model, tok, texts):
    model.eval()
    return model(**tok(texts, padding=True, return_tensors="pt")).logits


def mapped(tok, new_tok, text):
    """Original ids of `text` renamed to the trimmed tokenizer's ids (via the token strings)."""
    return new_tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(tok(text)["input_ids"]))


# ---------------------------------------------------------------------------------------------------------------
# configuration and input errors


def test_config_validation_and_help():
    for f in dataclasses.fields(VocabTrimConfig):
        assert f.metadata["help"] and "%" not in f.metadata["help"], f.name
    assert VocabTrimConfig().min_count == 1 and VocabTrimConfig().keep_characters is True
    for kwargs, needle in [({"min_count": 0}, "min_count"), ({"min_count": 1.5}, "min_count"),
                           ({"max_vocab_size": 0}, "max_vocab_size"), ({"keep_tokens": "movie"}, "keep_tokens"),
                           ({"keep_tokens": ["ok", ""]}, "keep_tokens"), ({"keep_characters": "yes"}, "keep_characters")]:
        with pytest.raises(UserInputError, match=needle):
            VocabTrimConfig(**kwargs)
    assert VocabTrimConfig(min_count="2", max_vocab_size=10.0).to_dict()["min_count"] == 2


def test_bad_inputs_name_the_problem():
    tok, model = make_tokenizer(), tiny_bert()
    with pytest.raises(UserInputError, match="empty"):
        trim_vocabulary(model, tok, [])
    with pytest.raises(UserInputError, match=r"texts\[1\]"):
        trim_vocabulary(model, tok, ["good movie", None])
    with pytest.raises(UserInputError, match="one string"):
        trim_vocabulary(model, tok, "good movie")
    with pytest.raises(UserInputError, match="'splendid'"):
        trim_vocabulary(model, tok, TRAIN, VocabTrimConfig(keep_tokens=["movie", "splendid"]))
    with pytest.raises(UserInputError, match="at least 4"):  # 4 special tokens must stay
        trim_vocabulary(model, tok, TRAIN, VocabTrimConfig(max_vocab_size=3))
    with pytest.raises(UserInputError, match="no tokens"):
        trim_vocabulary(model, tok, ["", " "])
    with pytest.raises(UnsupportedTokenizerError, match="not a fast"):
        trim_vocabulary(model, object(), TRAIN)
    assert model.get_input_embeddings().num_embeddings == 64  # nothing changed by the failed calls


# ---------------------------------------------------------------------------------------------------------------
# word-level tokenizer (conftest) + BERT: exact logits, plain reload


def test_wordlevel_bert_exact_logits_and_plain_reload(tmp_path):
    texts, _ = read_csv_texts(write_csv(tmp_path / "train.csv", [(t, "pos") for t in TRAIN]))
    tok, model = make_tokenizer(), tiny_bert()
    used = sorted({w for t in texts for w in tok.tokenize(t)} - {"[UNK]"})
    before = logits(model, tok, texts)
    held_before = logits(model, tok, HELD_OUT)

    model, new_tok, report = trim_vocabulary(model, tok, texts, eval_texts=HELD_OUT, source="train.csv")

    assert isinstance(new_tok, PreTrainedTokenizerFast)
    assert len(new_tok) == report.kept_vocab_size == 4 + len(used)  # special tokens and the words used
    assert report.kept_special == 4 and report.kept_fallback == 0  # a word-level vocabulary has no alphabet
    assert report.original_vocab_size == 64 and model.config.vocab_size == len(new_tok)
    assert model.get_input_embeddings().weight.shape == (len(new_tok), 32)
    assert report.embedding_parameters_before == 64 * 32
    assert report.embedding_parameters_after == len(new_tok) * 32
    assert report.parameters_before - report.parameters_after == (64 - len(new_tok)) * 32
    assert torch.equal(logits(model, new_tok, texts), before)
    # held-out: "superb", "awful", "fine", "poor" were never seen -> [UNK] (word level cannot fall back); "was",
    # "," and "acting" were [UNK] already (13 tokens in all)
    assert new_tok.tokenize("a superb movie") == ["a", "[UNK]", "movie"]
    cov = report.coverage
    assert cov["tokens_original"] == 13 and cov["tokens_covered"] == 9 and cov["coverage"] == pytest.approx(9 / 13)
    assert cov["unk_rate_original"] == pytest.approx(3 / 13) and cov["unk_rate_trimmed"] == pytest.approx(7 / 13)
    assert cov["texts_identical"] == pytest.approx(1 / 4)
    assert torch.equal(logits(model, new_tok, HELD_OUT)[3], held_before[3])  # "good movie": all tokens kept

    out = tmp_path / "trimmed"
    model.save_pretrained(out)
    new_tok.save_pretrained(out)
    again = AutoModelForSequenceClassification.from_pretrained(out)
    again_tok = AutoTokenizer.from_pretrained(out)
    assert torch.equal(logits(again, again_tok, texts), before)
    assert again.config.hfcompress_vocab_trim == {"original_vocab_size": 64, "kept": len(new_tok),
                                                  "source": "train.csv", "config": VocabTrimConfig().to_dict()}
    assert again_tok.pad_token_id == 0 and again_tok.cls_token_id == 2 and again_tok.sep_token_id == 3


# ---------------------------------------------------------------------------------------------------------------
# WordPiece (a real BertTokenizer): exact logits, fallback to characters, user data through the product's loader


def test_wordpiece_fallback_and_exact_logits(tmp_path):
    from hfcompress.data import load_text_classification

    data = tmp_path / "data"
    data.mkdir()
    write_csv(data / "train.csv", [(t, LABELS[i % 2]) for i, t in enumerate(TRAIN * 2)])
    write_csv(data / "test.csv", [(t, LABELS[i % 2]) for i, t in enumerate(HELD_OUT)])
    ds = load_text_classification(str(data), "text", "label")
    texts, test_texts = list(ds["train"]["text"]), list(ds["test"]["text"])
    assert sorted(test_texts) == sorted(HELD_OUT)

    tok = wordpiece_tokenizer()
    model = tiny_bert(vocab=len(tok), seed=2)
    before = logits(model, tok, texts)
    assert tok.tokenize("the movies were dull moving") == ["the", "movie", "##s", "were", "dull", "mov", "##ing"]

    model, new_tok, report = trim_vocabulary(model, tok, texts, eval_texts=test_texts)

    assert type(new_tok) is BertTokenizer
    assert report.tokenizer_model == "WordPiece"
    assert report.kept_fallback == 26 * 2 + 3  # a-z, ##a-##z and the punctuation characters
    assert report.kept_vocab_size < len(tok)
    for gone in ("fine", "superb", "awful", "poor", "super", "##ly", "acting"):
        assert gone not in new_tok.get_vocab()
    assert torch.equal(logits(model, new_tok, texts), before)
    # unseen words fall back to characters instead of [UNK]
    assert new_tok.tokenize("a superb plot") == ["a", "s", "##u", "##p", "##e", "##r", "##b", "plot"]
    assert new_tok.decode(new_tok("a superb plot")["input_ids"], skip_special_tokens=True) == "a superb plot"
    cov = report.coverage
    assert cov["unk_rate_trimmed"] == 0.0 and 0.5 < cov["coverage"] < 1.0 and cov["length_ratio"] > 1.5
    # ids of a seen text are the original ids renamed
    assert new_tok("the movie was good")["input_ids"] == mapped(tok, new_tok, "the movie was good")
    assert new_tok.mask_token_id == 4 and new_tok.unk_token_id == 1

    out = tmp_path / "trimmed"
    model.save_pretrained(out)
    new_tok.save_pretrained(out)
    again_tok = AutoTokenizer.from_pretrained(out)
    assert type(again_tok) is BertTokenizer and again_tok.get_vocab() == new_tok.get_vocab()
    again = AutoModelForSequenceClassification.from_pretrained(out)
    assert torch.equal(logits(again, again_tok, texts), before)
    assert torch.equal(logits(again, again_tok, test_texts), logits(model, new_tok, test_texts))


def test_min_count_cap_and_keep_tokens():
    tok = wordpiece_tokenizer()
    base = VocabTrimConfig(keep_characters=False)
    _, t1, r1 = trim_vocabulary(tiny_bert(vocab=len(tok)), tok, TRAIN, base)
    _, t2, r2 = trim_vocabulary(tiny_bert(vocab=len(tok)), tok, TRAIN, dataclasses.replace(base, min_count=3))
    assert r2.kept_counted < r1.kept_counted
    assert "movie" in t2.get_vocab() and "was" in t1.get_vocab() and "was" not in t2.get_vocab()  # "was": once
    _, t3, r3 = trim_vocabulary(tiny_bert(vocab=len(tok)), tok, TRAIN,
                                dataclasses.replace(base, max_vocab_size=9, keep_tokens=["superb"]))
    assert len(t3) == 9 and r3.kept_special == 5 and r3.kept_requested == 1 and r3.kept_counted == 3
    assert "superb" in t3.get_vocab()
    assert {"the", "good", "movie"} <= set(t3.get_vocab())  # the three most frequent
    assert t3.tokenize("superb movie") == ["superb", "movie"]


# ---------------------------------------------------------------------------------------------------------------
# MPNet (hard-coded padding index 1) and a tied masked-LM head


def test_mpnet_exact_logits_and_reload(tmp_path):
    tok, model = make_tokenizer("<s>", "</s>"), tiny_mpnet()
    before = logits(model, tok, TRAIN)
    model, new_tok, _ = trim_vocabulary(model, tok, TRAIN)
    assert model.base_model.embeddings.padding_idx == 1 and new_tok.convert_ids_to_tokens(1) == "[UNK]"
    assert torch.equal(logits(model, new_tok, TRAIN), before)
    model.save_pretrained(tmp_path)
    new_tok.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert torch.equal(logits(again, AutoTokenizer.from_pretrained(tmp_path), TRAIN), before)
    # an id below MPNet's hard-coded padding index cannot be dropped: a reloaded model would disagree
    with pytest.raises(UnsupportedTokenizerError, match="padding index"):
        trim_embeddings(tiny_mpnet(), [1, 2, 3, 5])


def test_masked_lm_tied_head_gathers_rows(tmp_path):
    tok = wordpiece_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=True)
    model = BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    before = logits(model, tok, TRAIN)
    model, new_tok, _ = trim_vocabulary(model, tok, TRAIN)
    kept = [tok.convert_tokens_to_ids(t) for t, _ in sorted(new_tok.get_vocab().items(), key=lambda kv: kv[1])]
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.out_features == len(new_tok)
    assert torch.equal(logits(model, new_tok, TRAIN), before[..., kept])
    model.save_pretrained(tmp_path)
    again = BertForMaskedLM.from_pretrained(tmp_path)
    assert torch.equal(logits(again, new_tok, TRAIN), before[..., kept])


# ---------------------------------------------------------------------------------------------------------------
# BPE (byte level) and Unigram tokenizers


def _wrap(backend: Tokenizer, **specials) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def test_bytelevel_bpe(tmp_path):
    corpus = TRAIN + HELD_OUT + ["super duper superb awful awfully dull dullness"] * 3
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=330, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    backend.decoder = decoders.ByteLevel()
    tok = _wrap(backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                cls_token="<s>", sep_token="</s>")
    assert len(tok) > 300
    model = tiny_bert(vocab=len(tok), seed=4)
    before = logits(model, tok, TRAIN)

    model, new_tok, report = trim_vocabulary(model, tok, TRAIN, eval_texts=HELD_OUT)

    assert report.tokenizer_model == "BPE" and report.kept_fallback == 256  # the byte alphabet
    assert report.kept_vocab_size < len(tok)
    assert torch.equal(logits(model, new_tok, TRAIN), before)
    for text in TRAIN:
        assert new_tok(text)["input_ids"] == mapped(tok, new_tok, text)
    # unseen words: smaller pieces, never unknown, and the text decodes back exactly
    text = "superb awfully zebra"
    assert len(new_tok.tokenize(text)) > len(tok.tokenize(text))
    assert new_tok.decode(new_tok(text, add_special_tokens=False)["input_ids"]) == text
    assert report.coverage["unk_rate_trimmed"] == 0.0 and report.coverage["coverage"] < 1.0
    new_tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert [again(t)["input_ids"] for t in HELD_OUT] == [new_tok(t)["input_ids"] for t in HELD_OUT]


def test_unigram():
    corpus = TRAIN + HELD_OUT + ["super duper superb awful awfully dull dullness"] * 3
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<pad>", "<unk>", "<s>", "</s>"], unk_token="<unk>"))
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    tok = _wrap(backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    model = tiny_bert(vocab=len(tok), seed=5)
    before = logits(model, tok, TRAIN)

    model, new_tok, report = trim_vocabulary(model, tok, TRAIN, eval_texts=HELD_OUT)

    assert report.tokenizer_model == "Unigram" and report.kept_vocab_size < len(tok)
    assert torch.equal(logits(model, new_tok, TRAIN), before)
    assert new_tok.unk_token_id == 1 and new_tok("zzz")["input_ids"][0] == 2  # <s> first, ids rewritten
    words = "superb awfully"
    assert "<unk>" not in new_tok.tokenize(words) and len(new_tok.tokenize(words)) >= len(tok.tokenize(words))
    assert report.coverage["unk_rate_trimmed"] == report.coverage["unk_rate_original"]


def test_vocab_coverage_identity():
    tok = wordpiece_tokenizer()
    cov = vocab_coverage(tok, tok, HELD_OUT)
    assert cov["coverage"] == 1.0 and cov["texts_identical"] == 1.0 and cov["length_ratio"] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# int8 embeddings


def test_int8_embeddings_error_and_safetensors_round_trip(tmp_path):
    tok = make_tokenizer()
    model = tiny_bert(seed=6)
    texts = TRAIN
    before = logits(model, tok, texts)
    weight = model.get_input_embeddings().weight.detach().clone()

    report = quantize_embeddings_int8(model)

    emb = model.get_input_embeddings()
    assert isinstance(emb, Int8Embedding) and emb.weight_int8.dtype == torch.int8
    assert report["module"] == "bert.embeddings.word_embeddings" and report["shape"] == [64, 32]
    assert report["bytes_before"] == 64 * 32 * 4 and report["bytes_after"] == 64 * 32 + 64 * 4
    err = (emb.dequantize() - weight).abs()
    assert report["max_abs_error"] == pytest.approx(float(err.max()))
    assert torch.all(err <= emb.scale[:, None] / 2 + 1e-7)  # half a step of each row's own scale
    assert 0 < report["max_rel_error"] <= 1 / 254 + 1e-6
    q_logits = logits(model, tok, texts)
    assert torch.allclose(q_logits, before, atol=1e-2) and not torch.equal(q_logits, before)

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    state = load_file(str(path))
    assert state["bert.embeddings.word_embeddings.weight_int8"].dtype == torch.int8
    assert "bert.embeddings.word_embeddings.weight" not in state
    skeleton = AutoModelForSequenceClassification.from_config(model.config)
    restore_int8_embeddings(skeleton, state)
    skeleton.load_state_dict(state)  # strict: every key matches
    assert torch.equal(logits(skeleton, tok, texts), q_logits)
    with pytest.raises(UserInputError, match="already int8"):
        quantize_embeddings_int8(skeleton)
    with pytest.raises(UserInputError, match="no int8 embedding"):
        restore_int8_embeddings(tiny_bert(), {"x": torch.zeros(1)})

    # through save_pretrained: the folder holds the int8 buffers; a loader restores them into the reloaded model
    model.save_pretrained(tmp_path / "hf")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")  # word embeddings missing here
    assert reloaded.config.hfcompress_int8_embeddings["module"] == "bert.embeddings.word_embeddings"
    restore_int8_embeddings(reloaded, load_file(str(tmp_path / "hf" / "model.safetensors")))
    assert torch.equal(logits(reloaded, tok, texts), q_logits)

    dequantize_embeddings(skeleton)
    assert isinstance(skeleton.get_input_embeddings(), torch.nn.Embedding)
    assert torch.equal(logits(skeleton, tok, texts), q_logits)


def test_int8_refuses_tied_lm_head():
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(UserInputError, match="ties"):
        quantize_embeddings_int8(BertForMaskedLM(cfg))


# ---------------------------------------------------------------------------------------------------------------
# the real MiniLM WordPiece tokenizer (small: a one-layer model on top of it)


@pytest.mark.slow
def test_real_minilm_tokenizer(tmp_path):
    from hfcompress import assets

    if not assets.is_installed("minilm-l6"):
        pytest.skip("offline asset minilm-l6 not installed (python -m hfcompress.assets install minilm-l6)")
    tok = AutoTokenizer.from_pretrained(assets.resolve_model_path("minilm-l6"))
    rows = [("An utterly charming, funny film -- one of the year's best.", "fresh"),
            ("The plot is a mess and the acting is wooden.", "rotten"),
            ("Stunning visuals can't save this tedious, overlong sequel.", "rotten"),
            ("A quietly moving portrait of grief and friendship.", "fresh")]
    texts, _ = read_csv_texts(write_csv(tmp_path / "reviews.csv", rows))
    model = tiny_bert(num_layers=1, hidden=16, heads=2, vocab=len(tok), seed=7)
    before = logits(model, tok, texts)
    held_out = ["A mesmerizing, idiosyncratic masterpiece.", "the plot is a mess"]

    model, new_tok, report = trim_vocabulary(model, tok, texts, eval_texts=held_out)

    assert type(new_tok) is type(tok) and report.original_vocab_size == 30522
    assert 1500 < report.kept_vocab_size < 2500 and report.kept_special == 5
    assert report.embedding_parameters_after == report.kept_vocab_size * 16
    assert torch.equal(logits(model, new_tok, texts), before)
    assert new_tok.tokenize("the plot is a mess") == tok.tokenize("the plot is a mess")
    pieces = new_tok.tokenize("mesmerizing")
    assert "[UNK]" not in pieces and "".join(p.removeprefix("##") for p in pieces) == "mesmerizing"
    assert report.coverage["unk_rate_trimmed"] == 0.0 and report.coverage["texts_identical"] == 0.5
    assert (new_tok.pad_token_id, new_tok.unk_token_id, new_tok.cls_token_id, new_tok.sep_token_id) == (0, 1, 2, 3)
    new_tok.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert [again(t)["input_ids"] for t in texts + held_out] == [new_tok(t)["input_ids"] for t in texts + held_out]
    assert os.path.getsize(tmp_path / "tok" / "tokenizer.json") < 0.2 * os.path.getsize(
        os.path.join(assets.resolve_model_path("minilm-l6"), "tokenizer.json"))
